"""The competition metric, exact and vectorised, with one-to-one matching.

A predicted span is a hit on a true span of the same essay and class when their overlap covers at
least half of each. Each prediction and each true span is used at most once: matches are chosen
by maximum bipartite matching, so one prediction straddling halves of two true spans scores one
hit, not two (the widely copied pandas implementation counts two, which an RL agent would learn to
exploit). F1 per class is TP / (TP + (FP + FN) / 2); the macro F1 averages the classes present in
the ground truth, as the competition did (all seven, in any real evaluation).

`score` serves evaluation; `essay_counts` serves the RL reward. Both go through `_hits` and
`_matched_gts`, so they cannot drift apart.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from discourse_rl.common import DiscourseRLError
from discourse_rl.data import CLASSES

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
N_CLASSES = len(CLASSES)
_CLASS_CODES = pd.Index(CLASSES)


@dataclass(frozen=True)
class ClassScore:
    f1: float
    """NaN when the class has no true span (it then takes no part in the macro mean)."""
    tp: int
    fp: int
    fn: int


@dataclass(frozen=True)
class Score:
    macro_f1: float
    per_class: dict[str, ClassScore]

    def to_frame(self) -> pd.DataFrame:
        rows = [
            {"class": c, "f1": s.f1, "tp": s.tp, "fp": s.fp, "fn": s.fn}
            for c, s in self.per_class.items()
        ]
        return pd.DataFrame(rows).set_index("class")

    def to_dict(self) -> dict[str, object]:
        return {
            "macro_f1": self.macro_f1,
            "per_class": {
                c: {"f1": None if np.isnan(s.f1) else s.f1, "tp": s.tp, "fp": s.fp, "fn": s.fn}
                for c, s in self.per_class.items()
            },
        }


# ---------------------------------------------------------------------------------------------
# The shared core


def _hits(inter: IntArray, longer: IntArray) -> BoolArray:
    """Overlap criterion: 2 * overlap >= the longer span's length (so exact halves count).

    The floor of 1 keeps two empty spans from matching; otherwise a hit implies overlap > 0.
    """
    return 2 * inter >= np.maximum(longer, 1)


def _matched_gts(pred_idx: IntArray, gt_idx: IntArray, n_pred: int, n_gt: int) -> BoolArray:
    """Which true spans a maximum one-to-one matching over the hit pairs covers."""
    matched = np.zeros(n_gt, dtype=np.bool_)
    if pred_idx.size == 0:
        return matched
    if np.bincount(pred_idx, minlength=n_pred).max() <= 1:
        # No prediction hits two true spans: every hit true span gets its own prediction.
        matched[gt_idx] = True
        return matched
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import maximum_bipartite_matching

    graph = csr_matrix(
        (np.ones(pred_idx.size, dtype=np.int8), (pred_idx, gt_idx)), shape=(n_pred, n_gt)
    )
    gt_of_pred = maximum_bipartite_matching(graph, perm_type="column")
    matched[gt_of_pred[gt_of_pred >= 0]] = True
    return matched


# ---------------------------------------------------------------------------------------------
# Per essay (RL reward)


def essay_counts(
    pred_cls: IntArray,
    pred_start: IntArray,
    pred_end: IntArray,
    gt_cls: IntArray,
    gt_start: IntArray,
    gt_end: IntArray,
) -> IntArray:
    """TP, FP, FN per class for one essay's contiguous spans: an int array of shape (7, 3)."""
    # This is the RL hot path: few, whole-matrix numpy calls on tiny arrays.
    inter = np.minimum.outer(pred_end, gt_end) - np.maximum.outer(pred_start, gt_start)
    longer = np.maximum.outer(pred_end - pred_start, gt_end - gt_start)
    hit = _hits(inter, longer) & np.equal.outer(pred_cls, gt_cls)
    p, g = np.nonzero(hit)
    matched = _matched_gts(p, g, pred_cls.size, gt_cls.size)
    tp = np.bincount(gt_cls[matched], minlength=N_CLASSES)
    counts = np.empty((N_CLASSES, 3), dtype=np.int64)
    counts[:, 0] = tp
    counts[:, 1] = np.bincount(pred_cls, minlength=N_CLASSES) - tp
    counts[:, 2] = np.bincount(gt_cls, minlength=N_CLASSES) - tp
    return counts


