"""Study: does weighting behavioural cloning's loss by action frequency help? On a finished run.

    .venv/bin/python -m experiments.agent_bc_weights --run runs/sim2000 \\
        --data ../shared/data/feedback-prize-2021 --weights 0 0.5 1

Reuses RUN/segments.npz and the run's held-out fold; per weight exponent x (weight = action
frequency ^ -x) trains BC and prints held-out macro and per-class F1. Answer in
experiments/README.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import one_line_errors, require
from discourse_rl.core import metric
from discourse_rl.core.data import CLASSES, load_corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import read_split
from discourse_rl.decoders.agent import predict_spans, train_bc
from discourse_rl.decoders.agent.common import split_validation
from discourse_rl.decoders.agent.config import AgentConfig, BcConfig
from discourse_rl.decoders.segments import gold_frame, load_segments


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--epochs", type=int, default=15)
    args = ap.parse_args()

    segs = load_segments(
        require(RunLayout(args.run).segments, "missing: --run takes a run past its agent stage")
    )
    ids = [s.essay_id for s in segs]
    corpus = load_corpus(args.data, ids=ids)
    # The run's own split (RUN/split.json): the agent stage's training and held-out essays.
    split = read_split(RunLayout(args.run).split)
    train_ids, test_ids = list(split.train), list(split.heldout)
    by_id = {s.essay_id: s for s in segs}
    train, val = split_validation([by_id[i] for i in train_ids], 0.1, 0)
    test = [by_id[i] for i in test_ids]
    gt = gold_frame(corpus, test_ids)
    print("weight  seconds  macro  " + "  ".join(c[:8] for c in CLASSES))
    for w in args.weights:
        cfg = AgentConfig(progress_bar=False, bc=BcConfig(class_weight=w, epochs=args.epochs))
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            path = train_bc(train, cfg, Path(tmp), val_segs=val, corpus=corpus).path
            dt = time.perf_counter() - t
            s = metric.score(predict_spans(path, test), gt)
        per = "  ".join(f"{s.per_class[c].f1:8.3f}" for c in CLASSES)
        print(f"{w:6.2f}  {dt:7.0f}  {s.macro_f1:.3f}  {per}", flush=True)


if __name__ == "__main__":
    one_line_errors(main)
