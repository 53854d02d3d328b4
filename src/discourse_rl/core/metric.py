"""The competition metric, exact and vectorised, with one-to-one matching.

A predicted span is a hit on a true span of the same essay and class when their overlap covers at
least half of each. Each prediction and each true span is used at most once: matches are chosen
by maximum bipartite matching, so one prediction straddling halves of two true spans scores one
hit, not two (the widely copied pandas implementation counts two, which an RL agent would learn to
exploit). F1 per class is TP / (TP + (FP + FN) / 2); the macro F1 averages the classes present in
the ground truth, as the competition did (all seven, in any real evaluation).

`score` serves evaluation; `essay_counts` serves the RL reward. Both go through `_matched_gts`
and, but for the loop that `essay_counts` runs on small essays (tested against it), `_hits`.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as arrow_compute
from numpy.lib.stride_tricks import sliding_window_view

from discourse_rl.core.arrays import BoolArray, IntArray
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASSES

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
    # scipy: only essays with many overlapping candidates need a matching
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
    # This is the RL hot path, on about ten spans a side. There a loop over Python lists beats
    # whole-matrix numpy, whose fixed cost per call (about a microsecond) adds up over the dozen
    # calls it needs; numpy wins back on big essays.
    if pred_cls.size * gt_cls.size > _VECTORISE_PAIRS:
        overlap = np.minimum.outer(pred_end, gt_end) - np.maximum.outer(pred_start, gt_start)
        longer = np.maximum.outer(pred_end - pred_start, gt_end - gt_start)
        hit = _hits(overlap, longer) & np.equal.outer(pred_cls, gt_cls)
        p, g = np.nonzero(hit)
        matched_gt = _matched_gts(p, g, pred_cls.size, gt_cls.size)
        tp = np.bincount(gt_cls[matched_gt], minlength=N_CLASSES)
        whole = np.empty((N_CLASSES, 3), dtype=np.int64)
        whole[:, 0] = tp
        whole[:, 1] = np.bincount(pred_cls, minlength=N_CLASSES) - tp
        whole[:, 2] = np.bincount(gt_cls, minlength=N_CLASSES) - tp
        return whole
    counts = [0] * (3 * N_CLASSES)  # (7, 3) flattened
    gt_slot: list[int] = []
    by_class: dict[int, list[tuple[int, int, int, int]]] = {}
    try:
        for j, (c, s, e) in enumerate(
            zip(gt_cls.tolist(), gt_start.tolist(), gt_end.tolist(), strict=True)
        ):
            slot = _TP_SLOT[c]
            gt_slot.append(slot)
            counts[slot + 2] += 1
            if c in by_class:
                by_class[c].append((s, e, e - s, j))
            else:
                by_class[c] = [(s, e, e - s, j)]
        hit_pred: list[int] = []
        hit_gt: list[int] = []
        one_each = True
        no_span: list[tuple[int, int, int, int]] = []
        for i, (c, s, e) in enumerate(
            zip(pred_cls.tolist(), pred_start.tolist(), pred_end.tolist(), strict=True)
        ):
            counts[_TP_SLOT[c] + 1] += 1
            length = e - s
            for s2, e2, length2, j in by_class.get(c, no_span):
                # The criterion of `_hits`; overlap > 0 stands in for its floor of 1.
                inter = (e if e < e2 else e2) - (s if s > s2 else s2)
                if inter > 0 and 2 * inter >= (length if length > length2 else length2):
                    if hit_pred and hit_pred[-1] == i:
                        one_each = False
                    hit_pred.append(i)
                    hit_gt.append(j)
    except KeyError as err:
        raise ValueError(f"class index out of range: {err}") from None
    if one_each:
        matched: Iterable[int] = set(hit_gt)
    else:
        as_array = np.array(hit_pred, dtype=np.int64), np.array(hit_gt, dtype=np.int64)
        matched = np.flatnonzero(_matched_gts(*as_array, pred_cls.size, gt_cls.size)).tolist()
    for j in matched:
        slot = gt_slot[j]
        counts[slot] += 1
        counts[slot + 1] -= 1
        counts[slot + 2] -= 1
    return np.array(counts, dtype=np.int64).reshape(N_CLASSES, 3)


# Above this many (prediction, true span) pairs `essay_counts` goes whole-matrix.
_VECTORISE_PAIRS = 600
_TP_SLOT = {c: 3 * c for c in range(N_CLASSES)}  # a dict, so a bad class raises, never wraps


def essay_f1(counts: IntArray) -> float:
    """The essay's F-score over all its spans (1.0 for an essay with nothing to find or find)."""
    # Python sums of the 21 numbers: cheaper than a numpy reduction and numpy scalars.
    flat = counts.ravel().tolist()
    tp = sum(flat[0::3])
    denom = tp + 0.5 * (sum(flat[1::3]) + sum(flat[2::3]))
    return float(tp / denom) if denom else 1.0


def essay_jaccard(counts: IntArray) -> float:
    """The seed's per-essay score TP / (TP + FP + FN)."""
    flat = counts.ravel().tolist()
    tp = sum(flat[0::3])
    denom = tp + sum(flat[1::3]) + sum(flat[2::3])
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


