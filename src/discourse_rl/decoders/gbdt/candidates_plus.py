"""More candidate spans for gbdt, so that its ceiling (candidate recall) reaches every class.

The base candidates (`candidates.essay_candidates`) follow the tagger's likely starts and the
naive and constrained spans. Where the tagger misses a boundary altogether (a Rebuttal that
follows a Counterclaim in the same sentence run, an Evidence that argmax merged with its Claim),
no reading of its starts finds the element. The generators here add readings that do not depend
on the tagger's starts, each behind its own setting (off by default, so a config that does not
name them builds exactly the base candidates):

* `sentence_ends`: stretches from every sentence start (and every likely start) to one of the
  next `sentence_ends` sentence or paragraph boundaries; `clause_ends` does the same from every
  clause start (the word after , ; :) to the next clause or sentence boundaries;
* `class_start_threshold`: per class, every word whose start probability of that class exceeds
  this (lower than the base's threshold on the sum) opens stretches labelled with that class;
* `subspan_shares`: inside each naive and constrained span, the window of that share of its
  length with the highest mean probability of its class ("best 65% sub-span"), plus the prefix
  and the suffix of that share;
* `sentence_splits`: each naive and constrained span cut at each sentence start inside it (the
  part before and the part after, each labelled with its two most probable classes);
* `merge_naive`: runs of 2..`merge_naive` consecutive naive spans with gaps of at most
  `merge_gap` words, merged, labelled with each class of the run's parts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from discourse_rl.core.arrays import IntArray, Spans
from discourse_rl.core.data import CLASSES, Essay
from discourse_rl.decoders.gbdt.candidates import EssayCandidates, _key

if TYPE_CHECKING:
    from discourse_rl.decoders.gbdt.model import GbdtConfig

N_CLASSES = len(CLASSES)
CLAUSE_END = (",", ";", ":")


def plus_active(cfg: GbdtConfig) -> bool:
    """Does `cfg` turn on any of the generators here (0 / empty: off)."""
    return bool(
        cfg.sentence_ends
        or cfg.clause_ends
        or cfg.class_start_threshold > 0
        or cfg.subspan_shares
        or cfg.sentence_splits
        or cfg.merge_naive >= 2
    )


def clause_starts(essay: Essay) -> npt.NDArray[np.bool_]:
    """Per word: does it follow a word that ends with a comma, semicolon or colon."""
    out = np.zeros(essay.n_words, np.bool_)
    if essay.n_words > 1:
        out[1:] = [w.endswith(CLAUSE_END) for w in essay.words[:-1]]
    return out


def _stretches(
    starts: IntArray,
    bounds: IntArray,
    max_ends: int,
    cls_cum: npt.NDArray[np.float64],
    min_prob: float,
    max_classes: int,
    only_class: int | None = None,
) -> list[Spans]:
    """From each start to each of the next `max_ends` bounds after it, labelled with the classes
    (at most `max_classes`, or `only_class`) whose mean probability over it reaches `min_prob`."""
    out: list[Spans] = []
    bounds = np.unique(bounds[bounds > 0])
    if starts.size == 0 or bounds.size == 0:
        return out
    first = np.searchsorted(bounds, starts, side="right")
    for k in range(max_ends):
        ok = first + k < bounds.size
        s = starts[ok]
        e = bounds[first[ok] + k]
        if s.size == 0:
            break
        mean = (cls_cum[e] - cls_cum[s]) / (e - s)[:, None]
        if only_class is not None:
            keep = mean[:, only_class] >= min_prob
            out.append((np.full(int(keep.sum()), only_class, np.int64), s[keep], e[keep]))
            continue
        top = np.argsort(-mean, axis=1, kind="stable")[:, :max_classes]
        for j in range(top.shape[1]):
            c = top[:, j]
            keep = mean[np.arange(s.size), c] >= min_prob
            out.append((c[keep].astype(np.int64), s[keep], e[keep]))
    return out


def _best_windows(
    spans: Spans, share: float, cls_cum: npt.NDArray[np.float64], n: int
) -> list[Spans]:
    """Per span of at least 4 words: the window of `share` of its length with the highest mean
    probability of its class, its prefix and its suffix of that length."""
    c, s, e = spans
    length = e - s
    w = np.maximum(np.round(share * length).astype(np.int64), 1)
    ok = (length >= 4) & (w < length)
    c, s, e, w = c[ok], s[ok], e[ok], w[ok]
    best_s = s.copy()
    for k in range(c.size):
        lo = np.arange(int(s[k]), int(e[k] - w[k]) + 1)
        sums = cls_cum[lo + w[k], c[k]] - cls_cum[lo, c[k]]
        best_s[k] = lo[int(np.argmax(sums))]
    return [(c, best_s, best_s + w), (c, s, s + w), (c, e - w, e)]


def _sentence_splits(
    spans: Spans,
    sent: npt.NDArray[np.bool_],
    cls_cum: npt.NDArray[np.float64],
    rare_min_prob: float = 0.0,
) -> list[Spans]:
    """Each span cut at every sentence start inside it: the parts before and after the cut,
    each labelled with its own two most probable classes (and with every class whose mean
    reaches `rare_min_prob`, when that is above 0)."""
    c, s, e = spans
    pos = np.flatnonzero(sent)
    ps, pe, pk = [], [], []
    for k in range(c.size):
        inner = pos[(pos > s[k]) & (pos < e[k])]
        for cut in inner.tolist():
            ps += [int(s[k]), cut]
            pe += [cut, int(e[k])]
            pk += [k, k]
    if not ps:
        return []
    st, en = np.array(ps, np.int64), np.array(pe, np.int64)
    mean = (cls_cum[en] - cls_cum[st]) / (en - st)[:, None]
    top = np.argsort(-mean, axis=1, kind="stable")[:, :2]
    out = [(top[:, j].astype(np.int64), st, en) for j in range(2)]
    if rare_min_prob > 0:
        rows, cols = np.nonzero(mean >= rare_min_prob)
        out.append((cols.astype(np.int64), st[rows], en[rows]))
    return out


def _merges(naive: Spans, max_run: int, gap: int) -> list[Spans]:
    """Runs of 2..max_run consecutive naive spans, each gap at most `gap` words, merged; one
    candidate per class among the run's parts."""
    c, s, e = naive
    order = np.argsort(s, kind="stable")
    c, s, e = c[order], s[order], e[order]
    out: list[Spans] = []
    for run in range(2, max_run + 1):
        m = c.size - run + 1
        if m <= 0:
            break
        ok = np.ones(m, np.bool_)
        for j in range(run - 1):
            ok &= s[j + 1 : j + 1 + m] - e[j : j + m] <= gap
        idx = np.flatnonzero(ok)
        for j in range(run):
            out.append((c[idx + j], s[idx], e[idx + run - 1]))
    return out


