"""Does int8 inference, or windows spread evenly, cost quality? Out-of-fold word probabilities of
a trained run recomputed with the encoder in bf16, int8 (dynamically quantised linear layers) and
fp32, and (finetune runs) with the training's windows (`full`: every window full length, the last
pulled back) and/or evenly spread ones (`spread`: as many windows, equal and shorter;
`ner.predict_windows`), and the decoded macro F1 of each against bf16 with full windows.

    .venv/bin/python -m experiments.infer_dtype --run /tmp/cpu-demo            # the demo run
    .venv/bin/python -m experiments.infer_dtype --run runs/reference-ft \\
        --data ../shared/data/feedback-prize-2021 --max-essays 1000 --json
    .venv/bin/python -m experiments.infer_dtype --run runs/reference-s2 \\
        --data ../shared/data/feedback-prize-2021 --max-essays 1000 --dtypes bf16 \\
        --windows full spread --threads 2 --json

Each fold's model predicts the essays it did not see (as the NER stage's out-of-fold pass), so
the F1 is the run's out-of-fold F1 with only the encoder's precision changed. `--threads`
sets torch's threads; the seconds are the whole pass (tokenising, encoder, heads).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import require, run_benchmark
from discourse_rl.core.arrays import FloatArray
from discourse_rl.core.common import read_json, torch_threads
from discourse_rl.core.data import Corpus, Essay, load_corpus, sample_dir
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders.decode import DecodeConfig, evaluate_decoding
from discourse_rl.ner import NerPredictor
from discourse_rl.ner.config import INFER_DTYPES, PREDICT_WINDOWS
from discourse_rl.ner.inference import Reading, encode_word_vectors, head_probs, window_probs
from discourse_rl.ner.tokens import word_features
from discourse_rl.run.steps.ner import stage_config


def out_of_fold(
    predictor: NerPredictor, essays: dict[str, Essay], folds: dict[str, int]
) -> dict[str, FloatArray]:
    """Each essay's probabilities from the fold model that did not train on it."""
    ids = list(essays)
    listed = [essays[i] for i in ids]
    cfg, device = predictor.cfg, predictor.device
    out: dict[str, FloatArray] = {}
    if predictor.encoder is not None:
        vectors = encode_word_vectors(
            predictor.encoder, listed, Reading(predictor.tokenizer, cfg, device, prepared=True)
        )
        feats = [word_features(e) for e in listed]
        for k, head in enumerate(predictor.heads):
            mine = [n for n, i in enumerate(ids) if folds[i] == k]
            probs = head_probs([head], [vectors[n] for n in mine], [feats[n] for n in mine], device)
            out.update({ids[n]: p for n, p in zip(mine, probs, strict=True)})
        return out
    for k, model in enumerate(predictor.models):
        mine = [i for i in ids if folds[i] == k]
        probs = window_probs(
            [model],
            [essays[i] for i in mine],
            Reading(predictor.tokenizer, cfg, device, prepared=True),
        )
        out.update(dict(zip(mine, probs, strict=True)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_run_args(ap, "a trained run folder", max_essays=0)
    ap.add_argument("--dtypes", nargs="+", default=list(INFER_DTYPES), choices=INFER_DTYPES)
    ap.add_argument(
        "--windows", nargs="+", default=["full"], choices=PREDICT_WINDOWS, help="finetune runs"
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    run_benchmark(ap, measure, argv)


def add_run_args(ap: argparse.ArgumentParser, run_help: str, max_essays: int) -> None:
    """`--run`, `--data` and `--max-essays` of the studies over a trained run's essays."""
    ap.add_argument("--run", type=Path, required=True, help=run_help)
    ap.add_argument("--data", type=Path, default=None, help="its data (default: the sample)")
    ap.add_argument(
        "--max-essays", type=int, default=max_essays, help="first N essays by id (0 = all)"
    )


def run_essays(
    args: argparse.Namespace,
) -> tuple[dict[str, int], DecodeConfig, Corpus, list[str], dict[str, Essay], dict[str, Any]]:
    """The run's NER folds and decoding settings, its essays (the first `--max-essays` by id)
    as a corpus, their ids and texts, and the head of the study's results."""
    layout = RunLayout(args.run)
    folds = read_json(require(layout.ner_folds, "missing: --run needs a trained run"))
    decode = stage_config(layout.root / "config.toml").decode
    corpus = load_corpus(args.data or sample_dir())
    ids = sorted(i for i in folds if i in corpus.essays)
    if args.max_essays:
        ids = ids[: args.max_essays]
    corpus = corpus.subset(ids)
    essays = {i: corpus.essays[i] for i in ids}
    out: dict[str, Any] = {"run": str(args.run), "essays": len(ids), "load": os.getloadavg()}
    return folds, decode, corpus, ids, essays, out


def measure(args: argparse.Namespace) -> dict[str, Any]:
    folds, decode, corpus, ids, essays, out = run_essays(args)
    probs: dict[str, dict[str, FloatArray]] = {}
    variants = [(d, w) for d in args.dtypes for w in args.windows]
    names = [d if w == "full" else f"{d}-{w}" for d, w in variants]
    with torch_threads(args.threads):
        out["threads"] = torch.get_num_threads()
        for name, (dtype, windows) in zip(names, variants, strict=True):
            predictor = NerPredictor.load(args.run, threads=args.threads, infer_dtype=dtype)
            cfg = replace(predictor.cfg, predict_windows=windows)
            predictor = replace(predictor, cfg=cfg)
            t0 = time.perf_counter()
            probs[name] = out_of_fold(predictor, essays, folds)
            seconds = time.perf_counter() - t0
            rep = evaluate_decoding(probs[name], corpus, folds, decode)
            row = {
                "seconds": seconds,
                "naive_macro_f1": rep.naive.macro_f1,
                "tuned_cross_fitted_macro_f1": rep.tuned_cross_fitted.macro_f1,
            }
            print(f"{name}: {row} (load {os.getloadavg()})", flush=True)
            out[name] = row
    for name in names:
        if name != "bf16" and "bf16" in probs:
            diff = np.concatenate([np.abs(probs[name][i] - probs["bf16"][i]).ravel() for i in ids])
            out[name]["max_abs_diff_vs_bf16"] = float(diff.max())
            out[name]["mean_abs_diff_vs_bf16"] = float(diff.mean())
            for key in ("naive_macro_f1", "tuned_cross_fitted_macro_f1"):
                out[name][f"{key}_minus_bf16"] = out[name][key] - out["bf16"][key]
            print(f"{name} vs bf16: {out[name]}")
    return out


if __name__ == "__main__":
    main()
