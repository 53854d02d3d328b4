"""Span-level gradient boosting (`gbdt`): score candidate spans, then select among them.

A LightGBM binary model predicts whether a candidate hits a true span of its class (one model
with the class as a categorical feature, or one model per class: `GbdtConfig.per_class`).
Selection takes candidates by decreasing score and keeps each one that overlaps no span kept
before it (true elements do not overlap), down to a floor `min_score`; then each class keeps
the spans at or above its fitted minimum score and length. Thresholding after the overlap pass
makes the thresholds' fit exact and cheap (`decode`'s per-class grid search, on fixed spans);
the price is that a span removed by its threshold does not give back the room it took.

The thresholds are fitted on out-of-fold scores of the training essays (`threshold_folds`
models, each blind to a part), since in-sample scores of a boosted model are overconfident;
the deployed model is then trained on all the training essays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import numpy.typing as npt

from discourse_rl.core import rules
from discourse_rl.core.arrays import FloatArray, IntArray
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASSES, Corpus, Essay, labels_to_spans
from discourse_rl.decoders import constrained, decode
from discourse_rl.decoders.gbdt.candidates import (
    CandidateSettings,
    EssayCandidates,
    essay_candidates,
    hit_matrix,
    recall_per_class,
)
from discourse_rl.decoders.gbdt.candidates_plus import (
    clause_starts,
    extend_candidates,
    plus_active,
)
from discourse_rl.decoders.gbdt.features import (
    CATEGORICAL,
    CLASS_COLUMN,
    FEATURE_NAMES,
    Layout,
    candidate_features,
    essay_layout,
)
from discourse_rl.decoders.gbdt.features_plus import PLUS_NAMES, plus_features

N_CLASSES = len(CLASSES)


@dataclass(frozen=True)
class GbdtConfig:
    """Settings of the span boosting stage (`gbdt`, the run config's `[gbdt]`)."""

    start_threshold: float = 0.15
    """Words whose start probability (sum of the B- labels) exceeds this may open a candidate."""
    max_ends: int = 4
    """A candidate from a likely start ends at one of the next this many boundaries."""
    class_min_prob: float = 0.05
    """Such a stretch is a candidate of each class whose mean probability over it reaches this."""
    max_classes: int = 3
    """... of at most this many classes (the most probable)."""
    shift: int = 1
    """Naive and Viterbi spans also give variants with start and end moved by up to this."""
    paragraph_candidates: bool = False
    """Paragraph starts are also likely starts and boundaries (whole paragraphs and runs of
    them become candidates: elements often follow paragraphs where the tagger's boundaries are
    weak)."""
    sentence_ends: int = 0
    """Extra candidates (`candidates_plus`): from every sentence start to one of the next this
    many sentence or paragraph boundaries (0: off)."""
    clause_ends: int = 0
    """... from every clause start (after , ; :) to one of the next this many (0: off)."""
    class_start_threshold: float = 0.0
    """... per class, from every word whose start probability of that class exceeds this,
    labelled with that class (0: off)."""
    subspan_shares: tuple[float, ...] = ()
    """... the best window of each share of every naive and constrained span's length, its
    prefix and its suffix (e.g. [0.65])."""
    sentence_splits: bool = False
    """... naive and constrained spans cut at each sentence start inside them."""
    merge_naive: int = 0
    """... runs of 2 to this many consecutive naive spans merged (0: off)."""
    merge_gap: int = 3
    """Largest gap in words between naive spans that `merge_naive` merges."""
    rare_min_prob: float = 0.0
    """Sentence stretches and splits are also labelled with every class whose mean probability
    over them reaches this (0: off; for the rare classes a weak tagger seldom ranks high)."""
    rich_features: bool = False
    """Add `features_plus`'s features (per-class B / I statistics, quantiles, boundary and
    instability evidence, essay means, position, competing candidates) to the base ones."""
    per_class: bool = False
    """One model per class instead of one model with the class as a feature."""
    one_per_essay: bool = False
    """Rule after selection (the Kaggle runner-up's; `postprocess`): at most one span of each
    class the constrained decoder limits, the highest-scoring one."""
    repair_gap: int = -1
    """Rule: join two Evidence / Claim / Counterclaim / Rebuttal spans of one class that at
    most this many words separate (-1: off; 0 joins touching spans)."""
    short_evidence: int = 0
    """Rule: an Evidence span shorter than this many words starts at the previous sentence
    start (0: off)."""
    n_estimators: int = 300
    """Boosting rounds."""
    learning_rate: float = 0.05
    """Shrinkage per round."""
    num_leaves: int = 31
    """Leaves per tree."""
    min_child_samples: int = 20
    """Fewest candidates in a leaf."""
    feature_fraction: float = 0.8
    """Share of features each tree sees (seeded)."""
    lambda_l2: float = 0.0
    """L2 regularisation of the leaf values."""
    negative_share: float = 1.0
    """Train the boosters on this seeded share of the candidates that hit nothing (1 = all);
    every positive is kept. Scores then rank the same way, so the thresholds still fit."""
    threshold_folds: int = 3
    """Folds for the out-of-fold scores the thresholds are fitted on (0: in-sample scores)."""
    min_score: float = 0.05
    """Candidates scoring below this are never selected."""
    max_min_words: int = 10
    """Largest per-class minimum length the threshold fit tries."""
    score_grid: tuple[float, float, float] = (0.05, 0.95, 0.025)
    """Per-class minimum scores the fit tries: start, stop (inclusive), step."""
    seed: int = 0
    """Seed of LightGBM and of the threshold folds."""
    num_threads: int = 2
    """LightGBM threads (fixed, so the result does not depend on the machine)."""

    ADDED_OFF: ClassVar[Mapping[str, object]] = {
        "one_per_essay": False,
        "repair_gap": -1,
        "short_evidence": 0,
    }
    """Switches added after reference runs were made: keyed only when on (`rules.keyed`)."""

    def __post_init__(self) -> None:
        rules.check_fields(self, _SPAN_RULES)
        if self.threshold_folds == 1:
            raise rules.ConfigValueError("threshold_folds", 1, "must be 0 (in-sample) or >= 2")

    def candidates(self) -> CandidateSettings:
        return CandidateSettings(
            self.start_threshold, self.max_ends, self.class_min_prob, self.max_classes, self.shift
        )

    def feature_names(self) -> tuple[str, ...]:
        return FEATURE_NAMES + PLUS_NAMES if self.rich_features else FEATURE_NAMES

    def lgb_params(self) -> dict[str, Any]:
        return {
            "objective": "binary",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }


_SPAN_RULES = {
    "start_threshold": rules.probability,
    "max_ends": rules.positive,
    "class_min_prob": rules.probability,
    "max_classes": lambda v: rules.at_least(1)(v) or rules.at_most(len(CLASSES))(v),
    "shift": rules.non_negative,
    "sentence_ends": rules.non_negative,
    "clause_ends": rules.non_negative,
    "class_start_threshold": rules.probability,
    "merge_naive": rules.non_negative,
    "merge_gap": rules.non_negative,
    "repair_gap": rules.at_least(-1),
    "short_evidence": rules.non_negative,
    "rare_min_prob": rules.probability,
    "n_estimators": rules.positive,
    "learning_rate": rules.positive,
    "num_leaves": rules.at_least(2),
    "min_child_samples": rules.positive,
    "feature_fraction": rules.unit_interval,
    "lambda_l2": rules.non_negative,
    "negative_share": rules.unit_interval,
    "threshold_folds": rules.non_negative,
    "min_score": rules.probability,
    "max_min_words": rules.positive,
    "score_grid": rules.grid,
    "seed": rules.non_negative,
    "num_threads": rules.positive,
}


# ---------------------------------------------------------------------------------------------
# Candidate tables


@dataclass(frozen=True, eq=False)
class CandidateTable:
    """Many essays' candidates: features and, for labelled essays, whether each is a hit."""

    ids: list[str]
    essay: IntArray
    """Per candidate: its essay's row in `ids`."""
    cls: IntArray
    start: IntArray
    end: IntArray
    features: FloatArray
    hit: npt.NDArray[np.bool_] | None
    recall: dict[str, float] | None
    """Per class: the share of true spans that some candidate hits (labelled essays only)."""


def build_candidates(
    probs: Mapping[str, FloatArray],
    essays: Mapping[str, Essay],
    ids: Sequence[str],
    cfg: GbdtConfig,
    limits: constrained.ConstrainedParams,
    corpus: Corpus | None = None,
) -> CandidateTable:
    """Candidates and features of `ids`; hits and recall too when `corpus` labels them."""
    settings = cfg.candidates()
    rows: list[tuple[EssayCandidates, FloatArray]] = []
    hits: list[npt.NDArray[np.bool_]] = []
    found: list[npt.NDArray[np.bool_]] = []
    gold_cls: list[IntArray] = []
    for eid in ids:
        p = np.asarray(probs[eid], dtype=np.float32)
        essay = essays[eid]
        if p.ndim != 2 or p.shape != (essay.n_words, 15):
            raise DiscourseRLError(f"{eid}: {essay.n_words} words but probabilities {p.shape}")
        vit = constrained.constrained_spans(p, limits.unique_classes)
        layout = essay_layout(essay)
        breaks = np.flatnonzero(layout.paragraph) if cfg.paragraph_candidates else None
        cand = essay_candidates(p, vit, settings, breaks)
        if plus_active(cfg):
            cand = _extend(cand, p, vit, layout, essay, cfg, breaks)
        feats = candidate_features(p, cand, layout)
        if cfg.rich_features:
            feats = np.concatenate([feats, plus_features(p, cand, layout)], axis=1)
        rows.append((cand, feats))
        if corpus is not None:
            el = corpus.essay_elements(eid)
            gold = tuple(el[c].to_numpy(np.int64) for c in ("class_idx", "word_start", "word_end"))
            m = hit_matrix((cand.cls, cand.start, cand.end), gold)  # type: ignore[arg-type]
            hits.append(np.asarray(m.any(1)))
            found.append(np.asarray(m.any(0)))
            gold_cls.append(gold[0])
    n_feat = len(cfg.feature_names())

    def cat(xs: list[npt.NDArray[Any]], dtype: Any, shape: tuple[int, ...] = (0,)) -> Any:
        return np.concatenate(xs).astype(dtype) if xs else np.zeros(shape, dtype)

    return CandidateTable(
        list(ids),
        cat([np.full(c.size, k) for k, (c, _) in enumerate(rows)], np.int64),
        cat([c.cls for c, _ in rows], np.int64),
        cat([c.start for c, _ in rows], np.int64),
        cat([c.end for c, _ in rows], np.int64),
        cat([f for _, f in rows], np.float32, (0, n_feat)),
        cat(hits, np.bool_) if corpus is not None else None,
        recall_per_class(found, gold_cls) if corpus is not None else None,
    )


def _extend(
    cand: EssayCandidates,
    p: FloatArray,
    vit: tuple[IntArray, IntArray, IntArray],
    layout: Layout,
    essay: Essay,
    cfg: GbdtConfig,
    breaks: npt.NDArray[np.integer] | None,
) -> EssayCandidates:
    naive = labels_to_spans(np.argmax(p, axis=1))
    likely = np.flatnonzero(p[:, 1::2].sum(1) > cfg.start_threshold)
    likely = np.union1d(likely, np.concatenate([[0], naive[1], vit[1]]))
    if breaks is not None:
        likely = np.union1d(likely, breaks)
    return extend_candidates(
        cand,
        p,
        naive,
        vit,
        likely.astype(np.int64),
        layout.sentence,
        layout.paragraph,
        clause_starts(essay),
        cfg,
    )


# ---------------------------------------------------------------------------------------------
# Boosters


def train_boosters(
    x: FloatArray, y: npt.NDArray[np.bool_], cfg: GbdtConfig
) -> dict[int, lgb.Booster]:
    """Booster(s) keyed by class (-1: the one model of all classes)."""
    params = cfg.lgb_params()
    groups = {c: x[:, CLASS_COLUMN] == c for c in range(N_CLASSES)} if cfg.per_class else {-1: None}
    out: dict[int, lgb.Booster] = {}
    for key, mask in groups.items():
        xs, ys = (x, y) if mask is None else (x[mask], y[mask])
        # A class without both outcomes has nothing to learn; its candidates score 0.
        if ys.size == 0 or ys.all() or not ys.any():
            continue
        data = lgb.Dataset(
            xs,
            ys.astype(np.float64),
            feature_name=list(cfg.feature_names()),
            categorical_feature=list(CATEGORICAL),
            free_raw_data=True,
        )
        out[key] = lgb.train(params, data, num_boost_round=cfg.n_estimators)
    return out


def score_candidates(boosters: Mapping[int, lgb.Booster], x: FloatArray) -> npt.NDArray[np.float64]:
    out = np.zeros(x.shape[0])
    for key, booster in boosters.items():
        mask = np.ones(x.shape[0], np.bool_) if key < 0 else x[:, CLASS_COLUMN] == key
        if mask.any():
            out[mask] = booster.predict(x[mask])
    return out


def select_rows(table: CandidateTable, score: npt.NDArray[np.float64], floor: float) -> IntArray:
    """Rows kept by the overlap pass: by decreasing score, each row that overlaps no kept one."""
    kept: list[int] = []
    order = np.lexsort((np.arange(score.size), -score, table.essay))  # per essay, best first
    bounds = np.searchsorted(table.essay[order], np.arange(len(table.ids) + 1))
    for k in range(len(table.ids)):
        rows = order[bounds[k] : bounds[k + 1]]
        rows = rows[score[rows] >= floor]
        if rows.size == 0:
            continue
        taken = np.zeros(int(table.end[rows].max()), np.bool_)
        for r in rows.tolist():
            s, e = int(table.start[r]), int(table.end[r])
            if not taken[s:e].any():
                taken[s:e] = True
                kept.append(r)
    return np.sort(np.array(kept, dtype=np.int64))


def fit_thresholds(
    table: CandidateTable, score: npt.NDArray[np.float64], corpus: Corpus, cfg: GbdtConfig
) -> decode.TunedThresholds:
    """Per-class minimum score and length maximising each class's F1 over the selected spans."""
    rows = select_rows(table, score, cfg.min_score)
    n_gt = np.zeros((len(table.ids), N_CLASSES), dtype=np.int64)
    for k, eid in enumerate(table.ids):
        n_gt[k] = np.bincount(corpus.essay_elements(eid)["class_idx"], minlength=N_CLASSES)
    assert table.hit is not None
    # Selected spans do not overlap, so each one's hit stands alone: decode's search applies.
    cand = decode._Candidates(
        table.ids,
        n_gt,
        table.essay[rows],
        table.cls[rows],
        table.end[rows] - table.start[rows],
        score[rows],
        table.hit[rows],
    )
    dcfg = decode.DecodeConfig(
        min_words=(0,) * N_CLASSES,
        min_prob=(0.5,) * N_CLASSES,
        fit=True,
        max_min_words=cfg.max_min_words,
        prob_grid=cfg.score_grid,
    )
    return decode._fit(cand, dcfg, np.ones(len(table.ids), dtype=np.bool_))
