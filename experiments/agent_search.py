"""The agent's hyper-parameters by an Optuna search with inner folds on a run's training essays
(`decoders.agent.search`), then the chosen values scored once on the held-out essays beside
the run config's own.

    nice -n 5 .venv/bin/python -m experiments.agent_search --run runs/proxy3k-i28 \\
        --data ../shared/data/feedback-prize-2021 --trials 8 --folds 2 --json out.json

The segments, the agent and episode settings come from the run's config.toml (its `[agent]`,
`[agent.*]`, `[segments]` and `[episode]` tables), the probabilities from its ner/oof.npz,
the split from its split.json. `--essays N` searches on a seeded N of the training essays.
Prints every trial (mean inner-fold macro F1 of the episode-trained policy), the best values,
and the held-out macro F1 of the run's settings and of the chosen ones (BC then the episode
trainer on every training essay, one seed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from discourse_rl.core.protocol import heldout_score
from discourse_rl.decoders.agent import FineTuneInputs, predict_spans
from discourse_rl.decoders.agent.bc import train_bc
from discourse_rl.decoders.agent.common import split_validation
from discourse_rl.decoders.agent.episode import train_episode
from discourse_rl.decoders.agent.search import configure, search
from discourse_rl.decoders.segments import (
    gold_frame,
    make_segments,
    paragraph_starts,
    segment_gold_actions,
)
from experiments.span_proxy import add_run_args, run_data


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_run_args(ap)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--essays", type=int, default=0, help="search on a seeded N (0: all)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    data = run_data(args)
    run, probs, corpus, train, held = data.config, data.probs, data.corpus, data.train, data.held
    ids = train + held
    words = {i: corpus.essays[i].words for i in ids}
    paragraphs = paragraph_starts(corpus.essays, ids) if run.segments.rich_features else None
    segs = segment_gold_actions(make_segments(probs, run.segments, ids, words, paragraphs), corpus)
    by_id = {s.essay_id: s for s in segs}
    train_segs, held_segs = [by_id[i] for i in train], [by_id[i] for i in held]
    pool = train_segs
    if args.essays and args.essays < len(pool):
        pick = np.random.default_rng(3).choice(len(pool), args.essays, replace=False)
        pool = [pool[i] for i in sorted(pick.tolist())]
    agent = dataclasses.replace(run.agent, seed=run.seed, progress_bar=False)
    episode = dataclasses.replace(run.episode, seed=run.seed, progress_bar=False)
    print(f"{len(pool)} essays searched, {len(held_segs)} held out", flush=True)
    with tempfile.TemporaryDirectory(prefix="agent_search.") as tmp:
        t = time.perf_counter()
        best, history = search(pool, corpus, (agent, episode), args.trials, Path(tmp), args.folds)
        search_s = time.perf_counter() - t
        print(f"best {best} ({search_s:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
        out: dict[str, object] = {"best": best, "trials": history, "search_s": search_s}
        gt = gold_frame(corpus, held)
        for name, (a, e) in (
            ("base", (agent, episode)),
            ("searched", configure(agent, episode, best)),
        ):
            tr, val = split_validation(train_segs, a.val_fraction, a.seed)
            bc = train_bc(tr, a, Path(tmp) / name / "bc", val_segs=val, corpus=corpus)
            inputs = FineTuneInputs(tr, corpus, bc.path, Path(tmp) / name / "episode", val)
            policy = train_episode(inputs, e)
            sc = heldout_score(predict_spans(policy.path, held_segs), gt)
            print(f"held-out {name}: macro F1 {sc.macro_f1:.4f}", flush=True)
            out[name] = {"macro_f1": sc.macro_f1, "essay_tp_fp_fn": sc.essay_jaccard}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