def extend_candidates(
    base: EssayCandidates,
    probs: npt.NDArray[np.floating],
    naive: Spans,
    viterbi: Spans,
    likely_starts: IntArray,
    sentence: npt.NDArray[np.bool_],
    paragraph: npt.NDArray[np.bool_],
    clause: npt.NDArray[np.bool_],
    cfg: GbdtConfig,
) -> EssayCandidates:
    """`base` and the candidates of the generators `cfg` turns on (distinct, sorted as base)."""
    n = probs.shape[0]
    if not plus_active(cfg) or n == 0:
        return base
    p = probs.astype(np.float64)
    cls_cum = np.vstack([np.zeros((1, N_CLASSES)), np.cumsum(p[:, 1::2] + p[:, 2::2], 0)])
    sent_pos = np.flatnonzero(sentence | paragraph)
    para_pos = np.flatnonzero(paragraph)
    ends = np.concatenate([naive[2], viterbi[2], [n]]).astype(np.int64)
    parts: list[Spans] = [(base.cls, base.start, base.end)]
    mp, mc = cfg.class_min_prob, cfg.max_classes
    if cfg.sentence_ends:
        starts = np.union1d(sent_pos, likely_starts)
        bounds = np.concatenate([sent_pos, para_pos, ends])
        parts += _stretches(starts, bounds, cfg.sentence_ends, cls_cum, mp, mc)
        if cfg.rare_min_prob > 0:
            for c in range(N_CLASSES):
                parts += _stretches(
                    starts, bounds, cfg.sentence_ends, cls_cum, cfg.rare_min_prob, 1, c
                )
    if cfg.clause_ends:
        cl = np.flatnonzero(clause)
        starts = np.union1d(cl, sent_pos)
        bounds = np.concatenate([cl, sent_pos, ends])
        parts += _stretches(starts, bounds, cfg.clause_ends, cls_cum, mp, min(mc, 2))
    if cfg.class_start_threshold > 0:
        bounds = np.concatenate([likely_starts, sent_pos, ends])
        reach = max(cfg.sentence_ends, 4)
        b = p[:, 1::2]
        for c in range(N_CLASSES):
            st = np.flatnonzero(b[:, c] > cfg.class_start_threshold)
            parts += _stretches(st, bounds, reach, cls_cum, mp, 1, only_class=c)
    for share in cfg.subspan_shares:
        for spans in (naive, viterbi):
            parts += _best_windows(spans, share, cls_cum, n)
    if cfg.sentence_splits:
        for spans in (naive, viterbi):
            parts += _sentence_splits(spans, sentence | paragraph, cls_cum, cfg.rare_min_prob)
    if cfg.merge_naive >= 2:
        parts += _merges(naive, cfg.merge_naive, cfg.merge_gap)

    cls = np.concatenate([x[0] for x in parts]).astype(np.int64)
    start = np.clip(np.concatenate([x[1] for x in parts]).astype(np.int64), 0, n)
    end = np.clip(np.concatenate([x[2] for x in parts]).astype(np.int64), 0, n)
    valid = end > start
    key = np.unique(_key(cls[valid], start[valid], end[valid], n))
    cls, rest = key % N_CLASSES, key // N_CLASSES
    start, end = rest // (n + 1), rest % (n + 1)
    return EssayCandidates(
        cls, start, end, np.isin(key, _key(*naive, n)), np.isin(key, _key(*viterbi, n))
    )
