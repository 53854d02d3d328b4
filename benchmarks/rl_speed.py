"""The SB3 agent (step-wise MaskablePPO) against the episode-level trainer, same wall time.

    .venv/bin/python -m benchmarks.rl_speed [--essays 2000] [--sb3-steps 60000] [--threads 1] \\
        [--data ../shared/data/feedback-prize-2021] [--json]             # about 19 minutes
    .venv/bin/python -m benchmarks.rl_speed --data src/discourse_rl/sample --essays 40 \\
        --fresh 20 --sb3-steps 64 --warmup-steps 0 --setup /tmp/rl_setup --out /tmp/rl_speed \\
        --json                                                             # does it still run

Both start from the same BC policy on the same essays and segment features
(`benchmarks.episode_data`, cached under --setup: the shared data, simulated word
probabilities; a cached setup is reused as it is, whatever --essays says). SB3 runs first for
--sb3-steps environment steps (value warm-up included); the episode trainer then gets the same
wall time. Each keeps its checkpoint with the best validation macro F1, scored on the held-out
essays. Prints essays per second (whole essays labelled and learnt from, per second of the
training call's wall time), held-out macro F1 and the ratios. Targets on 2 cores: at least 10x
the essays per second of SB3, and an equal or higher held-out F1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import ROOT, SHARED_DATA, parser, run_benchmark
from benchmarks.episode_data import SETUP, fresh_heldout, prepare
from discourse_rl.core import metric
from discourse_rl.core.common import atomic_write_text
from discourse_rl.core.records import TrainedPolicy
from discourse_rl.decoders.agent import FineTuneInputs, predict_spans
from discourse_rl.decoders.agent.episode import EpisodeConfig, train_episode
from discourse_rl.decoders.agent.ppo import train_ppo
from discourse_rl.decoders.segments import gold_frame


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--essays", type=int, default=2000)
    ap.add_argument("--sb3-steps", type=int, default=60_000, help="PPO steps after warm-up")
    ap.add_argument("--warmup-steps", type=int, default=6_000, help="SB3 value warm-up steps")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", type=Path, default=SHARED_DATA, help="Kaggle-layout folder")
    ap.add_argument("--setup", type=Path, default=SETUP, help="cached setup (episode_data)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "episode" / "rl_speed")
    ap.add_argument(
        "--reuse-sb3", action="store_true", help="keep the SB3 run of an earlier call in --out"
    )
    ap.add_argument("--fresh", type=int, default=2000, help="also score on this many new essays")
    run_benchmark(ap, measure, argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    s = prepare(args.setup, args.essays, args.data)
    gt = gold_frame(s.corpus, [x.essay_id for x in s.test])
    seg_per_essay = float(np.mean([x.n_segments for x in s.train]))

    fresh = fresh_heldout(s, args.fresh)
    fresh_gt = gold_frame(s.corpus, [x.essay_id for x in fresh])

    def heldout(path: Path) -> float:
        return metric.score(predict_spans(path, s.test), gt).macro_f1

    def fresh_f1(path: Path) -> float:
        return metric.score(predict_spans(path, fresh), fresh_gt).macro_f1

    acfg = dataclasses.replace(
        s.agent_cfg,
        seed=args.seed,
        ppo=dataclasses.replace(
            s.agent_cfg.ppo,
            timesteps=args.sb3_steps,
            value_warmup_steps=args.warmup_steps,
            eval_every=10,
        ),
    )

    def timed(train: Callable[..., TrainedPolicy], cfg: Any, name: str) -> tuple[Path, float]:
        """Train from the BC policy into OUT/name: the policy and the wall seconds."""
        t = time.perf_counter()
        path = train(FineTuneInputs(s.train, s.corpus, s.bc_path, args.out / name, s.val), cfg).path
        return path, time.perf_counter() - t

    def history(name: str) -> dict[str, Any]:
        return dict(json.loads((args.out / name / "history.json").read_text(encoding="utf-8")))

    sb3_path = args.out / "sb3" / "policy.pt"
    earlier = args.out / "results.json"
    if args.reuse_sb3 and sb3_path.is_file() and earlier.is_file():
        sb3_s = json.loads(earlier.read_text(encoding="utf-8"))["SB3 MaskablePPO"]["seconds"]
    else:
        sb3_path, sb3_s = timed(train_ppo, acfg, "sb3")
    sb3_essays = history("sb3")["env_steps"] / seg_per_essay

    ecfg = EpisodeConfig(seed=args.seed, passes=1e6, max_seconds=sb3_s, progress_bar=False)
    ep_path, ep_s = timed(train_episode, ecfg, "episode")
    ep_hist = history("episode")

    rows: dict[str, dict[str, Any]] = {
        "BC": {"seconds": 0.0, "essays": 0, "essays_per_s": float("nan")},
        "SB3 MaskablePPO": {
            "seconds": sb3_s,
            "essays": sb3_essays,
            "essays_per_s": sb3_essays / sb3_s,
        },
        "episode trainer": {
            "seconds": ep_s,
            "essays": ep_hist["essays"],
            "essays_per_s": ep_hist["essays"] / ep_s,
        },
    }
    for name, path in (
        ("BC", s.bc_path),
        ("SB3 MaskablePPO", sb3_path),
        ("episode trainer", ep_path),
    ):
        rows[name]["heldout_macro_f1"] = heldout(path)
        rows[name]["fresh_macro_f1"] = fresh_f1(path)
    sb3, ep = rows["SB3 MaskablePPO"], rows["episode trainer"]
    lines = [
        f"{len(s.train)} training essays ({seg_per_essay:.1f} segments each), {len(s.val)} "
        f"validation, {len(s.test)} held out; torch threads: {args.threads}",
        "",
        f"| trainer | wall s | essays | essays/s | held-out macro F1 | fresh {args.fresh} |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['seconds']:.0f} | {r['essays']:.0f} | {r['essays_per_s']:.1f} | "
            f"{r['heldout_macro_f1']:.4f} | {r['fresh_macro_f1']:.4f} |"
        )
    lines += [
        "",
        f"essays/s ratio (episode / SB3): {ep['essays_per_s'] / sb3['essays_per_s']:.1f}x",
        f"held-out macro F1 difference (episode - SB3): "
        f"{ep['heldout_macro_f1'] - sb3['heldout_macro_f1']:+.4f} "
        f"(fresh essays: {ep['fresh_macro_f1'] - sb3['fresh_macro_f1']:+.4f})",
        f"episode trainer: {ecfg}",
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    atomic_write_text(args.out / "results.md", text)
    atomic_write_text(args.out / "results.json", json.dumps(rows, indent=2))
    return {
        "benchmark": "rl_speed",
        "threads": args.threads,
        "train_essays": len(s.train),
        "segments_per_essay": seg_per_essay,
        "rows": rows,
        "essays_per_s_ratio": ep["essays_per_s"] / sb3["essays_per_s"],
        "heldout_macro_f1_difference": ep["heldout_macro_f1"] - sb3["heldout_macro_f1"],
        "fresh_macro_f1_difference": ep["fresh_macro_f1"] - sb3["fresh_macro_f1"],
    }


if __name__ == "__main__":
    main()
