"""What the agent sees of each segment: its base features (class probabilities, length,
position) and the rich ones (`rich_features`: edges, paragraphs, sharpness)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from discourse_rl.core.arrays import BoolArray, FloatArray, IntArray
from discourse_rl.core.data import (
    NUM_LABELS,
)
from discourse_rl.decoders.segments.types import (
    RICH_EDGE,
)


def word_class(p: npt.NDArray[np.floating]) -> IntArray:
    """Most probable of O (0) and the 7 classes (1..7), B- and I- summed."""
    cls_p = np.concatenate([p[:, :1], p[:, 1::2] + p[:, 2::2]], axis=1)
    return np.asarray(cls_p.argmax(1), dtype=np.int64)


def segment_features(
    p: npt.NDArray[np.floating], word_start: IntArray, word_end: IntArray, window: int = 3
) -> FloatArray:
    """Per segment: mean of the 15 word probabilities, mean B- per class over its first `window`
    words, the start probability of its first word, log length, share of the essay, relative
    start and end."""
    n = p.shape[0]
    p64 = p.astype(np.float64)
    csum = np.concatenate([np.zeros((1, NUM_LABELS)), np.cumsum(p64, axis=0)])
    length = (word_end - word_start).astype(np.float64)
    mean_all = (csum[word_end] - csum[word_start]) / length[:, None]
    head_end = np.minimum(word_start + window, word_end)
    head = (csum[head_end] - csum[word_start])[:, 1::2] / (head_end - word_start)[:, None]
    first_start = p64[word_start, 1::2].sum(1)
    extra = np.stack(
        [first_start, np.log1p(length) / 5.0, length / n, word_start / n, word_end / n], axis=1
    )
    return np.concatenate([mean_all, head, extra], axis=1).astype(np.float32)


def rich_segment_features(
    p: npt.NDArray[np.floating],
    word_start: IntArray,
    word_end: IntArray,
    sentence: BoolArray,
    paragraph: BoolArray,
) -> FloatArray:
    """(n_segments, N_RICH_FEATURES): what the boosting model sees of a span, per segment.

    Per class (B- and I- summed): the minimum and maximum word probability over the segment and
    the share of its words above 0.5; the O probability's minimum and maximum; boundary
    sharpness (start probability at the first word minus the mean over the few words before it;
    L1 change of the class distribution across the start; start probability of the next
    segment's first word); alignment (starts a paragraph, ends where a sentence or a paragraph
    starts, paragraph breaks inside); position (relative paragraph, first or last paragraph,
    segment index over the essay's segments)."""
    n = p.shape[0]
    p64 = p.astype(np.float64)
    p8 = np.concatenate([p64[:, :1], p64[:, 1::2] + p64[:, 2::2]], axis=1)  # O + 7 classes
    lo = np.minimum.reduceat(p8, word_start, axis=0)
    hi = np.maximum.reduceat(p8, word_start, axis=0)
    above = np.add.reduceat((p8[:, 1:] > 0.5).astype(np.float64), word_start, axis=0)
    length = (word_end - word_start).astype(np.float64)[:, None]
    start_p = p64[:, 1::2].sum(1)
    csum = np.concatenate([[0.0], np.cumsum(start_p)])
    before_lo = np.maximum(word_start - RICH_EDGE, 0)
    before = np.where(
        word_start > 0,
        (csum[word_start] - csum[before_lo]) / np.maximum(word_start - before_lo, 1),
        0.0,
    )
    c8 = np.concatenate([np.zeros((1, 8)), np.cumsum(p8, 0)])
    head_hi = np.minimum(word_start + RICH_EDGE, word_end)
    head = (c8[head_hi] - c8[word_start]) / (head_hi - word_start)[:, None]
    prev = np.where(word_start[:, None] > 0, (c8[word_start] - c8[before_lo]), 0.0)
    prev = prev / np.maximum(word_start - before_lo, 1)[:, None]
    change = np.where(word_start > 0, np.abs(head - prev).sum(1), 0.0)
    at_end = word_end < n
    nxt = np.minimum(word_end, n - 1)
    next_start = np.where(at_end, start_p[nxt], 0.0)
    sent_end = np.where(at_end, sentence[nxt], True)
    para_end = np.where(at_end, paragraph[nxt], True)
    pcum = np.concatenate([[0], np.cumsum(paragraph)])
    inside = pcum[word_end] - pcum[np.minimum(word_start + 1, word_end)]
    p_idx = pcum[word_start + 1] - 1
    n_para = max(int(pcum[-1]), 1)
    k = word_start.size
    extra = np.stack(
        [
            start_p[word_start] - before,
            change,
            next_start,
            paragraph[word_start],
            sent_end,
            para_end,
            inside,
            p_idx / max(n_para - 1, 1),
            p_idx == 0,
            p_idx == n_para - 1,
            np.arange(k) / max(k - 1, 1),
        ],
        axis=1,
    ).astype(np.float64)
    return np.concatenate([lo, hi, above / length, extra], axis=1).astype(np.float32)
