"""More per-candidate features for gbdt (`GbdtConfig.rich_features`), appended to the base ones.

The strongest span model of the Kaggle competition read about 170 features per candidate; the
base set (`features.FEATURE_NAMES`) has 48. These add, for the candidate's class: statistics of
its B, I and B+I probabilities over the span taken apart (means, extremes, quantiles, where the
extremes sit), evidence at each edge (continuation of the class across it, the argmax class on
either side), instability along the span, the essay's mean probability of every class, the
span's place among paragraphs and sentences, and the candidates that compete for the same words
(the best mean probability of another class and of another span of the same class overlapping
it). Quantiles and the positions of extremes are computed once per distinct (start, end) for all
classes, then read for each candidate's class.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from discourse_rl.core.arrays import FloatArray
from discourse_rl.core.data import CLASSES
from discourse_rl.decoders.gbdt.candidates import EssayCandidates
from discourse_rl.decoders.gbdt.features import Layout, _range, _sparse_table

N_CLASSES = len(CLASSES)
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

PLUS_NAMES: tuple[str, ...] = (
    "b_mean",
    "b_max",
    "b_argmax_rel",
    "b_inside_over_first",
    "i_mean",
    "i_min",
    "i_max",
    *(f"p_q{int(q * 100)}" for q in QUANTILES),
    "p_argmax_rel",
    "p_argmin_rel",
    "p_std",
    "p_step_mean",
    "class_changes",
    "own_class_share",
    "i_first",
    "i_before",
    "i_after",
    "b_last",
    "o_before",
    "o_after",
    "argmax_before_is_class",
    "argmax_first_is_class",
    "argmax_last_is_class",
    "argmax_after_is_class",
    *(f"essay_mean_{c}" for c in CLASSES),
    "essay_b_max_class",
    "paragraph_index",
    "paragraphs",
    "paragraph_end_index",
    "first_paragraph",
    "last_paragraph",
    "whole_paragraph",
    "share_of_paragraph",
    "sentence_in_paragraph",
    "rel_sentence",
    "overlap_best_other",
    "overlap_best_same",
    "overlap_rank_same",
    "overlap_count",
)
N_PLUS = len(PLUS_NAMES)


def _cum(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    return np.concatenate([np.zeros((1, *x.shape[1:])), np.cumsum(x, axis=0)])


def _span_stats(
    pc: npt.NDArray[np.float64], s: npt.NDArray[np.int64], e: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per distinct (start, end) of the candidates: quantiles (n, Q, 7) and the relative
    positions of the max and min (n, 7), all classes at once; `inverse` maps candidates."""
    nq = len(QUANTILES)
    qs = np.empty((s.size, nq, N_CLASSES))
    amax = np.empty((s.size, N_CLASSES))
    amin = np.empty((s.size, N_CLASSES))
    for k in range(s.size):
        lo, hi = int(s[k]), int(e[k])
        seg = pc[lo:hi]
        length = hi - lo
        srt = np.sort(seg, axis=0)
        qs[k] = srt[[min(int(q * length), length - 1) for q in QUANTILES]]
        denom = max(length - 1, 1)
        amax[k] = seg.argmax(0) / denom
        amin[k] = seg.argmin(0) / denom
    return qs, amax, amin


