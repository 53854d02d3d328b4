"""The agent's segment features and rewards: plain (the seed's) against rich (gbdt-like), on a run.

    .venv/bin/python -m experiments.agent_features --run runs/demo --seeds 0 1 2

Reads the run's out-of-fold word probabilities and its split (RUN/split.json, written by the
spans and agent stages), then per variant and seed trains BC on every training essay and
fine-tunes it with the episode trainer, and scores both on the held-out essays (macro F1 and
the seed's per-essay TP / (TP + FP + FN)). Variants: features plain or rich
(`segments.rich_features`) x episode reward ('macro', 'f1', 'jaccard' — the seed's). The agent
and episode settings are the run's own (RUN/config.toml).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.common import one_line_errors, require
from discourse_rl.core.arrays import Probs
from discourse_rl.core.data import Corpus, load_corpus, load_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import heldout_score, read_split
from discourse_rl.decoders.agent import FineTuneInputs, predict_spans, train_bc
from discourse_rl.decoders.agent.common import split_validation
from discourse_rl.decoders.agent.episode import train_episode
from discourse_rl.decoders.segments import (
    EssaySegments,
    SegmentConfig,
    gold_frame,
    make_segments,
    paragraph_starts,
    segment_gold_actions,
)
from discourse_rl.run.config import load_run_config


def gold_segments(
    probs: Probs,
    corpus: Corpus,
    cfg: SegmentConfig,
    ids: Sequence[str],
    *groups: Sequence[str],
) -> list[list[EssaySegments]]:
    """The segments of the essays `ids` (cut as `cfg` says) with their gold actions, as the
    lists of each group of ids."""
    words = {i: corpus.essays[i].words for i in ids}
    paras = paragraph_starts(corpus.essays, ids)
    segs = segment_gold_actions(make_segments(probs, cfg, ids, words, paras), corpus)
    by_id = {s.essay_id: s for s in segs}
    return [[by_id[i] for i in group] for group in groups]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--features", nargs="+", default=["plain", "rich"])
    ap.add_argument("--rewards", nargs="+", default=["macro"])
    args = ap.parse_args()

    lay = RunLayout(args.run)
    cfg = load_run_config(require(lay.config, "missing: --run takes a trained run"))
    split = read_split(require(lay.split, "missing: run the spans or agent stage first"))
    probs = load_word_probs(require(lay.oof, "missing: --run takes a run past its NER stage"))
    ids = sorted([*split.train, *split.heldout])
    corpus = load_corpus(args.data, ids=ids)
    gt = gold_frame(corpus, split.heldout)
    agent = dataclasses.replace(cfg.agent, progress_bar=False)
    print(f"{len(split.train)} training essays, {len(split.heldout)} held out")
    print("features  reward   seed  bc_s  ep_s  bc_macro  ep_macro  bc_unit  ep_unit")
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for features in args.features:
        seg_cfg = dataclasses.replace(cfg.segments, rich_features=features == "rich")
        train, held = gold_segments(probs, corpus, seg_cfg, ids, split.train, split.heldout)
        for reward in args.rewards:
            for seed in args.seeds:
                scfg = dataclasses.replace(agent, seed=seed)
                ecfg = dataclasses.replace(
                    cfg.episode, seed=seed, reward=reward, progress_bar=False
                )
                tr, val = split_validation(train, scfg.val_fraction, seed)
                with tempfile.TemporaryDirectory() as tmp:
                    t = time.perf_counter()
                    bc = train_bc(tr, scfg, Path(tmp) / "bc", val_segs=val, corpus=corpus)
                    bc_s = time.perf_counter() - t
                    t = time.perf_counter()
                    ep = train_episode(
                        FineTuneInputs(tr, corpus, bc.path, Path(tmp) / "ep", val), ecfg
                    )
                    ep_s = time.perf_counter() - t
                    b = heldout_score(predict_spans(bc.path, held), gt)
                    e = heldout_score(predict_spans(ep.path, held), gt)
                results.setdefault((features, reward), []).append((b.macro_f1, e.macro_f1))
                print(
                    f"{features:8}  {reward:7}  {seed:4}  {bc_s:4.0f}  {ep_s:4.0f}  "
                    f"{b.macro_f1:8.4f}  {e.macro_f1:8.4f}  {b.essay_jaccard:7.4f}  "
                    f"{e.essay_jaccard:7.4f}",
                    flush=True,
                )
    print("mean over seeds: features reward bc_macro ep_macro")
    for (features, reward), vals in results.items():
        m = np.mean(vals, axis=0)
        print(f"{features:8}  {reward:7}  {m[0]:.4f}  {m[1]:.4f}")


if __name__ == "__main__":
    one_line_errors(main)
