"""Study: which NER head does best on a frozen encoder? Compared on one run's cached vectors.

    .venv/bin/python -m experiments.ner_heads --run runs/demo              # embedded sample
    .venv/bin/python -m experiments.ner_heads --run runs/reference \\
        --data ../shared/data/feedback-prize-2021 --max-essays 3000 --folds 2 --epochs 6

The run must have been trained in 'frozen' mode (its ner/cache is reused, nothing is encoded
again). Each variant is the run's NER config with a few fields changed; every variant trains one
head per fold and is scored out of fold (naive, and tuned with minima fitted on the other folds).
Answer in experiments/README.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import one_line_errors
from discourse_rl.core.common import torch_threads
from discourse_rl.core.data import load_corpus, make_folds
from discourse_rl.core.layout import FoldLayout
from discourse_rl.decoders.decode import evaluate_decoding
from discourse_rl.ner import run_ner_config
from discourse_rl.ner.frozen import load_cache, train_head
from discourse_rl.ner.inference import head_probs
from discourse_rl.ner.tokens import word_features

VARIANTS: dict[str, dict[str, Any]] = {
    "sentence": {"head": "sentence"},
    "sentence, B weight 3": {"head": "sentence", "b_weight": 3.0},
    "sentence, conv 5": {"head": "sentence", "word_conv": 5},
    "sentence, conv 5, balanced": {"head": "sentence", "word_conv": 5, "class_balance": 0.5},
    "sentence 128, conv 5, B 2": {
        "head": "sentence",
        "head_hidden": 128,
        "word_conv": 5,
        "b_weight": 2.0,
    },
    "sentence, no word features": {"head": "sentence", "word_features": False},
    "gru over words": {"head": "gru"},
    "mlp (no context)": {"head": "mlp"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a frozen-mode run folder")
    ap.add_argument("--data", type=Path, default=None, help="its data folder (default: sample)")
    ap.add_argument("--max-essays", type=int, default=0, help="seeded subset (0 = the run's)")
    ap.add_argument("--folds", type=int, default=3, help="folds for the comparison")
    ap.add_argument("--epochs", type=float, default=None, help="override the run's epochs")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()

    base = run_ner_config(args.run)
    if args.epochs is not None:
        base = replace(base, epochs=args.epochs)
    corpus = load_corpus(args.data)
    # The cache may still be filling (a reference run in progress): use the essays done so far.
    cache, ids = load_cache(args.run, corpus)
    if args.max_essays and args.max_essays < len(ids):
        ids = sorted(np.random.default_rng(1).choice(ids, args.max_essays, replace=False))
    subset = corpus.subset(ids)
    folds = make_folds(subset, args.folds, 0)
    feats = {i: word_features(subset.essays[i]) for i in ids}
    labels = {i: subset.word_labels(i).astype(np.int64) for i in ids}
    print(f"{len(ids)} essays, {args.folds} folds, {base.epochs} epochs, base head {base.head}")
    print(f"{'variant':<30}{'naive':>8}{'tuned':>8}{'seconds':>9}")
    for name in args.variants:
        cfg = replace(base, **VARIANTS[name])
        t0 = time.perf_counter()
        oof = {}
        with tempfile.TemporaryDirectory() as tmp, torch_threads(cfg.threads):
            for k in range(args.folds):
                train = [i for i in ids if folds[i] != k]
                val = [i for i in ids if folds[i] == k]
                fold = FoldLayout(Path(tmp) / f"fold{k}")
                head = train_head(cache, feats, labels, train, val, cfg, fold, k)
                vecs = [cache.get(i) for i in val]
                probs = head_probs([head], vecs, [feats[i] for i in val], head_device(head))
                oof.update(zip(val, probs, strict=True))
        seconds = time.perf_counter() - t0
        report = evaluate_decoding(oof, subset, folds)
        naive, tuned = report.naive.macro_f1, report.tuned_cross_fitted.macro_f1
        print(f"{name:<30}{naive:>8.4f}{tuned:>8.4f}{seconds:>9.0f}", flush=True)


def head_device(head: Any) -> Any:
    return next(head.parameters()).device


if __name__ == "__main__":
    one_line_errors(main)