def _class_codes(values: pd.Series) -> IntArray:
    """Class indices, -1 for unknown names: looked up once per distinct name, not per row."""
    codes, names = pd.factorize(values)
    lookup = np.append(_CLASS_CODES.get_indexer(pd.Index(names)), -1)  # NaN has code -1
    return lookup[codes].astype(np.int64)


def _span_table(df: pd.DataFrame, class_col: str, essay: IntArray, what: str) -> _SpanTable:
    """Spans of one frame; `essay` holds each row's essay code, shared with the other frame."""
    if class_col not in df.columns:
        raise DiscourseRLError(f"{what}: missing column {class_col!r}")
    cls_arr = _class_codes(df[class_col])
    if (cls_arr < 0).any():
        bad = df[class_col].iloc[int(np.argmax(cls_arr < 0))]
        raise DiscourseRLError(f"{what}: unknown class {bad!r}")
    key: IntArray = essay.astype(np.int64) * N_CLASSES + cls_arr
    if {"word_start", "word_end"} <= set(df.columns):
        start = df["word_start"].to_numpy(np.int64)
        end = df["word_end"].to_numpy(np.int64)
        return _SpanTable(key, cls_arr, start, end, np.maximum(end - start, 0), {})
    if "predictionstring" not in df.columns:
        raise DiscourseRLError(f"{what}: missing column 'predictionstring'")
    start, end, size, sets = _parse_predictionstrings(df["predictionstring"], what)
    return _SpanTable(key, cls_arr, start, end, size, sets)


_Parsed = tuple[IntArray, IntArray, IntArray, dict[int, IntArray]]


def _parse_predictionstrings(column: pd.Series, what: str) -> _Parsed:
    """Start, end, distinct-word count and, for rows that are not one range, the word sets.

    Nearly every predictionstring is the canonical text of a word range ("4 5 6 7"); those rows
    are recognised without reading their words (`_canonical_ranges`), the rest are parsed.
    """
    n = len(column)
    start = np.zeros(n, dtype=np.int64)
    end = np.zeros(n, dtype=np.int64)
    size = np.zeros(n, dtype=np.int64)
    ranges = _canonical_ranges(column)
    if ranges is None:
        rest: IntArray = np.arange(n, dtype=np.int64)
    else:
        is_range, first, stop = ranges
        start[is_range] = first[is_range]
        end[is_range] = stop[is_range]
        size[is_range] = stop[is_range] - first[is_range]
        rest = np.flatnonzero(~is_range)
    sets: dict[int, IntArray] = {}
    if rest.size:
        strings = column.tolist() if rest.size == n else column.iloc[rest].tolist()
        r_start, r_end, r_size, r_sets = _parse_exactly(strings, what)
        start[rest], end[rest], size[rest] = r_start, r_end, r_size
        sets = {int(rest[r]): words for r, words in r_sets.items()}
    return start, end, size, sets


def _parse_exactly(strings: list[Any], what: str) -> _Parsed:
    """Every word of every row: the path for rows that are not canonical ranges."""
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
    return start, end, size, sets


# The first word is read from at most this many bytes; longer numbers take the exact path.
_HEAD = 6
_POW10 = 10 ** np.arange(_HEAD, -1, -1, dtype=np.int64)  # 10^6 .. 10^0
# Canonical texts cover at most this many words; rows reaching further take the exact path.
_MAX_CANONICAL_WORDS = 1 << 20
# An Arrow string view holds strings of up to 12 bytes inline, longer ones by reference.
_INLINE = 12
_PREFIX = 4


@functools.lru_cache(maxsize=4)
def _canonical_text(n_words: int) -> tuple[bytes, IntArray, IntArray]:
    """The text "0 1 2 ... n-1 ", where each word starts in it and the word of each byte."""
    text = " ".join(map(str, range(n_words))) + " "
    widths = np.fromiter(map(len, map(str, range(n_words))), dtype=np.int64, count=n_words) + 1
    word_at = np.zeros(n_words + 1, dtype=np.int64)
    np.cumsum(widths, out=word_at[1:])
    word_of_byte = np.repeat(np.arange(n_words, dtype=np.int64), widths)
    return text.encode("ascii"), word_at, word_of_byte


