"""gbdt's fit time at a given scale, to size the reference config (and negative subsampling).

    .venv/bin/python -m benchmarks.gbdt_fit --data ../shared/data/feedback-prize-2021 \\
        --essays 1500 --negative-share 1.0 0.3

Word probabilities are simulated from the gold labels (`segments.simulate_word_probs`, noise 0.5
puts naive decoding near the real tagger's); a seeded 80% of `--essays` essays trains, the rest
is scored. Per `--negative-share`: candidates per essay, seconds to build the training table,
to fit (the deployed booster and the threshold folds), to predict the held-out essays, and their
macro F1; then the fit's seconds per training candidate, the number to scale by.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np

from benchmarks.common import one_line_errors, run_benchmark
from discourse_rl.core import metric
from discourse_rl.core.data import load_corpus
from discourse_rl.core.protocol import heldout_split
from discourse_rl.decoders import constrained
from discourse_rl.decoders import gbdt as spans
from discourse_rl.decoders.gbdt.model import build_candidates
from discourse_rl.decoders.segments import gold_frame, simulate_word_probs


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=None, help="Kaggle-layout folder (default: the sample)")
    ap.add_argument("--essays", type=int, default=300, help="essays drawn (seeded)")
    ap.add_argument("--negative-share", type=float, nargs="+", default=[1.0])
    ap.add_argument("--n-estimators", type=int, default=spans.GbdtConfig().n_estimators)
    ap.add_argument("--learning-rate", type=float, default=spans.GbdtConfig().learning_rate)
    ap.add_argument("--threshold-folds", type=int, default=spans.GbdtConfig().threshold_folds)
    ap.add_argument("--threads", type=int, default=2, help="LightGBM threads")
    run_benchmark(ap, measure, argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    corpus = load_corpus(args.data)
    ids = corpus.sure_ids()
    if args.essays < len(ids):
        ids = sorted(np.random.default_rng(0).choice(ids, args.essays, replace=False).tolist())
    corpus = corpus.subset(ids)
    probs = simulate_word_probs(corpus, 0.5, 0, ids)
    split = heldout_split(ids, 0.2, 0)
    train, held = list(split.train), list(split.heldout)
    gt = gold_frame(corpus, held)
    base = spans.GbdtConfig(
        n_estimators=args.n_estimators,
        learning_rate=args.learning_rate,
        threshold_folds=args.threshold_folds,
        num_threads=args.threads,
    )
    limits = constrained.fit_constrained(
        probs, corpus, train, constrained.ConstrainedConfig(fit=False)
    )
    t = time.perf_counter()
    table = build_candidates(probs, corpus.essays, train, base, limits, corpus)
    build_s = time.perf_counter() - t
    per_essay = table.cls.size / len(train)
    print(f"{len(train)} training essays, {per_essay:.0f} candidates each; table {build_s:.1f} s")
    rows = []
    for share in args.negative_share:
        cfg = dataclasses.replace(base, negative_share=share)
        t = time.perf_counter()
        model = spans.fit(probs, corpus, train, cfg)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        pred = model.predict({i: probs[i] for i in held}, corpus.essays, held)
        predict_s = time.perf_counter() - t
        macro = metric.score(pred, gt).macro_f1
        row = {
            "negative_share": share,
            "train_rows": model.report.n_train_rows,
            "fit_seconds": round(fit_s, 1),
            "booster_seconds_per_row": (fit_s - build_s) / max(model.report.n_train_rows, 1),
            "predict_seconds": round(predict_s, 1),
            "heldout_macro_f1": round(macro, 4),
        }
        print(
            f"negative share {share}: {row['train_rows']:,} rows, fit {fit_s:.1f} s "
            f"(table included), predict {predict_s:.1f} s, held-out macro F1 {macro:.4f}"
        )
        rows.append(row)
    return {
        "train_essays": len(train),
        "heldout_essays": len(held),
        "candidates_per_essay": per_essay,
        "table_seconds": round(build_s, 1),
        "runs": rows,
    }


if __name__ == "__main__":
    one_line_errors(main)
