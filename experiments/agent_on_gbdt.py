"""Does RL on the metric add to gbdt? The agent on top of gbdt (`agent.on_gbdt`) on the proxy.

    PYTHONPATH=src nice -n 5 .venv/bin/python -m experiments.agent_on_gbdt \\
        --probs /tmp/proxy/oof.npz --data ../shared/data/feedback-prize-2021 \\
        --base paragraph_candidates=true,n_estimators=200,learning_rate=0.075,negative_share=0.2

Rows (held-out macro F1 and the seed's unit), per seed: gbdt (trained on every training
essay); gbdt's labelling copied through the re-cut segments (how exactly the agent can
reproduce it); the plain agent (segments without gbdt's inputs, BC from gold, then the episode
trainer: the reference's agent); and the agent on gbdt with BC from gbdt's labelling and from
gold, each then fine-tuned by the episode trainer with the KL to its BC start. gbdt's inputs for
the training essays are cross-fitted (2 folds).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from discourse_rl.decoders import constrained
from discourse_rl.decoders.agent import predict_spans
from discourse_rl.decoders.agent.bc import train_bc
from discourse_rl.decoders.agent.common import FineTuneInputs, split_validation
from discourse_rl.decoders.agent.config import AgentConfig, BcConfig, NetworkConfig
from discourse_rl.decoders.agent.episode import EpisodeConfig, train_episode
from discourse_rl.decoders.agent.on_gbdt import cross_fit_gbdt, gbdt_segments, view_of, with_actions
from discourse_rl.decoders.gbdt.gbdt import TrainingTable, fit_table
from discourse_rl.decoders.gbdt.model import GbdtConfig, build_candidates
from discourse_rl.decoders.segments import (
    SegmentConfig,
    gold_frame,
    paragraph_starts,
    spans_frame,
)
from experiments.agent_features import gold_segments
from experiments.span_proxy import add_data_args, emit, parse_settings, proxy_data, score_row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_args(ap)
    ap.add_argument("--base", default="", help="gbdt: KEY=VALUE,... on top of GbdtConfig()")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--bc-epochs", type=int, default=5)
    ap.add_argument("--passes", type=float, default=3.0)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--kl-beta", type=float, default=0.02)
    ap.add_argument("--skip-plain", action="store_true", help="no plain-agent row")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    corpus, probs, train, held = proxy_data(args)
    train = sorted(train)
    ids = [*train, *held]
    gt = gold_frame(corpus, held)
    words = {i: corpus.essays[i].words for i in ids}
    paras = paragraph_starts(corpus.essays, ids)
    seg_cfg = SegmentConfig(start_threshold=0.3, punctuation="clause", rich_features=True)
    rows: list[dict[str, Any]] = []

    def record(name: str, seed: int, pred: Any, seconds: float) -> None:
        sc, row = score_row("row", name, seed, pred, gt)
        row |= {
            "seconds": round(seconds, 1),
            "load": round(os.getloadavg()[0], 1),
            **{c: round(v, 4) for c, v in sc.per_class.items()},
        }
        emit(rows, row)

    limits = constrained.fit_constrained(
        probs, corpus, train, constrained.ConstrainedConfig(fit=False)
    )
    t = time.perf_counter()
    gcfg0 = dataclasses.replace(GbdtConfig(), num_threads=1, **parse_settings(args.base))
    data = TrainingTable(
        train, limits, build_candidates(probs, corpus.essays, train, gcfg0, limits, corpus)
    )
    held_probs = {i: probs[i] for i in held}
    htab = build_candidates(held_probs, corpus.essays, held, gcfg0, limits, corpus)
    print(f"gbdt tables {time.perf_counter() - t:.0f} s", flush=True)
    work = Path(tempfile.mkdtemp(prefix="agent_on_gbdt."))
    for seed in args.seeds:
        gcfg = dataclasses.replace(gcfg0, seed=seed)
        ecfg = EpisodeConfig(
            seed=seed,
            passes=args.passes,
            eval_every=args.eval_every,
            kl_beta=args.kl_beta,
            progress_bar=False,
        )
        t = time.perf_counter()
        held_view = view_of(fit_table(data, corpus, gcfg), htab)
        record("gbdt", seed, held_view.spans, time.perf_counter() - t)
        t = time.perf_counter()
        train_view = cross_fit_gbdt(data, corpus, gcfg, 2)
        cross_s = time.perf_counter() - t
        record("gbdt cross-fitted (training essays' inputs)", seed, held_view.spans, cross_s)
        seg_train = gbdt_segments(probs, train, seg_cfg, words, paras, train_view)
        seg_held = gbdt_segments(probs, held, seg_cfg, words, paras, held_view)
        copied = with_actions(seg_held, held_view)
        record(
            "gbdt copied through segments",
            seed,
            spans_frame(copied, [s.gold_action for s in copied]),
            0.0,
        )  # type: ignore[misc]

        def agent(
            name: str,
            tr_all: list[Any],
            test: list[Any],
            seed: int = seed,
            ecfg: EpisodeConfig = ecfg,
        ) -> None:
            longest = max(s.n_segments for s in [*tr_all, *test])
            acfg = AgentConfig(
                seed=seed,
                progress_bar=False,
                network=NetworkConfig(max_segments=max(96, longest)),
                bc=BcConfig(epochs=args.bc_epochs),
            )
            tr, val = split_validation(tr_all, acfg.val_fraction, seed)
            out = work / f"{name}-{seed}"
            t = time.perf_counter()
            bc = train_bc(tr, acfg, out / "bc", val_segs=val, corpus=corpus)
            record(f"{name}: bc", seed, predict_spans(bc.path, test), time.perf_counter() - t)
            t = time.perf_counter()
            ep = train_episode(
                FineTuneInputs(tr, corpus, bc.path, out / "episode", val_segs=val), ecfg
            )
            record(f"{name}: episode", seed, predict_spans(ep.path, test), time.perf_counter() - t)

        if not args.skip_plain:
            agent("plain agent", *gold_segments(probs, corpus, seg_cfg, ids, train, held))
        agent("on gbdt, BC from gbdt", with_actions(seg_train, train_view), seg_held)
        agent("on gbdt, BC from gold", with_actions(seg_train, None, corpus), seg_held)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