def _canonical_ranges(column: pd.Series) -> tuple[BoolArray, IntArray, IntArray] | None:
    """Which rows are exactly the text of a word range, with its first word and end.

    A row is the range f..l exactly when its bytes equal the slice of "0 1 2 ... " that starts at
    word f and ends before a space, so one vectorised byte comparison decides every row: parsing
    millions of words is what made predictionstrings slow. The comparison runs in Arrow on string
    views into that one text, which need no copying. None where Arrow cannot do this.
    """
    if not hasattr(pa, "string_view"):  # pyarrow < 16
        return None
    try:
        arr = pa.array(column, from_pandas=True)
        if isinstance(arr, pa.ChunkedArray):
            arr = arr.combine_chunks()
        # Only text: the exact path reads anything else (numbers, say) as no words, as it did.
        text_type = arr.type.value_type if pa.types.is_dictionary(arr.type) else arr.type
        if text_type not in (pa.string(), pa.large_string(), pa.string_view()):
            return None
        if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
            arr = arr.cast(pa.large_string())
    except (pa.ArrowException, TypeError, ValueError):
        return None
    n = len(arr)
    _, offsets_buf, data_buf = arr.buffers()
    offset_type = np.int32 if pa.types.is_string(arr.type) else np.int64
    offsets = np.frombuffer(offsets_buf, dtype=offset_type)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else None
    if n == 0 or data is None or data.size < _HEAD:
        return None
    length = np.diff(offsets).astype(np.int64)

    # The first word, from the leading digits of the first _HEAD bytes. The few rows that start
    # in the last _HEAD bytes read a shifted window, fail the comparison and take the exact path.
    head_at = np.minimum(offsets[:-1], data.size - _HEAD)
    digits = sliding_window_view(data, _HEAD)[head_at] - np.uint8(ord("0"))
    leading = np.logical_and.accumulate(
        (digits < 10) & (np.arange(_HEAD) < length[:, None]), axis=1
    )
    n_digits = leading.sum(1)
    first = ((digits * leading) @ _POW10[1:]) // _POW10[n_digits]
    # Each word takes at least two bytes with its space, so a row ends before word f + len / 2.
    reach = first + (length + 1) // 2 + 1
    candidate = (n_digits > 0) & (n_digits < _HEAD) & (reach <= _MAX_CANONICAL_WORDS)
    if not candidate.any():
        return None
    n_words = max(1024, 1 << int(reach[candidate].max() - 1).bit_length())
    text, word_at, word_of_byte = _canonical_text(n_words)
    first = np.where(candidate, first, 0)
    length = np.where(candidate, length, 0)
    at = word_at[first]

    # The expected strings as views into `text`: 16 bytes each, the length, then either the
    # bytes inline (up to _INLINE) or a 4-byte prefix, buffer 0 and the offset.
    padded = np.frombuffer(text + bytes(_INLINE + 1), dtype=np.uint8)
    inline = length <= _INLINE
    shown = np.where(inline, length, _PREFIX)
    views = np.zeros((n, 4), dtype=np.int32)
    views[:, 0] = length
    as_bytes = views.view(np.uint8)
    as_bytes[:, 4:] = sliding_window_view(padded, _INLINE)[at] * (
        np.arange(_INLINE) < shown[:, None]
    )
    views[:, 3] = np.where(inline, views[:, 3], at)
    expected = pa.Array.from_buffers(
        pa.string_view(), n, [None, pa.py_buffer(views), pa.py_buffer(text)]
    )
    try:
        same = arrow_compute.equal(arr.cast(pa.string_view()), expected)
    except pa.ArrowNotImplementedError:
        return None
    if same.null_count:
        same = arrow_compute.fill_null(same, False)
    after = at + length
    is_range = candidate & same.to_numpy(zero_copy_only=False) & (padded[after] == ord(" "))
    return is_range, first, word_of_byte[after] + 1


def _pair_overlap(pred: _SpanTable, gt: _SpanTable, p: IntArray, g: IntArray) -> IntArray:
    raw = np.minimum(pred.end[p], gt.end[g]) - np.maximum(pred.start[p], gt.start[g])
    inter: IntArray = np.maximum(raw, 0)
    if pred.sets or gt.sets:
        for k in np.flatnonzero(np.isin(p, list(pred.sets)) | np.isin(g, list(gt.sets))):
            a = pred.sets.get(int(p[k]), np.arange(pred.start[p[k]], pred.end[p[k]]))
            b = gt.sets.get(int(g[k]), np.arange(gt.start[g[k]], gt.end[g[k]]))
            inter[k] = np.intersect1d(a, b, assume_unique=True).size
    return inter


def _same_key_pairs(a: IntArray, b: IntArray) -> tuple[IntArray, IntArray]:
    """All pairs (i, j) with a[i] == b[j]: an inner join, without pandas' overheads."""
    if a.size == 0 or b.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    # Keys are essay * 7 + class with essay >= -1 (a missing id), so a shift makes them small
    # non-negative integers and a counting sort of b does the rest.
    low = min(int(a.min()), int(b.min()))
    a, b = a - low, b - low
    n_keys = max(int(a.max()), int(b.max())) + 1
    per_key = np.bincount(b, minlength=n_keys)
    key_start = np.cumsum(per_key) - per_key
    order = np.argsort(b, kind="stable")
    count = per_key[a]
    i = np.repeat(np.arange(a.size, dtype=np.int64), count)
    # Pair k of row i is its (k - first pair of i)-th match, at key_start + that in `order`.
    shift = np.repeat(np.cumsum(count) - count - key_start[a], count)
    return i, order[np.arange(i.size, dtype=np.int64) - shift].astype(np.int64)


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
    p, g = _same_key_pairs(pred.key, gt.key)
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
    pc, gc = _class_codes(pred_df["class"]), _class_codes(gt_df["discourse_type"])
    if (pc < 0).any() or (gc < 0).any():
        raise DiscourseRLError("per-essay scores: unknown class")
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
