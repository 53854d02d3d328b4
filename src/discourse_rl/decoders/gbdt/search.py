"""gbdt's hyper-parameters chosen by an Optuna search on training essays with inner folds.

Each trial fits gbdt (boosters and thresholds, `fit_table`) on all inner folds but one of the
training essays and scores the left-out fold's spans with the competition metric; the trial's
value is the mean macro F1 over the inner folds. Candidates and features depend on no searched
value, so the table is built once and sliced per fold. No held-out essay is read. Optuna is an
optional dependency (`pip install optuna`, the `search` extra); it is imported only here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from discourse_rl.core.arrays import IntArray
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import Corpus
from discourse_rl.core.protocol import heldout_score
from discourse_rl.decoders.gbdt.gbdt import TrainingTable, fit_table
from discourse_rl.decoders.gbdt.model import CandidateTable, GbdtConfig
from discourse_rl.decoders.search import suggest
from discourse_rl.decoders.segments import gold_frame

# name -> (kind, low, high): the searched GbdtConfig fields.
SPACE: dict[str, tuple[str, float, float]] = {
    "n_estimators": ("int", 100, 600),
    "learning_rate": ("log", 0.02, 0.2),
    "num_leaves": ("intlog", 15, 255),
    "min_child_samples": ("intlog", 5, 200),
    "feature_fraction": ("float", 0.3, 1.0),
    "lambda_l2": ("log", 1e-3, 30.0),
    "negative_share": ("float", 0.1, 0.6),
}


def subset_table(table: CandidateTable, keep_essays: np.ndarray) -> CandidateTable:
    """The candidates of the essays at rows `keep_essays` of `table.ids`, renumbered."""
    keep_essays = np.sort(np.asarray(keep_essays, np.int64))
    new_index = np.full(len(table.ids), -1, np.int64)
    new_index[keep_essays] = np.arange(keep_essays.size)
    rows = new_index[table.essay] >= 0
    return CandidateTable(
        [table.ids[k] for k in keep_essays.tolist()],
        new_index[table.essay[rows]],
        table.cls[rows],
        table.start[rows],
        table.end[rows],
        table.features[rows],
        None if table.hit is None else table.hit[rows],
        table.recall,
    )


def inner_folds(
    data: TrainingTable, folds: int, rng_key: list[int]
) -> Iterator[tuple[TrainingTable, CandidateTable, IntArray]]:
    """The training essays dealt into `folds` seeded folds; per fold, the other folds' table to
    fit on, this fold's candidates, and this fold's essay indices."""
    fold = np.random.default_rng(rng_key).permutation(len(data.ids)) % folds
    for f in range(folds):
        fit_rows = np.flatnonzero(fold != f)
        held_rows = np.flatnonzero(fold == f)
        part = TrainingTable(
            [data.ids[k] for k in fit_rows.tolist()],
            data.limits,
            subset_table(data.table, fit_rows),
        )
        yield part, subset_table(data.table, held_rows), held_rows


def inner_score(
    data: TrainingTable, corpus: Corpus, cfg: GbdtConfig, folds: int, seed: int = 0
) -> float:
    """Mean macro F1 over `folds` inner folds of the training essays."""
    if folds < 2 or len(data.ids) < folds:
        raise DiscourseRLError(f"search: {folds} inner folds for {len(data.ids)} essays")
    scores = []
    for part, held, _ in inner_folds(data, folds, [seed, 7]):
        model = fit_table(part, corpus, cfg)
        gt = gold_frame(corpus, held.ids)
        scores.append(heldout_score(model.predict_table(held, corpus.essays), gt).macro_f1)
    return float(np.mean(scores))


def search(
    data: TrainingTable,
    corpus: Corpus,
    base: GbdtConfig,
    trials: int,
    folds: int = 2,
    seed: int = 0,
    space: Mapping[str, tuple[str, float, float]] = SPACE,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Best values (and every trial's) of a TPE search; the first trial is `base` itself."""
    import optuna  # optional dependency: only the search needs it

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    # The base's own values first (clipped into the searched ranges).
    study.enqueue_trial({k: min(max(getattr(base, k), lo), hi) for k, (_, lo, hi) in space.items()})
    history: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        values = suggest(trial, space)
        cfg = dataclasses.replace(base, **values)
        value = inner_score(data, corpus, cfg, folds, seed)
        history.append({"trial": trial.number, "macro_f1": value, **values})
        log(f"trial {trial.number}: {value:.4f} {values}")
        return value

    study.optimize(objective, n_trials=trials)
    return dict(study.best_params), history
