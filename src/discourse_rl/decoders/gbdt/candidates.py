"""Candidate spans for the boosting stage, and which of them hit a true span.

The boosting model can only pick among candidates, so their recall (the share of true spans that
at least one candidate hits) bounds its score. Candidates come from several readings of the same
word probabilities, so that where one reading misses an element another may catch it:

* the naive spans (argmax) and the constrained decoder's spans (Viterbi), with their start and
  end moved by up to `shift` words (the tagger's boundaries are often a word off);
* every stretch from a likely start to one of the next few boundaries (likely starts, the naive
  and constrained spans' starts and ends), labelled with each class whose mean probability over
  it is high enough: this recovers elements that argmax merged into a neighbour or split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from discourse_rl.core.arrays import IntArray, Spans
from discourse_rl.core.data import CLASSES, labels_to_spans
from discourse_rl.core.metric import _hits

N_CLASSES = len(CLASSES)


@dataclass(frozen=True)
class CandidateSettings:
    """How many candidates to make (a view of `GbdtConfig`'s candidate fields)."""

    start_threshold: float
    max_ends: int
    class_min_prob: float
    max_classes: int
    shift: int


@dataclass(frozen=True, eq=False)
class EssayCandidates:
    """One essay's distinct candidates, sorted by (start, end, class)."""

    cls: IntArray
    start: IntArray
    end: IntArray
    naive: npt.NDArray[np.bool_]
    """Is the candidate exactly a naive span."""
    viterbi: npt.NDArray[np.bool_]
    """Is the candidate exactly a constrained decoder span."""

    @property
    def size(self) -> int:
        return int(self.cls.size)


def _key(cls: IntArray, start: IntArray, end: IntArray, n: int) -> IntArray:
    # Sorting by this key orders by start, then end, then class.
    return (start * (n + 1) + end) * N_CLASSES + cls


def essay_candidates(
    probs: npt.NDArray[np.floating],
    viterbi_spans: Spans,
    cfg: CandidateSettings,
    breaks: npt.NDArray[np.integer] | None = None,
) -> EssayCandidates:
    """Candidates of one essay from its word probabilities and its constrained decoder spans;
    `breaks` (paragraph starts) are further likely starts and boundaries."""
    n = probs.shape[0]
    naive = labels_to_spans(np.argmax(probs, axis=1))
    start_p = probs[:, 1::2].sum(1)
    cls_cum = np.vstack([np.zeros((1, N_CLASSES)), np.cumsum(probs[:, 1::2] + probs[:, 2::2], 0)])

    parts: list[Spans] = [naive, viterbi_spans]
    for spans in (naive, viterbi_spans):
        c, s, e = spans
        for ds in range(-cfg.shift, cfg.shift + 1):
            for de in range(-cfg.shift, cfg.shift + 1):
                if ds or de:
                    parts.append((c, np.clip(s + ds, 0, n), np.clip(e + de, 0, n)))

    # Stretches between boundaries, each with the classes that dominate it.
    starts = np.union1d(np.flatnonzero(start_p > cfg.start_threshold), [0])
    starts = np.union1d(starts, np.concatenate([naive[1], viterbi_spans[1]]))
    if breaks is not None:
        starts = np.union1d(starts, np.asarray(breaks, dtype=np.int64))
    bounds = np.union1d(starts, np.concatenate([naive[2], viterbi_spans[2], [n]]))
    bounds = bounds[bounds > 0]
    first = np.searchsorted(bounds, starts, side="right")
    for k in range(cfg.max_ends):
        ok = first + k < bounds.size
        s = starts[ok]
        e = bounds[first[ok] + k]
        mean = (cls_cum[e] - cls_cum[s]) / (e - s)[:, None]
        top = np.argsort(-mean, axis=1, kind="stable")[:, : cfg.max_classes]
        for j in range(top.shape[1]):
            c = top[:, j]
            keep = mean[np.arange(s.size), c] >= cfg.class_min_prob
            parts.append((c[keep].astype(np.int64), s[keep], e[keep]))

    cls = np.concatenate([p[0] for p in parts]).astype(np.int64)
    start = np.concatenate([p[1] for p in parts]).astype(np.int64)
    end = np.concatenate([p[2] for p in parts]).astype(np.int64)
    valid = end > start
    key = np.unique(_key(cls[valid], start[valid], end[valid], n))
    cls, rest = key % N_CLASSES, key // N_CLASSES
    start, end = rest // (n + 1), rest % (n + 1)
    return EssayCandidates(
        cls,
        start,
        end,
        np.isin(key, _key(*naive, n)),
        np.isin(key, _key(*viterbi_spans, n)),
    )


def hit_matrix(pred: Spans, gold: Spans) -> npt.NDArray[np.bool_]:
    """(n_pred, n_gold): does the prediction hit the true span (same class, the metric's overlap
    of at least half of each)."""
    pc, ps, pe = pred
    gc, gs, ge = gold
    inter = np.minimum.outer(pe, ge) - np.maximum.outer(ps, gs)
    longer = np.maximum.outer(pe - ps, ge - gs)
    return _hits(inter, longer) & (inter > 0) & np.equal.outer(pc, gc)


def recall_per_class(
    found: Sequence[npt.NDArray[np.bool_]], gold_cls: Sequence[IntArray]
) -> dict[str, float]:
    """Per class: the share of true spans that some candidate hits (NaN for an absent class).

    `found[i]` says, per true span of essay i, whether a candidate hits it."""
    hit = np.concatenate(found) if found else np.zeros(0, np.bool_)
    cls = np.concatenate(gold_cls) if gold_cls else np.zeros(0, np.int64)
    n = np.bincount(cls, minlength=N_CLASSES)
    k = np.bincount(cls[hit], minlength=N_CLASSES)
    return {c: float(k[i] / n[i]) if n[i] else float("nan") for i, c in enumerate(CLASSES)}
