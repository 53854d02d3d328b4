"""Per-candidate features for the boosting model.

Everything is computed per essay with prefix sums and sparse tables, so a feature costs O(1) per
candidate whatever the span's length (an essay has hundreds of candidates, some 500 words long).
Quantiles of the class probability over a span are given as its distribution function at fixed
points (the share of the span's words above 0.2, 0.4, 0.6, 0.8): the same information as
quantiles, but readable from prefix sums instead of a sort per candidate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from discourse_rl.core.arrays import BoolArray, FloatArray
from discourse_rl.core.data import CLASSES, Essay
from discourse_rl.decoders.gbdt.candidates import EssayCandidates

N_CLASSES = len(CLASSES)
LEVELS = (0.2, 0.4, 0.6, 0.8)
EDGE = 3  # words on each side of a boundary that its sharpness compares
NO_WORD = 8  # class_before / class_after of a span at the essay's start / end (0-7: O, classes)

FEATURE_NAMES: tuple[str, ...] = (
    "class",
    "length",
    "log_length",
    "rel_start",
    "rel_end",
    "p_mean",
    "p_min",
    "p_max",
    *(f"p_above_{t}" for t in LEVELS),
    "o_mean",
    *(f"mean_{c}" for c in CLASSES),
    "margin_other",
    "b_first",
    "start_first",
    "start_after",
    "b_after",
    "start_inside_max",
    "start_inside_mean",
    "naive_starts_inside",
    "sharp_start",
    "sharp_end",
    "class_before",
    "class_after",
    "p_before",
    "p_after",
    "sentence_start",
    "sentence_end",
    "sentences",
    "paragraph_start",
    "paragraph_end",
    "paragraphs_inside",
    "rel_paragraph",
    "essay_log_words",
    "essay_naive_class",
    "essay_naive_all",
    "essay_p_mean",
    "essay_o_mean",
    "is_naive",
    "is_viterbi",
)
# LightGBM treats these as categories, not as ordered numbers.
CATEGORICAL: tuple[str, ...] = ("class", "class_before", "class_after")
N_FEATURES = len(FEATURE_NAMES)
CLASS_COLUMN = FEATURE_NAMES.index("class")


@dataclass(frozen=True, eq=False)
class Layout:
    """Per word: does it open a paragraph, does it open a sentence."""

    paragraph: BoolArray
    sentence: BoolArray


def essay_layout(essay: Essay) -> Layout:
    """The essay's paragraph and sentence starts (as the NER stage sees them)."""
    from discourse_rl.ner.tokens import word_layout  # torch comes with it: import only when needed

    para, sent = word_layout(essay)
    return Layout(para, sent)


def _sparse_table(x: npt.NDArray[np.float64], op: np.ufunc) -> list[npt.NDArray[np.float64]]:
    """Level k holds op over x[i : i + 2**k] for every i that fits (range queries in O(1))."""
    table = [x]
    width = 1
    while 2 * width <= x.shape[0]:
        prev = table[-1]
        table.append(op(prev[:-width], prev[width:]))
        width *= 2
    return table


def _range(
    table: list[npt.NDArray[np.float64]],
    op: np.ufunc,
    s: npt.NDArray[np.int64],
    e: npt.NDArray[np.int64],
    c: npt.NDArray[np.int64],
) -> npt.NDArray[np.float64]:
    length = e - s
    k = np.floor(np.log2(length)).astype(np.int64)
    out = np.empty(s.size)
    for level in np.unique(k):
        m = k == level
        t = table[level]
        out[m] = op(t[s[m], c[m]], t[e[m] - (1 << level), c[m]])
    return out


