"""Typed records of a run folder, each with a JSON round trip.

What the stages write and what `info`, `predict`, the report and the plots read: a stage's
held-out scores (`StageScores`), the agent stage's results (`AgentResults`,
RUN/agent/results.json), the NER stage's out-of-fold metrics (`NerMetrics`, RUN/ner/metrics.json,
read only), what a trainer made (`TrainedPolicy`), each stage's key and wall time
(`StageRecord`, RUN/stages.json) and the folder's format (`RunFormat`, RUN/format.json).
Light on purpose (numpy and the standard library): the CLI reads these without torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np

from discourse_rl.core.common import DiscourseRLError, atomic_write_text, read_json
from discourse_rl.core.data import CLASSES
from discourse_rl.core.layout import FORMAT_VERSION, step_name

ORACLE = "oracle"
"""The segment oracle's row: the best labelling of the segments, a ceiling, not a decoder."""


def _num(x: Any) -> float | None:
    """A float for JSON: NaN (a class without true spans) becomes null."""
    x = float(x)
    return x if math.isfinite(x) else None


def _float(x: Any) -> float:
    return math.nan if x is None else float(x)


# ---------------------------------------------------------------------------------------------
# Held-out scores


@dataclass(frozen=True)
class HeldOutScore:
    """One labelling of the held-out essays, scored."""

    macro_f1: float
    per_class: Mapping[str, float]
    """F1 per class (NaN for a class without true spans)."""
    essay_f1: float
    """Mean per-essay F-score (the RL reward)."""
    essay_jaccard: float
    """Mean per-essay TP / (TP + FP + FN), the seed's essay score."""

    def to_json(self) -> dict[str, Any]:
        return {
            "macro_f1": _num(self.macro_f1),
            "per_class": {c: _num(self.per_class[c]) for c in CLASSES},
            "essay_f1": _num(self.essay_f1),
            "essay_jaccard": _num(self.essay_jaccard),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> HeldOutScore:
        return cls(
            _float(d["macro_f1"]),
            {c: _float(d["per_class"][c]) for c in CLASSES},
            _float(d["essay_f1"]),
            _float(d["essay_jaccard"]),
        )


@dataclass(frozen=True)
class Stat:
    """A score over seeds: mean, sample sd (None below two values) and the values."""

    mean: float
    sd: float | None
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        vals = tuple(float(v) for v in values)
        sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        return cls(float(np.mean(vals)), sd, vals)

    def to_json(self) -> dict[str, Any]:
        sd = None if self.sd is None else _num(self.sd)
        return {"mean": _num(self.mean), "sd": sd, "values": [_num(v) for v in self.values]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Stat:
        sd = d["sd"]
        values = tuple(_float(v) for v in d["values"])
        return cls(
            _float(d["mean"]), None if sd is None and len(values) < 2 else _float(sd), values
        )


@dataclass(frozen=True)
class StageScores:
    """A stage's scores on the held-out essays: per class, macro, the two essay means."""

    stage: str
    macro_f1: Stat
    per_class: Mapping[str, Stat]
    essay_f1: Stat
    essay_jaccard: Stat
    seeds: tuple[int, ...]
    """The agent seeds the values belong to, in order; empty for a score no seed changes."""
    n_train: int
    """Essays the stage's decoding or policy was fitted on."""
    n_heldout: int

    @classmethod
    def combine(
        cls,
        stage: str,
        scores: Sequence[HeldOutScore],
        seeds: Sequence[int],
        n_train: int,
        n_heldout: int,
    ) -> StageScores:
        return cls(
            stage,
            Stat.of([s.macro_f1 for s in scores]),
            {c: Stat.of([s.per_class[c] for s in scores]) for c in CLASSES},
            Stat.of([s.essay_f1 for s in scores]),
            Stat.of([s.essay_jaccard for s in scores]),
            tuple(int(s) for s in seeds),
            n_train,
            n_heldout,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "macro_f1": self.macro_f1.to_json(),
            "per_class": {c: s.to_json() for c, s in self.per_class.items()},
            "essay_f1": self.essay_f1.to_json(),
            "essay_jaccard": self.essay_jaccard.to_json(),
            "seeds": list(self.seeds),
            "n_train": self.n_train,
            "n_heldout": self.n_heldout,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StageScores:
        return cls(
            str(d["stage"]),
            Stat.from_json(d["macro_f1"]),
            {c: Stat.from_json(s) for c, s in d["per_class"].items()},
            Stat.from_json(d["essay_f1"]),
            Stat.from_json(d["essay_jaccard"]),
            tuple(int(s) for s in d["seeds"]),
            int(d["n_train"]),
            int(d["n_heldout"]),
        )


# ---------------------------------------------------------------------------------------------
# The agent stage


@dataclass(frozen=True)
class HeldOutEssays:
    """How a stage chose its held-out essays (every row of its table faces them)."""

    fold: int
    """The fold held out (-1 with 'split')."""
    n_folds: int
    folds_from: str
    """'split' (a seeded share of the essays, `protocol.heldout_split`); before it: 'ner' (the
    NER stage's folds, RUN/ner/folds.json) or 'fresh' (5 seeded folds)."""
    subset: int
    """Size of the seeded random subset the stage drew first (0: every candidate essay)."""
    candidates: int
    """Essays with both word probabilities and labels."""
    simulated: bool = False
    """Simulated word probabilities instead of the NER stage's (train-agent --simulate)."""
    share: float = 0.0
    """'split': the share of the essays held out."""
    seed: int = 0
    """'split': the seed that drew them."""

    @classmethod
    def split(cls, share: float, seed: int, candidates: int, simulated: bool) -> HeldOutEssays:
        return cls(-1, 0, "split", 0, candidates, simulated, share, seed)

    def describe(self) -> str:
        probs = "simulated probabilities" if self.simulated else "out-of-fold probabilities"
        if self.folds_from == "split":
            return (
                f"a seeded {self.share:.0%} (seed {self.seed}) of the {self.candidates:,} "
                f"essays with {probs}"
            )
        where = "NER fold" if self.folds_from == "ner" else "fresh fold"
        pool = (
            f"the seeded {self.subset:,}-essay subset"
            if self.subset
            else f"the {self.candidates:,} essays with "
            + ("simulated probabilities" if self.simulated else "out-of-fold probabilities")
        )
        return f"{where} {self.fold} of {self.n_folds}, among {pool}"


@dataclass(frozen=True)
class SeedRecord:
    """One agent seed: the trainers' wall times and PPO's throughput."""

    seed: int
    bc_seconds: float
    ppo_seconds: float
    ppo_env_steps: int
    ppo_steps_per_second: float
    episode_seconds: float | None = None
    """None when the episode trainer is off."""


@dataclass(frozen=True)
class TradeoffRow:
    """The segmentation's trade-off on training essays at one setting."""

    punctuation: str
    start_threshold: float
    segments_per_essay: float
    segments_per_element: float
    oracle_macro_f1: float


def _find(rows: Sequence[StageScores], name: str) -> StageScores | None:
    return next((s for s in rows if s.stage == name), None)


@dataclass(frozen=True)
class StepResults:
    """What every second stage's results.json starts with: its held-out essays and rows.

    A subclass adds its own fields (with defaults) and extends `to_json`, `_own_fields` and
    `what`; `read` and `write` are shared."""

    n_train: int
    n_heldout: int
    heldout: HeldOutEssays
    stages: tuple[StageScores, ...]

    what: ClassVar[str] = "results"
    """Names the file in the error that an unreadable one gives."""

    def stage(self, name: str) -> StageScores | None:
        return _find(self.stages, name)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "n_train": self.n_train,
            "n_heldout": self.n_heldout,
            "heldout": vars(self.heldout).copy(),
            "stages": {s.stage: s.to_json() for s in self.stages},
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Self:
        return cls(
            int(d["n_train"]),
            int(d["n_heldout"]),
            HeldOutEssays(**d["heldout"]),
            tuple(StageScores.from_json(s) for s in d["stages"].values()),
            *cls._own_fields(d),
        )

    @classmethod
    def _own_fields(cls, d: Mapping[str, Any]) -> tuple[Any, ...]:
        """The subclass's fields after the shared four, in declaration order."""
        return ()

    @classmethod
    def _check(cls, d: Mapping[str, Any], path: str | Path) -> None:
        """Raise a clearer error than 'unreadable' for a file a known older format wrote."""

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> Self:
        d = _read_json(path)
        cls._check(d, path)
        try:
            return cls.from_json(d)
        except (KeyError, TypeError, ValueError) as exc:
            raise DiscourseRLError(f"{path}: unreadable {cls.what} ({exc!r})") from None


@dataclass(frozen=True)
class AgentResults(StepResults):
    """RUN/agent/results.json: the agent stage's table and what it took.

    `stages`: ner-naive, ner-tuned, oracle, then the agent trainers, all on the same essays."""

    seeds: tuple[SeedRecord, ...] = ()
    tradeoff: tuple[TradeoffRow, ...] = ()
    segments_per_essay: float = math.nan
    segments_seconds: float = math.nan

    what: ClassVar[str] = "agent results"

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "seeds": [vars(r).copy() for r in self.seeds],
            "tradeoff": [vars(t).copy() for t in self.tradeoff],
            "segments_per_essay": _num(self.segments_per_essay),
            "segments_seconds": _num(self.segments_seconds),
        }

    @classmethod
    def _own_fields(cls, d: Mapping[str, Any]) -> tuple[Any, ...]:
        return (
            tuple(SeedRecord(**r) for r in d["seeds"]),
            tuple(TradeoffRow(**t) for t in d["tradeoff"]),
            _float(d["segments_per_essay"]),
            _float(d["segments_seconds"]),
        )

    @classmethod
    def _check(cls, d: Mapping[str, Any], path: str | Path) -> None:
        if "summary" in d and "stages" not in d:
            raise DiscourseRLError(older_format(Path(path).parent.parent, 1))


# ---------------------------------------------------------------------------------------------
# The gbdt step


def _recall_json(r: Mapping[str, float]) -> dict[str, float | None]:
    return {c: _num(v) for c, v in r.items()}


def _recall(d: Mapping[str, Any]) -> dict[str, float]:
    return {c: _float(d.get(c)) for c in CLASSES}


@dataclass(frozen=True)
class SpansResults(StepResults):
    """RUN/gbdt/results.json: the non-RL rows on the held-out essays and what gbdt saw.

    `stages`: ner-naive, ner-tuned, ner-constrained, gbdt (mean over seeds)."""

    unique_classes: tuple[str, ...] = ()
    """Classes ner-constrained (and gbdt's Viterbi candidates) allow once per essay."""
    recall_train: Mapping[str, float] = field(default_factory=dict)
    """gbdt candidates: per class, the share of true spans some candidate hits (training)."""
    recall_heldout: Mapping[str, float] = field(default_factory=dict)
    """The same on the held-out essays (the ceiling of gbdt's recall there)."""
    candidates_per_essay: float = math.nan
    positive_share: float = math.nan
    """Share of training candidates that hit a true span."""
    gbdt_train_rows: int = 0
    """Candidates the boosting model trained on (after negative subsampling)."""
    constrained_seconds: float = math.nan
    gbdt_seconds: tuple[float, ...] = ()
    """Fit time per seed (thresholds' cross-fit included)."""
    candidates_seconds: float = math.nan
    """Building the training and held-out candidates and features (once for all seeds)."""

    what: ClassVar[str] = "spans results"

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "unique_classes": list(self.unique_classes),
            "recall_train": _recall_json(self.recall_train),
            "recall_heldout": _recall_json(self.recall_heldout),
            "candidates_per_essay": _num(self.candidates_per_essay),
            "positive_share": _num(self.positive_share),
            "gbdt_train_rows": self.gbdt_train_rows,
            "constrained_seconds": _num(self.constrained_seconds),
            "gbdt_seconds": [_num(x) for x in self.gbdt_seconds],
            "candidates_seconds": _num(self.candidates_seconds),
        }

    @classmethod
    def _own_fields(cls, d: Mapping[str, Any]) -> tuple[Any, ...]:
        return (
            tuple(str(c) for c in d["unique_classes"]),
            _recall(d["recall_train"]),
            _recall(d["recall_heldout"]),
            _float(d["candidates_per_essay"]),
            _float(d["positive_share"]),
            int(d["gbdt_train_rows"]),
            _float(d["constrained_seconds"]),
            tuple(_float(x) for x in d["gbdt_seconds"]),
            _float(d.get("candidates_seconds")),
        )


# ---------------------------------------------------------------------------------------------
# The NER stage (RUN/ner/metrics.json: written by the NER stage; read here)


@dataclass(frozen=True)
class DecodingScore:
    """One decoding's out-of-fold score over the NER stage's essays."""

    macro_f1: float
    per_class: Mapping[str, float]


@dataclass(frozen=True)
class NerMetrics:
    """The NER stage's out-of-fold scores: each essay scored by the fold model that never saw it."""

    naive: DecodingScore
    public_thresholds: DecodingScore | None
    tuned: DecodingScore | None
    """Minima fitted on all folds' probabilities (in-sample for the minima)."""
    tuned_cross_fitted: DecodingScore | None
    """Minima fitted on the other folds: an honest held-out score of ner-tuned."""
    essays: int | None
    seconds: float | None

    @classmethod
    def read(cls, path: str | Path) -> NerMetrics:
        d = _read_json(path)

        def score(key: str) -> DecodingScore | None:
            s = d.get(key)
            if s is None:
                return None
            per = {c: _float(v.get("f1")) for c, v in s["per_class"].items()}
            return DecodingScore(float(s["macro_f1"]), per)

        try:
            naive = score("naive")
            if naive is None:
                raise KeyError("naive")
            return cls(
                naive,
                score("public_thresholds"),
                score("tuned"),
                score("tuned_cross_fitted"),
                None if d.get("essays") is None else int(d["essays"]),
                None if d.get("seconds") is None else float(d["seconds"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DiscourseRLError(f"{path}: unreadable NER metrics ({exc!r})") from None


# ---------------------------------------------------------------------------------------------
# What a trainer made


@dataclass(frozen=True)
class TrainedPolicy:
    """A trainer's saved policy, its wall time and its validation history."""

    trainer: str
    """'bc', 'ppo' or 'episode'."""
    path: Path
    """The policy file that prediction loads."""
    seconds: float
    history: tuple[Mapping[str, float], ...] = ()
    """One row per evaluation (epoch, update or checkpoint)."""
    stats: Mapping[str, Any] = field(default_factory=dict)
    """The trainer's own figures (e.g. PPO's env_steps and steps_per_second)."""

    @classmethod
    def from_summary(cls, trainer: str, path: Path, summary: Mapping[str, Any]) -> TrainedPolicy:
        """From the summary a trainer writes beside its policy (history.json)."""
        stats = {k: v for k, v in summary.items() if k not in ("history", "seconds")}
        history = tuple(dict(r) for r in summary.get("history", ()))
        return cls(trainer, Path(path), float(summary.get("seconds", math.nan)), history, stats)

    @classmethod
    def read(cls, trainer: str, policy: Path, history: Path) -> TrainedPolicy:
        return cls.from_summary(trainer, policy, _read_json(history))


# ---------------------------------------------------------------------------------------------
# Run level: stages.json and format.json


@dataclass(frozen=True)
class StageRecord:
    """One pipeline stage as it was last computed."""

    key: str
    """Hash of the stage's config, the data and the keys of the stages it reads."""
    seconds: float
    data: str | None = None
    """The data folder it read (None: not recorded, runs before format 2)."""
    config: str | None = None
    """The config file it ran with (None: not recorded)."""
    essays: int | None = None
    """Essays in the corpus it read."""
    versions: dict[str, str | None] | None = None
    """The versions of discourse-rl, torch and transformers that computed it (`RunFormat`)."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}


def read_stages(path: str | Path) -> dict[str, StageRecord]:
    """RUN/stages.json by step, a step recorded under an earlier name under its name now
    (`layout.RENAMED_STEPS`: 'spans' is 'gbdt'; where both are there, the new one)."""
    if not Path(path).is_file():
        return {}
    try:
        recs = {name: StageRecord(**rec) for name, rec in _read_json(path).items()}
    except TypeError as exc:
        raise DiscourseRLError(f"{path}: unreadable stage records ({exc})") from None
    out: dict[str, StageRecord] = {}
    for name, rec in recs.items():
        if step_name(name) == name or step_name(name) not in recs:
            out[step_name(name)] = rec
    return out


def write_stages(path: str | Path, stages: Mapping[str, StageRecord]) -> None:
    text = json.dumps({k: v.to_json() for k, v in stages.items()}, indent=2)
    atomic_write_text(path, text + "\n")


def older_format(run: Path, fmt: int) -> str:
    return (
        f"{run}: written by an older discourse-rl (format {fmt}; this one reads format "
        f"{FORMAT_VERSION}): re-run `discourse-rl run --out NEW_FOLDER ...` into a new folder"
    )


def _read_json(path: str | Path) -> dict[str, Any]:
    """A record file: a JSON object (one clear line otherwise)."""
    d = read_json(path)
    if not isinstance(d, dict):
        raise DiscourseRLError(f"{path}: expected a JSON object")
    return d