def essay_f1(counts: IntArray) -> float:
    """The essay's F-score over all its spans (1.0 for an essay with nothing to find or find)."""
    tp, fp, fn = counts.sum(0)
    denom = tp + 0.5 * (fp + fn)
    return float(tp / denom) if denom else 1.0


def essay_jaccard(counts: IntArray) -> float:
    """The seed's per-essay score TP / (TP + FP + FN)."""
    tp, fp, fn = counts.sum(0)
    denom = tp + fp + fn
    return float(tp / denom) if denom else 1.0


# ---------------------------------------------------------------------------------------------
# Whole corpus (evaluation)


@dataclass(frozen=True)
class _SpanTable:
    key: IntArray  # essay code * N_CLASSES + class index
    cls: IntArray
    start: IntArray  # first word
    end: IntArray  # last word + 1
    size: IntArray  # distinct words
    sets: dict[int, IntArray]  # row -> sorted unique words, for rows that are not one range


def _span_table(df: pd.DataFrame, class_col: str, essay: IntArray, what: str) -> _SpanTable:
    """Spans of one frame; `essay` holds each row's essay code, shared with the other frame."""
    if class_col not in df.columns:
        raise DiscourseRLError(f"{what}: missing column {class_col!r}")
    codes = _CLASS_CODES.get_indexer(pd.Index(df[class_col]))
    if (codes < 0).any():
        bad = df[class_col].iloc[int(np.argmax(codes < 0))]
        raise DiscourseRLError(f"{what}: unknown class {bad!r}")
    cls_arr = codes.astype(np.int64)
    key: IntArray = essay.astype(np.int64) * N_CLASSES + cls_arr
    if {"word_start", "word_end"} <= set(df.columns):
        start = df["word_start"].to_numpy(np.int64)
        end = df["word_end"].to_numpy(np.int64)
        return _SpanTable(key, cls_arr, start, end, np.maximum(end - start, 0), {})
    if "predictionstring" not in df.columns:
        raise DiscourseRLError(f"{what}: missing column 'predictionstring'")
    strings = df["predictionstring"].tolist()
    # Rows are joined with a -1 between them, so one C-level parse of the whole column gives the
    # words and the row boundaries at once (word indices are never negative).
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            # int32 halves the memory traffic of the passes below (word indices are small).
            try:
                text = " -1 ".join(strings) + " -1" if strings else ""
            except TypeError:  # missing values read as floats
                text = " -1 ".join(x if isinstance(x, str) else "" for x in strings) + " -1"
            parsed = np.fromstring(text, dtype=np.int32, sep=" ")
    except ValueError:
        parsed = np.zeros(0, dtype=np.int32)
    negative = parsed < 0
    marks = np.flatnonzero(negative)
    if marks.size != len(strings) or (parsed[marks] != -1).any():
        raise DiscourseRLError(f"{what}: predictionstring must hold integers separated by spaces")
    counts = np.diff(marks, prepend=-1) - 1
    words = parsed[~negative]
    row_end = np.cumsum(counts)
    row_start = row_end - counts
    nonempty = counts > 0
    start = np.zeros(len(strings), dtype=np.int64)
    end = np.zeros(len(strings), dtype=np.int64)
    start[nonempty] = words[row_start[nonempty]]
    end[nonempty] = words[row_end[nonempty] - 1] + 1
    # A row is one range when its words step by exactly one; others keep their word sets.
    bad_step = np.flatnonzero(words[1:] - words[:-1] != 1)
    row_of_step = np.searchsorted(row_end, bad_step, side="right")
    inside = bad_step + 1 < row_end[np.minimum(row_of_step, row_end.size - 1)]
    is_range = np.ones(len(strings), dtype=np.bool_)
    is_range[row_of_step[inside]] = False
    size = np.where(nonempty, counts, 0)
    sets: dict[int, IntArray] = {}
    for r in np.flatnonzero(~is_range):
        sets[int(r)] = np.unique(words[row_start[r] : row_end[r]]).astype(np.int64)
        size[r] = sets[int(r)].size
        start[r], end[r] = sets[int(r)][0], sets[int(r)][-1] + 1
    return _SpanTable(key, cls_arr, start, end, size, sets)


