"""The shared setup of the RL comparisons: essays, simulated probabilities, segments, a BC policy.

Not a benchmark itself: `benchmarks.rl_speed` and the episode studies in experiments/ import it.
Run alone, it builds (or loads) the setup and prints the BC policy's held-out macro F1:

    .venv/bin/python -m benchmarks.episode_data [--essays 2000] [--out runs/episode/data] \\
        [--data ../shared/data/feedback-prize-2021]

Draws a seeded subset of the shared data's essays, simulates the tagger's word probabilities
(`segments.simulate_word_probs`, until real out-of-fold ones exist), cuts segments, splits off
a fifth of the essays as held out and a tenth of the rest for validation, and clones the gold
actions. Everything is cached under --out; a second call only loads it.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, SHARED_DATA, one_line_errors
from discourse_rl.core.common import atomic_write_text
from discourse_rl.core.data import Corpus, load_corpus
from discourse_rl.decoders.agent.bc import train_bc
from discourse_rl.decoders.agent.common import split_validation
from discourse_rl.decoders.agent.config import AgentConfig
from discourse_rl.decoders.segments import (
    EssaySegments,
    load_segments,
    make_segments,
    save_segments,
    segment_gold_actions,
    simulate_word_probs,
)

SETUP = ROOT / "runs" / "episode" / "data"
"""Where the setup is cached by default."""


@dataclass
class Setup:
    corpus: Corpus
    train: list[EssaySegments]
    val: list[EssaySegments]
    test: list[EssaySegments]
    bc_path: Path
    agent_cfg: AgentConfig


def prepare(
    out: Path, n_essays: int = 2000, data: Path = SHARED_DATA, noise: float = 0.5, seed: int = 0
) -> Setup:
    corpus = load_corpus(data)
    out.mkdir(parents=True, exist_ok=True)
    cfg = AgentConfig(seed=seed, progress_bar=False)
    seg_path, split_path = out / "segments.npz", out / "split.json"
    if not split_path.is_file():
        pool = sorted(corpus.sure_ids())
        ids = sorted(np.random.default_rng(seed).choice(pool, n_essays, replace=False).tolist())
        probs = simulate_word_probs(corpus, noise, seed=seed, ids=ids)
        segs = segment_gold_actions(make_segments(probs, ids=ids), corpus)
        save_segments(seg_path, segs)
        order = np.random.default_rng(seed + 1).permutation(len(ids))
        test_ids = sorted(ids[i] for i in order[: len(ids) // 5])
        rest = [s for s in segs if s.essay_id not in set(test_ids)]
        train, val = split_validation(rest, cfg.val_fraction, seed)
        split = {
            "train": [s.essay_id for s in train],
            "val": [s.essay_id for s in val],
            "test": test_ids,
        }
        atomic_write_text(split_path, json.dumps(split))
    split = json.loads(split_path.read_text(encoding="utf-8"))
    by_id = {s.essay_id: s for s in load_segments(seg_path)}
    parts = {k: [by_id[i] for i in v] for k, v in split.items()}
    bc_path = out / "bc" / "policy.pt"
    if not bc_path.is_file():
        t = time.perf_counter()
        train_bc(parts["train"], cfg, out / "bc", val_segs=parts["val"], corpus=corpus)
        print(f"BC trained in {time.perf_counter() - t:.0f} s", flush=True)
    return Setup(corpus, parts["train"], parts["val"], parts["test"], bc_path, cfg)


def fresh_heldout(
    setup: Setup, n_essays: int = 2000, noise: float = 0.5, seed: int = 0
) -> list[EssaySegments]:
    """Segments of `n_essays` further essays of the same data, none used by `prepare`: a
    larger held-out set (simulated probabilities are cheap) for differences of 0.01."""
    used = {s.essay_id for part in (setup.train, setup.val, setup.test) for s in part}
    pool = sorted(set(setup.corpus.sure_ids()) - used)
    ids = sorted(np.random.default_rng(seed + 2).choice(pool, n_essays, replace=False).tolist())
    probs = simulate_word_probs(setup.corpus, noise, seed=seed + 2, ids=ids)
    segs = segment_gold_actions(make_segments(probs, ids=ids), setup.corpus)
    # Features added to `segments` since the setup was cached come last: keep the setup's.
    n = setup.train[0].features.shape[1]
    return [
        EssaySegments(
            x.essay_id, x.n_words, x.word_start, x.word_end, x.features[:, :n], x.gold_action
        )
        for x in segs
    ]


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA, help="Kaggle-layout folder")
    ap.add_argument("--essays", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=SETUP, help="where the setup is cached")
    args = ap.parse_args()
    s = prepare(args.out, args.essays, args.data)
    from discourse_rl.decoders.agent.policy import load_policy, score_policy

    f1 = score_policy(load_policy(s.bc_path), s.test, s.corpus).macro_f1
    print(f"train {len(s.train)}, val {len(s.val)}, held out {len(s.test)}; BC held-out {f1:.4f}")


if __name__ == "__main__":
    one_line_errors(main)
