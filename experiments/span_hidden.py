"""Issue 28: does the tagger's hidden state, mean-pooled over a candidate span, help gbdt?

The original write-up fed sentence embeddings of segments to its agent and saw no effect; the
field's strongest span models pooled the token model's states. This measures it on a proxy run:
each essay's word states come from the fold model that did not train on it (out of fold, like
its probabilities), are reduced by a PCA fitted on training essays' words, and each candidate
gets the mean of the reduced states over its words (and over the essay) as extra columns. The
same gbdt settings and seeds fit with and without them; held-out macro F1 of both.

    nice -n 5 .venv/bin/python -m experiments.span_hidden --run runs/proxy3k-i28 \\
        --data ../shared/data/feedback-prize-2021 --dims 16 --seeds 0 1 --json out.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from discourse_rl.core.arrays import FloatArray
from discourse_rl.core.data import Corpus
from discourse_rl.core.protocol import heldout_score
from discourse_rl.decoders import constrained
from discourse_rl.decoders.gbdt.gbdt import TrainingTable, fit_table
from discourse_rl.decoders.gbdt.model import CandidateTable, GbdtConfig, build_candidates
from discourse_rl.decoders.segments import gold_frame
from discourse_rl.ner.inference import Reading, encode_word_vectors
from discourse_rl.ner.predict import NerPredictor
from experiments.span_proxy import add_run_args, run_data


@dataclasses.dataclass(frozen=True)
class HiddenGbdtConfig(GbdtConfig):
    """gbdt's settings with `dims` extra pooled-state columns after its own features."""

    dims: int = 0

    def feature_names(self) -> tuple[str, ...]:
        extra = [f"state_{k}" for k in range(self.dims)]
        extra += [f"state_minus_essay_{k}" for k in range(self.dims)]
        return super().feature_names() + tuple(extra)


def out_of_fold_states(
    run: Path, corpus: Corpus, ids: Sequence[str], threads: int
) -> dict[str, FloatArray]:
    """Per essay, (n_words, hidden) word states of the fold model that did not train on it."""
    folds = json.loads((run / "ner" / "folds.json").read_text(encoding="utf-8"))
    predictor = NerPredictor.load(run, threads=threads)
    out: dict[str, FloatArray] = {}
    for k, model in enumerate(predictor.models):
        mine = [i for i in ids if folds[i] == k]
        how = Reading(predictor.tokenizer, predictor.cfg, predictor.device, prepared=True)
        vectors = encode_word_vectors(model.encoder, [corpus.essays[i] for i in mine], how)
        out.update({i: v.astype(np.float32) for i, v in zip(mine, vectors, strict=True)})
    return out


def pca(
    states: Mapping[str, FloatArray], ids: Sequence[str], dims: int
) -> tuple[FloatArray, FloatArray]:
    """The words' mean state (hidden,) and the projection (hidden, dims), from `ids`' words."""
    x = np.concatenate([states[i] for i in ids])
    rng = np.random.default_rng(0)
    x = x[rng.permutation(len(x))[:200_000]]
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:dims].T


def pooled(
    table: CandidateTable, states: Mapping[str, FloatArray], proj: tuple[FloatArray, FloatArray]
) -> FloatArray:
    """Per candidate: the reduced states' mean over its words, and that minus the essay's mean."""
    mean, w = proj
    dims = w.shape[1]
    out = np.zeros((table.cls.size, 2 * dims), np.float32)
    for e, essay_id in enumerate(table.ids):
        rows = np.flatnonzero(table.essay == e)
        if rows.size == 0:
            continue
        z = (states[essay_id] - mean) @ w
        csum = np.vstack([np.zeros((1, dims)), np.cumsum(z, axis=0)])
        s, t = table.start[rows], table.end[rows]
        span = (csum[t] - csum[s]) / np.maximum(t - s, 1)[:, None]
        out[rows, :dims] = span
        out[rows, dims:] = span - z.mean(axis=0)
    return out


def with_columns(table: CandidateTable, extra: FloatArray) -> CandidateTable:
    return dataclasses.replace(table, features=np.hstack([table.features, extra]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_run_args(ap)
    ap.add_argument("--dims", type=int, nargs="+", default=[16], help="PCA dimensions to try")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--states", type=Path, default=None, help="an .npz cache of the word states")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    run = run_data(args)
    probs, corpus, train, held = run.probs, run.corpus, run.train, run.held
    base = dataclasses.replace(run.config.gbdt, num_threads=args.threads)
    t = time.perf_counter()
    if args.states and args.states.exists():
        states = {k: v.astype(np.float32) for k, v in np.load(args.states).items()}
    else:
        states = out_of_fold_states(args.run, corpus, train + held, args.threads)
        if args.states:
            np.savez(args.states, **{k: v.astype(np.float16) for k, v in states.items()})
    print(f"word states of {len(states)} essays: {time.perf_counter() - t:.0f} s", flush=True)
    limits = constrained.fit_constrained(
        probs, corpus, train, constrained.ConstrainedConfig(fit=False)
    )
    ttab = build_candidates(probs, corpus.essays, train, base, limits, corpus)
    htab = build_candidates({i: probs[i] for i in held}, corpus.essays, held, base, limits, corpus)
    gt = gold_frame(corpus, held)
    rows: list[dict[str, object]] = []
    for dims in [0, *args.dims]:
        proj = pca(states, train, dims) if dims else None
        tt = ttab if proj is None else with_columns(ttab, pooled(ttab, states, proj))
        ht = htab if proj is None else with_columns(htab, pooled(htab, states, proj))
        for seed in args.seeds:
            cfg = HiddenGbdtConfig(**{**dataclasses.asdict(base), "seed": seed, "dims": dims})
            t = time.perf_counter()
            model = fit_table(TrainingTable(train, limits, tt), corpus, cfg)
            sc = heldout_score(model.predict_table(ht), gt)
            row = {
                "dims": dims,
                "seed": seed,
                "macro_f1": round(sc.macro_f1, 4),
                "essay_tp_fp_fn": round(sc.essay_jaccard, 4),
                "per_class": {c: round(v, 4) for c, v in sc.per_class.items()},
                "fit_s": round(time.perf_counter() - t, 1),
                "load": round(os.getloadavg()[0], 2),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
