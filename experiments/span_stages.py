"""Non-RL second stages on simulated tagger probabilities: naive / tuned / constrained / gbdt.

    .venv/bin/python -m experiments.span_stages                      # embedded sample, ~1 CPU min
    .venv/bin/python -m experiments.span_stages --noise 0.5 --seeds 0 1 2

Per seed: word probabilities simulated from the gold labels (`segments.simulate_word_probs`;
noise 0.5 puts naive decoding near the real tagger's 0.43), a seeded 80% of the essays fits
every stage, the other 20% is scored. Prints held-out macro F1 per stage and seed, their mean,
per-class F1 of the mean, and the gbdt candidates' recall on the training essays.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from discourse_rl.core import metric
from discourse_rl.core.data import CLASSES, load_corpus
from discourse_rl.decoders import constrained, decode
from discourse_rl.decoders import gbdt as spans
from discourse_rl.decoders.segments import gold_frame, simulate_word_probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--data", type=Path, default=None, help="Kaggle-layout folder (default: sample)"
    )
    ap.add_argument("--essays", type=int, default=0, help="use at most this many essays (0: all)")
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-estimators", type=int, default=150)
    ap.add_argument("--threads", type=int, default=1, help="LightGBM threads")
    args = ap.parse_args()

    corpus = load_corpus(args.data)
    ids = corpus.sure_ids()
    if args.essays:
        ids = sorted(np.random.default_rng(0).choice(ids, args.essays, replace=False).tolist())
    base = dataclasses.replace(
        spans.GbdtConfig(), n_estimators=args.n_estimators, num_threads=args.threads
    )
    rows = []
    per_class: dict[str, list[pd.Series]] = {}
    for seed in args.seeds:
        probs = simulate_word_probs(corpus, noise=args.noise, seed=seed, ids=ids)
        order = np.random.default_rng(seed).permutation(len(ids))
        n_train = round(0.8 * len(ids))
        train = sorted(ids[i] for i in order[:n_train])
        held = sorted(ids[i] for i in order[n_train:])
        gt = gold_frame(corpus, held)
        held_probs = {i: probs[i] for i in held}
        train_probs = {i: probs[i] for i in train}

        def record(
            stage: str, pred: pd.DataFrame, seconds: float, seed: int = seed, gt: pd.DataFrame = gt
        ) -> None:
            s = metric.score(pred, gt)
            unit = metric.per_essay_scores(pred, gt)["jaccard"].mean()
            rows.append(
                {
                    "seed": seed,
                    "stage": stage,
                    "macro_f1": s.macro_f1,
                    "essay_tp_fp_fn": unit,
                    "fit_s": seconds,
                }
            )
            per_class.setdefault(stage, []).append(s.to_frame()["f1"])

        record("ner-naive", decode.decode_all(held_probs, decode.decode_naive), 0.0)
        t = time.process_time()
        th = decode.fit_tuned(train_probs, corpus)
        fit_s = time.process_time() - t
        record(
            "ner-tuned",
            decode.decode_all(held_probs, partial(decode.decode_tuned, thresholds=th)),
            fit_s,
        )
        t = time.process_time()
        params = constrained.fit_constrained(probs, corpus, train)
        fit_s = time.process_time() - t
        dec = partial(constrained.decode_constrained, params=params)
        record("ner-constrained", decode.decode_all(held_probs, dec), fit_s)
        for name, cfg in (
            ("gbdt", dataclasses.replace(base, seed=seed)),
            ("gbdt per class", dataclasses.replace(base, seed=seed, per_class=True)),
        ):
            t = time.process_time()
            model = spans.fit(probs, corpus, train, cfg)
            fit_s = time.process_time() - t
            record(name, model.predict(held_probs, corpus.essays), fit_s)
            if name == "gbdt":
                rep = model.report
                recall = ", ".join(f"{c} {v:.3f}" for c, v in rep.recall.items())
                limits = [CLASSES[c] for c in params.unique_classes]
                print(
                    f"seed {seed}: constrained limits {limits};"
                    f" gbdt candidates {rep.n_candidates / rep.n_essays:.0f}/essay, "
                    f"{rep.positive_share:.3f} hits; recall: {recall}"
                )
    table = pd.DataFrame(rows)
    print(table.round(4).to_string(index=False))
    summary = table.groupby("stage", sort=False)[["macro_f1", "essay_tp_fp_fn", "fit_s"]].agg(
        ["mean", "std"]
    )
    print(summary.round(4).to_string())
    f1 = pd.DataFrame({k: pd.concat(v, axis=1).mean(axis=1) for k, v in per_class.items()})
    print(f1.round(3).to_string())


if __name__ == "__main__":
    main()