def _pair_overlap(pred: _SpanTable, gt: _SpanTable, p: IntArray, g: IntArray) -> IntArray:
    raw = np.minimum(pred.end[p], gt.end[g]) - np.maximum(pred.start[p], gt.start[g])
    inter: IntArray = np.maximum(raw, 0)
    if pred.sets or gt.sets:
        for k in np.flatnonzero(np.isin(p, list(pred.sets)) | np.isin(g, list(gt.sets))):
            a = pred.sets.get(int(p[k]), np.arange(pred.start[p[k]], pred.end[p[k]]))
            b = gt.sets.get(int(g[k]), np.arange(gt.start[g[k]], gt.end[g[k]]))
            inter[k] = np.intersect1d(a, b, assume_unique=True).size
    return inter


def score(pred_df: pd.DataFrame, gt_df: pd.DataFrame) -> Score:
    """Macro F1 and per-class F1/TP/FP/FN.

    `pred_df` has columns id, class, predictionstring; `gt_df` has id, discourse_type,
    predictionstring. Either may carry word_start/word_end instead of predictionstring.
    """
    for df, what in ((pred_df, "predictions"), (gt_df, "ground truth")):
        if "id" not in df.columns:
            raise DiscourseRLError(f"{what}: missing column 'id'")
    essays, _ = pd.factorize(pd.concat([pred_df["id"], gt_df["id"]], ignore_index=True))
    pred = _span_table(pred_df, "class", essays[: len(pred_df)], "predictions")
    gt = _span_table(gt_df, "discourse_type", essays[len(pred_df) :], "ground truth")
    pairs = pd.merge(
        pd.DataFrame({"key": pred.key, "p": np.arange(pred.key.size)}),
        pd.DataFrame({"key": gt.key, "g": np.arange(gt.key.size)}),
        on="key",
    )
    p = pairs["p"].to_numpy(np.int64)
    g = pairs["g"].to_numpy(np.int64)
    hit = _hits(_pair_overlap(pred, gt, p, g), np.maximum(pred.size[p], gt.size[g]))
    matched = _matched_gts(p[hit], g[hit], pred.key.size, gt.key.size)
    tp = np.bincount(gt.cls[matched], minlength=N_CLASSES)
    n_pred = np.bincount(pred.cls, minlength=N_CLASSES)
    n_gt = np.bincount(gt.cls, minlength=N_CLASSES)
    per_class: dict[str, ClassScore] = {}
    for c, name in enumerate(CLASSES):
        fp, fn = int(n_pred[c] - tp[c]), int(n_gt[c] - tp[c])
        f1 = float(tp[c] / (tp[c] + 0.5 * (fp + fn))) if n_gt[c] else float("nan")
        per_class[name] = ClassScore(f1, int(tp[c]), fp, fn)
    present = [s.f1 for s in per_class.values() if not np.isnan(s.f1)]
    macro = float(np.mean(present)) if present else float("nan")
    return Score(macro, per_class)


def per_essay_scores(pred_df: pd.DataFrame, gt_df: pd.DataFrame) -> pd.DataFrame:
    """Each ground-truth essay's F-score (the RL reward) and the seed's TP / (TP + FP + FN).

    Frames as for `score`, with word_start/word_end columns (contiguous spans).
    """
    pred_cls = _CLASS_CODES.get_indexer(pd.Index(pred_df["class"]))
    gt_cls = _CLASS_CODES.get_indexer(pd.Index(gt_df["discourse_type"]))
    if (pred_cls < 0).any() or (gt_cls < 0).any():
        raise DiscourseRLError("per-essay scores: unknown class")
    pc, gc = pred_cls.astype(np.int64), gt_cls.astype(np.int64)
    ps, pe = (pred_df[c].to_numpy(np.int64) for c in ("word_start", "word_end"))
    gs, ge = (gt_df[c].to_numpy(np.int64) for c in ("word_start", "word_end"))
    pred_rows = pred_df.groupby("id").indices
    none = np.zeros(0, dtype=np.int64)
    rows = []
    for essay, g in gt_df.groupby("id").indices.items():
        p = pred_rows.get(essay, none)
        counts = essay_counts(pc[p], ps[p], pe[p], gc[g], gs[g], ge[g])
        rows.append((str(essay), essay_f1(counts), essay_jaccard(counts)))
    return pd.DataFrame(rows, columns=["id", "f1", "jaccard"])
