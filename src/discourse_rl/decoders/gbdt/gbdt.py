"""The `gbdt` stage's entry points: fit on training essays, predict, save and load.

A fitted `SpanModel` is a folder: the LightGBM model text (one file, or one per class),
`params.json` (the constrained decoder's limits used for candidates, the per-class thresholds,
the fit's report) and `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd

from discourse_rl.core import artefacts
from discourse_rl.core.arrays import FloatArray, IntArray
from discourse_rl.core.common import DiscourseRLError, atomic_write_text, config_from_dict
from discourse_rl.core.data import CLASSES, Corpus, Essay, spans_to_frame
from discourse_rl.decoders import constrained
from discourse_rl.decoders.decode import TunedThresholds
from discourse_rl.decoders.gbdt.model import (
    CandidateTable,
    GbdtConfig,
    build_candidates,
    fit_thresholds,
    score_candidates,
    select_rows,
    train_boosters,
)
from discourse_rl.decoders.gbdt.postprocess import RuleSettings, apply_rules

FORMAT = 1


@dataclass(frozen=True)
class FitReport:
    """What the fit saw: for the run's metrics and the README."""

    n_essays: int
    n_candidates: int
    positive_share: float
    """Share of candidates that hit a true span."""
    recall: dict[str, float]
    """Per class: the share of true spans that some candidate hits (the model's ceiling)."""
    n_train_rows: int = 0
    """Candidates the deployed booster trained on (after negative subsampling)."""

    def to_json(self) -> dict[str, object]:
        return {
            "n_essays": self.n_essays,
            "n_candidates": self.n_candidates,
            "positive_share": self.positive_share,
            "recall": {c: None if math.isnan(v) else v for c, v in self.recall.items()},
            "n_train_rows": self.n_train_rows,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> FitReport:
        recall = data["recall"]
        assert isinstance(recall, Mapping)
        return cls(
            int(data["n_essays"]),  # type: ignore[call-overload]
            int(data["n_candidates"]),  # type: ignore[call-overload]
            float(data["positive_share"]),  # type: ignore[arg-type]
            {c: float("nan") if recall.get(c) is None else float(recall[c]) for c in CLASSES},
            int(data.get("n_train_rows", 0)),  # type: ignore[call-overload]
        )


@dataclass(frozen=True, eq=False)
class SpanModel:
    """A fitted span boosting stage."""

    cfg: GbdtConfig
    limits: constrained.ConstrainedParams
    """The constrained decoder's at-most-one classes (its spans are candidates)."""
    boosters: Mapping[int, lgb.Booster]
    """By class index, or -1 for the one model of all classes."""
    thresholds: TunedThresholds
    """Per class: minimum length and minimum score of a selected span."""
    report: FitReport

    def predict(
        self,
        probs: Mapping[str, FloatArray],
        essays: Mapping[str, Essay],
        ids: Iterable[str] | None = None,
    ) -> pd.DataFrame:
        """Spans (id, class, predictionstring, word_start, word_end) of `ids` (default: all of
        `probs`); `essays` gives their words and paragraph breaks."""
        ids = sorted(probs) if ids is None else list(ids)
        missing = [i for i in ids if i not in essays]
        if missing:
            raise DiscourseRLError(f"gbdt: essay {missing[0]!r} has probabilities but no text")
        table = build_candidates(probs, essays, ids, self.cfg, self.limits)
        return self.predict_table(table, essays)

    def predict_table(
        self, table: CandidateTable, essays: Mapping[str, Essay] | None = None
    ) -> pd.DataFrame:
        """`predict` on candidates already built with this model's settings and limits (the
        rules after selection, where the config switches them on, need the `essays` only for
        `short_evidence`)."""
        rows, score = self.kept_rows(table)
        rules = RuleSettings.of(self.cfg)
        if rules.active:
            unique = frozenset(int(u) for u in self.limits.unique_classes)
            return apply_rules(rows, score, table, unique, essays, rules)
        return spans_to_frame(
            [table.ids[k] for k in table.essay[rows]],
            table.cls[rows],
            table.start[rows],
            table.end[rows],
        )

    def kept_rows(self, table: CandidateTable) -> tuple[IntArray, npt.NDArray[np.float64]]:
        """The rows of `table` that become spans (selected, then past their class's minimum
        length and score), and every row's score."""
        score = score_candidates(self.boosters, table.features)
        rows = select_rows(table, score, self.cfg.min_score)
        c = table.cls[rows]
        keep = (table.end[rows] - table.start[rows] >= np.asarray(self.thresholds.min_words)[c]) & (
            score[rows] >= np.asarray(self.thresholds.min_prob)[c]
        )
        return rows[keep], score

    # --- files ---------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write the model folder whole: into a temporary sibling, then renamed into place."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            for key, booster in self.boosters.items():
                atomic_write_text(tmp / _model_file(key), booster.model_to_string())
            params = {
                "format": FORMAT,
                "models": sorted(self.boosters),
                "limits": self.limits.to_json(),
                "thresholds": self.thresholds.to_json(),
                "report": self.report.to_json(),
            }
            atomic_write_text(tmp / "params.json", json.dumps(params, indent=2) + "\n")
            cfg = dataclasses.asdict(self.cfg)
            atomic_write_text(tmp / "config.json", json.dumps(cfg, indent=2) + "\n")
            old = None
            if folder.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
                os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            if old is not None:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, folder: str | Path) -> SpanModel:
        folder = Path(folder)
        artefacts.verify(folder / "params.json")
        try:
            params = json.loads((folder / "params.json").read_text(encoding="utf-8"))
            cfg_data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            msg = f"{folder}: not a gbdt model folder ({exc.filename} missing)"
            raise DiscourseRLError(msg) from None
        except json.JSONDecodeError as exc:
            raise DiscourseRLError(f"{folder}: invalid JSON ({exc})") from None
        if params.get("format") != FORMAT:
            raise DiscourseRLError(f"{folder}: gbdt format {params.get('format')!r}, need {FORMAT}")
        cfg = config_from_dict(GbdtConfig, cfg_data, where=str(folder / "config.json"))
        boosters = {}
        for key in params["models"]:
            path = folder / _model_file(int(key))
            artefacts.verify(path)
            try:
                boosters[int(key)] = lgb.Booster(model_str=path.read_text(encoding="utf-8"))
            except (OSError, lgb.basic.LightGBMError) as exc:
                raise artefacts.unreadable(path, "a LightGBM model", exc) from None
        where = str(folder / "params.json")
        return cls(
            cfg,
            constrained.ConstrainedParams.from_json(params["limits"], where),
            boosters,
            TunedThresholds.from_json(params["thresholds"], where),
            FitReport.from_json(params["report"]),
        )


