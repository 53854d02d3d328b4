"""The gbdt step of a run: the non-RL second stages, fitted on the training essays of the
split protocol and scored on its held-out essays.

Rows: ner-naive (argmax), ner-tuned (minima fitted on the training essays), ner-constrained
(Viterbi with at-most-one limits, `constrained`) and gbdt (span boosting, `decoders.gbdt`; one
fit per run seed, mean and sd in the table). Writes RUN/split.json and RUN/gbdt/
(constrained.json, the first seed's gbdt model folder — the deployed one — and results.json
through `records.SpansResults`). Held-out candidate recall is gbdt's ceiling on those essays.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from discourse_rl.core.arrays import Probs
from discourse_rl.core.common import DiscourseRLError, atomic_write_text
from discourse_rl.core.data import CLASSES, Corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import Split, heldout_score, write_split
from discourse_rl.core.records import HeldOutScore, SpansResults, StageScores
from discourse_rl.decoders import constrained, decode
from discourse_rl.decoders.gbdt.gbdt import SpanModel, fit_table, training_table
from discourse_rl.decoders.gbdt.model import GbdtConfig, build_candidates
from discourse_rl.decoders.segments import gold_frame


def train_gbdt_stage(
    run_dir: str | Path,
    corpus: Corpus,
    probs: Probs,
    split: Split,
    constrained_cfg: constrained.ConstrainedConfig,
    gbdt_cfg: GbdtConfig,
    seeds: Sequence[int] = (0,),
) -> SpansResults:
    """Fit ner-tuned, ner-constrained and gbdt (per seed) on `split.train`, score all four rows
    on `split.heldout`; returns (and writes) the results."""
    lay = RunLayout(run_dir)
    if not seeds:
        raise DiscourseRLError("agent_seeds: at least one seed")
    missing = [i for i in (*split.train, *split.heldout) if i not in probs]
    if missing:
        raise DiscourseRLError(f"{lay.oof}: essay {missing[0]} of the split has no probabilities")
    if lay.gbdt_dir.exists():
        shutil.rmtree(lay.gbdt_dir)
    lay.gbdt_dir.mkdir(parents=True)
    write_split(lay.split, split)
    train, held = list(split.train), list(split.heldout)
    n_train, n_held = len(train), len(held)
    train_probs = {i: probs[i] for i in train}
    held_probs = {i: probs[i] for i in held}
    gt = gold_frame(corpus, held)

    def row(name: str, scores: Sequence[HeldOutScore], seeds_: Sequence[int] = ()) -> StageScores:
        return StageScores.combine(
            name, scores, seeds_, 0 if name == "ner-naive" else n_train, n_held
        )

    rows = [
        row("ner-naive", [heldout_score(decode.decode_all(held_probs, decode.decode_naive), gt)])
    ]
    tuned = decode.fit_tuned(train_probs, corpus.subset(train))
    decode.save_thresholds(lay.gbdt_tuned, tuned)
    pred = decode.decode_all(held_probs, partial(decode.decode_tuned, thresholds=tuned))
    rows.append(row("ner-tuned", [heldout_score(pred, gt)]))

    t = time.perf_counter()
    params = constrained.fit_constrained(probs, corpus, train, constrained_cfg)
    constrained_s = time.perf_counter() - t
    atomic_write_text(lay.constrained, json.dumps(params.to_json(), indent=2) + "\n")
    pred = decode.decode_all(held_probs, partial(constrained.decode_constrained, params=params))
    rows.append(row("ner-constrained", [heldout_score(pred, gt)]))

    # Candidates depend on no seed: built once for the training essays and once for the
    # held-out ones (whose hits give gbdt's ceiling there), then every seed fits and predicts.
    t = time.perf_counter()
    data = training_table(probs, corpus, train, gbdt_cfg)
    held_table = build_candidates(held_probs, corpus.essays, held, gbdt_cfg, data.limits, corpus)
    candidates_s = time.perf_counter() - t
    gbdt_scores: list[HeldOutScore] = []
    gbdt_seconds: list[float] = []
    model: SpanModel | None = None
    for k, seed in enumerate(seeds):
        t = time.perf_counter()
        fitted = fit_table(data, corpus, dataclasses.replace(gbdt_cfg, seed=int(seed)))
        gbdt_seconds.append(time.perf_counter() - t)
        pred = fitted.predict_table(held_table, corpus.essays)
        gbdt_scores.append(heldout_score(pred, gt))
        if k == 0:
            model = fitted
            fitted.save(lay.gbdt)
    assert model is not None
    rows.append(row("gbdt", gbdt_scores, [int(s) for s in seeds]))

    report = model.report
    results = SpansResults(
        n_train,
        n_held,
        split.describe(),
        tuple(rows),
        tuple(CLASSES[c] for c in params.unique_classes),
        report.recall,
        held_table.recall or {},
        report.n_candidates / max(report.n_essays, 1),
        report.positive_share,
        report.n_train_rows,
        constrained_s,
        tuple(gbdt_seconds),
        candidates_s,
    )
    results.write(lay.gbdt_results)
    return results