def candidate_features(
    probs: npt.NDArray[np.floating], cand: EssayCandidates, layout: Layout
) -> FloatArray:
    """(n_candidates, N_FEATURES) float32 in FEATURE_NAMES order."""
    n = probs.shape[0]
    p = probs.astype(np.float64)
    pc = p[:, 1::2] + p[:, 2::2]  # class probability per word, B- and I- together
    p8 = np.concatenate([p[:, :1], pc], axis=1)  # O and the 7 classes
    start_p = p[:, 1::2].sum(1)
    word_cls = p8.argmax(1)

    def cum(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(x, axis=0)])

    c, s, e = cand.cls, cand.start, cand.end
    length = (e - s).astype(np.float64)
    idx = np.arange(c.size)

    def span_mean(
        cs: npt.NDArray[np.float64], lo: npt.NDArray[np.int64], hi: npt.NDArray[np.int64]
    ) -> npt.NDArray[np.float64]:
        """Mean over words [lo, hi) from prefix sums `cs` (0 for an empty range)."""
        return np.asarray(
            (cs[hi] - cs[lo]) / np.maximum(hi - lo, 1).reshape(-1, *([1] * (cs.ndim - 1))),
            dtype=np.float64,
        )

    c8 = cum(p8)
    mean8 = span_mean(c8, s, e)
    p_mean = mean8[idx, c + 1]
    others = mean8[:, 1:].copy()
    others[idx, c] = -np.inf
    margin = p_mean - np.maximum(others.max(1), mean8[:, 0])
    above = np.stack([span_mean(cum((pc > t).astype(np.float64)), s, e)[idx, c] for t in LEVELS], 1)
    p_min = _range(_sparse_table(pc, np.minimum), np.minimum, s, e, c)
    p_max = _range(_sparse_table(pc, np.maximum), np.maximum, s, e, c)

    b = p[:, 1::2]
    at_end = e < n
    e_c = np.minimum(e, n - 1)
    start_after = np.where(at_end, start_p[e_c], 0.0)
    b_after = np.where(at_end, b[e_c, c], 0.0)
    inside_max = _range(
        _sparse_table(np.repeat(start_p[:, None], 1, 1), np.maximum),
        np.maximum,
        np.minimum(s + 1, e - 1),
        e,
        np.zeros_like(c),
    )
    inside_max = np.where(length > 1, inside_max, 0.0)
    cs_start = cum(start_p)
    inside_mean = np.where(length > 1, span_mean(cs_start, np.minimum(s + 1, e), e), 0.0)
    naive_start = np.zeros(n)
    naive_start[cand.start[cand.naive]] = 1.0
    naive_inside = span_mean(cum(naive_start), np.minimum(s + 1, e), e) * np.maximum(length - 1, 0)

    cpc = cum(pc)
    head = span_mean(cpc, s, np.minimum(s + EDGE, e))[idx, c]
    before = np.where(s > 0, span_mean(cpc, np.maximum(s - EDGE, 0), s)[idx, c], 0.0)
    tail = span_mean(cpc, np.maximum(e - EDGE, s), e)[idx, c]
    after = np.where(at_end, span_mean(cpc, e, np.minimum(e + EDGE, n))[idx, c], 0.0)
    s_c = np.maximum(s - 1, 0)
    # Category 8: no word there (LightGBM reads a negative category as missing, with a warning).
    class_before = np.where(s > 0, word_cls[s_c], NO_WORD)
    class_after = np.where(at_end, word_cls[e_c], NO_WORD)
    p_before = np.where(s > 0, pc[s_c, c], 0.0)
    p_after = np.where(at_end, pc[e_c, c], 0.0)

    sent = layout.sentence.astype(np.float64)
    para = layout.paragraph.astype(np.float64)
    sent_end = np.where(at_end, sent[e_c], 1.0)
    para_end = np.where(at_end, para[e_c], 1.0)
    sentences = span_mean(cum(sent), s, e) * length
    para_inside = span_mean(cum(para), np.minimum(s + 1, e), e) * np.maximum(length - 1, 0)
    p_idx = np.cumsum(para) - 1
    rel_para = p_idx[s] / max(float(p_idx[-1]), 1.0)

    naive_counts = np.bincount(cand.cls[cand.naive], minlength=N_CLASSES)
    essay_pc = pc.mean(0)
    cols = [
        c.astype(np.float64),
        length,
        np.log1p(length),
        s / n,
        e / n,
        p_mean,
        p_min,
        p_max,
        *above.T,
        mean8[:, 0],
        *mean8[:, 1:].T,
        margin,
        b[s, c],
        start_p[s],
        start_after,
        b_after,
        inside_max,
        inside_mean,
        naive_inside,
        head - before,
        tail - after,
        class_before.astype(np.float64),
        class_after.astype(np.float64),
        p_before,
        p_after,
        sent[s],
        sent_end,
        sentences,
        para[s],
        para_end,
        para_inside,
        rel_para,
        np.full(c.size, np.log1p(n)),
        naive_counts[c].astype(np.float64),
        np.full(c.size, float(naive_counts.sum())),
        essay_pc[c],
        np.full(c.size, float(p[:, 0].mean())),
        cand.naive.astype(np.float64),
        cand.viterbi.astype(np.float64),
    ]
    out = np.stack(cols, axis=1).astype(np.float32)
    assert out.shape[1] == N_FEATURES
    return out