def _training_rows(hit: npt.NDArray[np.bool_], cfg: GbdtConfig) -> npt.NDArray[np.bool_]:
    """Every positive and a seeded `negative_share` of the negatives."""
    if cfg.negative_share >= 1.0:
        return np.ones(hit.size, np.bool_)
    keep = np.random.default_rng([cfg.seed, 1]).random(hit.size) < cfg.negative_share
    return np.asarray(hit | keep)


def _model_file(key: int) -> str:
    return "model.txt" if key < 0 else f"model_{key}.txt"


@dataclass(frozen=True, eq=False)
class TrainingTable:
    """What a fit reads that no seed changes: the essays, the limits and their candidates.
    Built once (`training_table`), it serves every seed's `fit_table`."""

    ids: list[str]
    limits: constrained.ConstrainedParams
    table: CandidateTable


def training_table(
    probs: Mapping[str, FloatArray],
    corpus: Corpus,
    train_ids: Iterable[str],
    cfg: GbdtConfig,
) -> TrainingTable:
    """Candidates of `train_ids` with their hits (the candidate settings of `cfg` only)."""
    ids = sorted(set(constrained.with_probs(probs, train_ids, "gbdt")))
    # Only the limits matter for candidates; the minima are the boosting thresholds' job.
    limits = constrained.fit_constrained(
        probs, corpus, ids, constrained.ConstrainedConfig(fit=False)
    )
    return TrainingTable(
        ids, limits, build_candidates(probs, corpus.essays, ids, cfg, limits, corpus)
    )


def fit_table(data: TrainingTable, corpus: Corpus, cfg: GbdtConfig) -> SpanModel:
    """Boosters and thresholds on a prepared training table (its candidate settings must be
    `cfg`'s)."""
    ids, limits, table = data.ids, data.limits, data.table
    assert table.hit is not None and table.recall is not None
    train = _training_rows(table.hit, cfg)
    boosters = train_boosters(table.features[train], table.hit[train], cfg)
    k = cfg.threshold_folds
    if k >= 2 and len(ids) >= k:
        fold = np.random.default_rng(cfg.seed).permutation(len(ids)) % k
        score = np.zeros(table.cls.size)
        for f in range(k):
            held = fold[table.essay] == f
            rows = train & ~held
            part = train_boosters(table.features[rows], table.hit[rows], cfg)
            # Scored: every held candidate, the subsampled-away negatives included.
            score[held] = score_candidates(part, table.features[held])
    else:
        score = score_candidates(boosters, table.features)
    thresholds = fit_thresholds(table, score, corpus, cfg)
    report = FitReport(
        len(ids),
        int(table.cls.size),
        float(table.hit.mean()) if table.hit.size else 0.0,
        table.recall,
        int(train.sum()),
    )
    return SpanModel(cfg, limits, boosters, thresholds, report)


def fit(
    probs: Mapping[str, FloatArray],
    corpus: Corpus,
    train_ids: Iterable[str],
    cfg: GbdtConfig | None = None,
) -> SpanModel:
    """Train on `train_ids` (their probabilities should be out of fold for the tagger)."""
    cfg = cfg or GbdtConfig()
    return fit_table(training_table(probs, corpus, train_ids, cfg), corpus, cfg)