def plus_features(
    probs: npt.NDArray[np.floating], cand: EssayCandidates, layout: Layout
) -> FloatArray:
    """(n_candidates, N_PLUS) float32 in PLUS_NAMES order."""
    n = probs.shape[0]
    p = probs.astype(np.float64)
    b, i = p[:, 1::2], p[:, 2::2]
    pc = b + i
    o = p[:, 0]
    word_cls = np.concatenate([o[:, None], pc], axis=1).argmax(1) - 1  # -1: O
    c, s, e = cand.cls, cand.start, cand.end
    m = c.size
    if m == 0:
        return np.zeros((0, N_PLUS), np.float32)
    idx = np.arange(m)
    length = (e - s).astype(np.float64)
    last = e - 1
    at_end = e < n
    e_c = np.minimum(e, n - 1)
    s_b = np.maximum(s - 1, 0)

    def mean_of(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        cx = _cum(x)
        return np.asarray((cx[e] - cx[s]) / length.reshape(-1, *([1] * (x.ndim - 1))))

    b_mean = mean_of(b)[idx, c]
    i_mean = mean_of(i)[idx, c]
    b_max = _range(_sparse_table(b, np.maximum), np.maximum, s, e, c)
    i_min = _range(_sparse_table(i, np.minimum), np.minimum, s, e, c)
    i_max = _range(_sparse_table(i, np.maximum), np.maximum, s, e, c)
    inner_lo = np.minimum(s + 1, e - 1)
    b_inside = np.where(
        length > 1, _range(_sparse_table(b, np.maximum), np.maximum, inner_lo, e, c), 0
    )
    b_inside_over_first = b_inside - b[s, c]

    key = s * (n + 1) + e
    uniq, first_of, inverse = np.unique(key, return_index=True, return_inverse=True)
    qs, amax, amin = _span_stats(pc, s[first_of], e[first_of])
    quant = qs[inverse, :, c]  # (m, Q)
    pmax_rel = amax[inverse, c]
    pmin_rel = amin[inverse, c]
    b_arg = np.empty(m)
    for k in range(m):
        seg = b[int(s[k]) : int(e[k]), int(c[k])]
        b_arg[k] = seg.argmax() / max(seg.size - 1, 1)

    mean_pc = mean_of(pc)[idx, c]
    mean_sq = mean_of(pc**2)[idx, c]
    p_std = np.sqrt(np.maximum(mean_sq - mean_pc**2, 0.0))
    step = np.vstack([np.zeros((1, N_CLASSES)), np.abs(np.diff(pc, axis=0))])  # step into word
    cstep = _cum(step)
    p_step = np.where(
        length > 1, (cstep[e, c] - cstep[np.minimum(s + 1, e), c]) / np.maximum(length - 1, 1), 0
    )
    change = np.concatenate([[0.0], (word_cls[1:] != word_cls[:-1]).astype(np.float64)])
    cchange = _cum(change)
    class_changes = np.where(length > 1, cchange[e] - cchange[np.minimum(s + 1, e)], 0) / length
    own = _cum((word_cls[:, None] == np.arange(N_CLASSES)[None, :]).astype(np.float64))
    own_share = (own[e, c] - own[s, c]) / length

    i_first = i[s, c]
    i_before = np.where(s > 0, i[s_b, c], 0.0)
    i_after = np.where(at_end, i[e_c, c], 0.0)
    b_last = np.where(length > 1, b[last, c], 0.0)
    o_before = np.where(s > 0, o[s_b], 1.0)
    o_after = np.where(at_end, o[e_c], 1.0)
    arg_before = np.where(s > 0, word_cls[s_b] == c, False)
    arg_first = word_cls[s] == c
    arg_last = word_cls[last] == c
    arg_after = np.where(at_end, word_cls[e_c] == c, False)

    essay_mean = pc.mean(0)
    essay_b_max = b.max(0)[c]

    para = layout.paragraph.astype(np.bool_)
    sent = layout.sentence.astype(np.bool_) | para
    p_idx = np.cumsum(para) - 1
    n_para = int(p_idx[-1]) + 1
    para_starts = np.flatnonzero(para)
    para_len = np.diff(np.append(para_starts, n))
    ps_idx = p_idx[s]
    pe_idx = p_idx[last]
    para_start_of = para_starts[ps_idx]
    para_end_of = para_start_of + para_len[ps_idx]
    whole = (s == para_start_of) & (e == para_end_of)
    share_para = length / para_len[ps_idx]
    s_idx = np.cumsum(sent) - 1
    sent_in_para = s_idx[s] - s_idx[para_start_of]
    rel_sent = s_idx[s] / max(int(s_idx[-1]), 1)

    # Competing candidates over the same words (overlap of at least half of this candidate).
    inter = np.minimum.outer(e, e) - np.maximum.outer(s, s)
    comp = (inter * 2 >= length[:, None]) & (inter > 0)
    np.fill_diagonal(comp, False)
    same = comp & np.equal.outer(c, c)
    other = comp & ~same
    score = mean_pc
    best_other = np.where(other, score[None, :], 0.0).max(1) if m else np.zeros(0)
    best_same = np.where(same, score[None, :], 0.0).max(1) if m else np.zeros(0)
    rank_same = (same & (score[None, :] > score[:, None])).sum(1)
    count = comp.sum(1)

    cols = [
        b_mean,
        b_max,
        b_arg,
        b_inside_over_first,
        i_mean,
        i_min,
        i_max,
        *quant.T,
        pmax_rel,
        pmin_rel,
        p_std,
        p_step,
        class_changes,
        own_share,
        i_first,
        i_before,
        i_after,
        b_last,
        o_before,
        o_after,
        arg_before,
        arg_first,
        arg_last,
        arg_after,
        *(np.full(m, v) for v in essay_mean),
        essay_b_max,
        ps_idx,
        np.full(m, float(n_para)),
        pe_idx,
        ps_idx == 0,
        pe_idx == n_para - 1,
        whole,
        share_para,
        sent_in_para,
        rel_sent,
        best_other,
        best_same,
        rank_same,
        count,
    ]
    out = np.stack([np.asarray(x, dtype=np.float64) for x in cols], axis=1).astype(np.float32)
    assert out.shape[1] == N_PLUS, (out.shape, N_PLUS)
    del uniq
    return out
