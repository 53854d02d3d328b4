"""The tagger's RL phase as a step of the run (`ner_rl`, issue 27): after the NER step, every
fold model trained further by RL on the metric, and by cross-entropy for the same time (the
honest control; `ner.rl`). Rows on the protocol's held-out essays: ner-rl (naive decoding of
the RL tagger) and ner-rl-tuned (per-class minima fitted on training essays' RL probabilities),
ner-control and ner-control-tuned the same way.

Writes RUN/ner/rl/results.json (the rows, read by the held-out table) and RUN/ner/rl/metrics.json
(each arm's training seconds and updates per fold, and the cross-entropy tagger's tuned row
refitted on the same training essays, so that the tuned rows differ only in the tagger).
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np

from discourse_rl.core.arrays import Probs
from discourse_rl.core.common import DiscourseRLError, atomic_write_text, read_json
from discourse_rl.core.data import Corpus, load_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import Split, heldout_score
from discourse_rl.core.records import StageScores, StepResults
from discourse_rl.decoders import decode
from discourse_rl.decoders.segments import gold_frame
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.rl_config import NerRlConfig

ARMS = {"rl": "ner-rl", "control": "ner-control"}
"""Each arm's folder under RUN/ner/ and its rows' name."""


def results_path(lay: RunLayout) -> Path:
    return lay.ner / "rl" / "results.json"


def metrics_path(lay: RunLayout) -> Path:
    return lay.ner / "rl" / "metrics.json"


def scored_essays(split: Split, rl_cfg: NerRlConfig, seed: int) -> frozenset[str] | None:
    """The essays the arms predict: the held-out ones and a seeded draw of
    `score_train_essays` training ones (None: every essay)."""
    if not rl_cfg.score_train_essays:
        return None
    train = sorted(split.train)
    n = min(rl_cfg.score_train_essays, len(train))
    drawn = np.random.default_rng([seed, 27]).permutation(train)[:n].tolist()
    return frozenset([*split.heldout, *drawn])


def _rows(
    name: str, probs: Probs, corpus: Corpus, fit_ids: list[str], held: list[str]
) -> tuple[StageScores, StageScores]:
    """`name` (naive) and `name`-tuned on `held`, the minima fitted on `fit_ids`."""
    gt = gold_frame(corpus, held)
    held_probs = {i: probs[i] for i in held}
    naive = heldout_score(decode.decode_all(held_probs, decode.decode_naive), gt)
    tuned = decode.fit_tuned({i: probs[i] for i in fit_ids}, corpus.subset(fit_ids))
    pred = decode.decode_all(held_probs, partial(decode.decode_tuned, thresholds=tuned))
    n_held = len(held)
    return (
        StageScores.combine(name, [naive], (), 0, n_held),
        StageScores.combine(f"{name}-tuned", [heldout_score(pred, gt)], (), len(fit_ids), n_held),
    )


def train_ner_rl_stage(
    run_dir: str | Path,
    corpus: Corpus,
    ner_cfg: NerConfig,
    rl_cfg: NerRlConfig,
    split: Split,
    seed: int,
) -> StepResults:
    """Train both arms on every fold (resuming finished folds), then score their rows."""
    # torch comes with the phase: loaded when the step runs, not when the pipeline is imported
    from discourse_rl.ner.rl import arm_oof, train_rl

    lay = RunLayout(run_dir)
    folds = {str(k): int(v) for k, v in read_json(lay.ner_folds).items()}
    predict = scored_essays(split, rl_cfg, seed)
    arms = train_rl(corpus, ner_cfg, rl_cfg, lay, folds, seed, predict)
    held = list(split.heldout)
    fit_ids = sorted(split.train) if predict is None else sorted(predict - set(held))
    rows: list[StageScores] = []
    for arm in arms:
        probs = load_word_probs(arm_oof(lay, arm))
        missing = [i for i in (*held, *fit_ids) if i not in probs]
        if missing:
            raise DiscourseRLError(f"{arm_oof(lay, arm)}: essay {missing[0]} has no probabilities")
        rows.extend(_rows(ARMS[arm], probs, corpus, fit_ids, held))
    ce = load_word_probs(lay.oof)
    ce_naive, ce_tuned = _rows("ner", ce, corpus, fit_ids, held)
    metrics = {
        "arms": arms,
        "fit_essays": len(fit_ids),
        "heldout_essays": len(held),
        "ce_same_essays": {"naive": ce_naive.to_json(), "tuned": ce_tuned.to_json()},
    }
    atomic_write_text(metrics_path(lay), json.dumps(metrics, indent=2) + "\n")
    results = StepResults(len(fit_ids), len(held), split.describe(), tuple(rows))
    results.write(results_path(lay))
    return results
