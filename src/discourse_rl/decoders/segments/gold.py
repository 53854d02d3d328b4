"""The true labels in segment terms: gold actions, the masks of allowed actions, actions back to
spans, the segment oracle and the segmentation's trade-off table."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from discourse_rl.core import metric
from discourse_rl.core.arrays import IntArray, Probs
from discourse_rl.core.data import (
    Corpus,
    spans_to_frame,
)
from discourse_rl.decoders.segments.cut import make_segments
from discourse_rl.decoders.segments.types import (
    N_ACTIONS,
    EssaySegments,
    Punctuation,
    SegmentConfig,
)


def gold_spans(corpus: Corpus, essay_id: str) -> tuple[IntArray, IntArray, IntArray]:
    el = corpus.essay_elements(essay_id)
    return (
        el["class_idx"].to_numpy(np.int64),
        el["word_start"].to_numpy(np.int64),
        el["word_end"].to_numpy(np.int64),
    )


def essay_gold_actions(seg: EssaySegments, corpus: Corpus) -> IntArray:
    """Each segment takes the element covering most of its words if that covers over half of
    them; it begins that element unless the segment before it took the same one."""
    g_cls, g_start, g_end = gold_spans(corpus, seg.essay_id)
    actions = np.zeros(seg.n_segments, dtype=np.int64)
    if g_cls.size == 0:
        return actions
    inter = np.minimum(seg.word_end[:, None], g_end[None, :]) - np.maximum(
        seg.word_start[:, None], g_start[None, :]
    )
    inter = np.maximum(inter, 0)
    best = inter.argmax(1)
    owned = 2 * inter[np.arange(seg.n_segments), best] > seg.word_end - seg.word_start
    owner = np.where(owned, best, -1)
    prev = np.concatenate(([-1], owner[:-1]))
    cls = g_cls[np.maximum(owner, 0)]
    actions[owned] = np.where(owner == prev, 2 + 2 * cls, 1 + 2 * cls)[owned]
    return actions


def segment_gold_actions(segs: Sequence[EssaySegments], corpus: Corpus) -> list[EssaySegments]:
    """The same segments with `gold_action` filled from the corpus's true elements."""
    return [s.with_gold(essay_gold_actions(s, corpus)) for s in segs]


def allowed_actions(prev_action: int) -> npt.NDArray[np.bool_]:
    """Action mask after `prev_action` (-1 at the first segment): a segment may continue class
    k only when the segment before it was labelled class k."""
    mask = np.ones(N_ACTIONS, dtype=np.bool_)
    mask[2::2] = False
    if prev_action > 0:
        mask[2 + 2 * ((prev_action - 1) // 2)] = True
    return mask


def action_masks(actions: IntArray) -> npt.NDArray[np.bool_]:
    """(n, 15) masks each segment had when the segments before it took `actions`."""
    prev = np.concatenate(([-1], actions[:-1]))
    return (
        np.stack([allowed_actions(int(a)) for a in prev])
        if actions.size
        else np.zeros((0, N_ACTIONS), np.bool_)
    )


def actions_to_spans(
    seg: EssaySegments, actions: npt.ArrayLike
) -> tuple[IntArray, IntArray, IntArray]:
    """Spans from per-segment actions: 'continues k' after a class-k segment extends the
    running span, any other class action starts a new span, none ends it."""
    act = np.asarray(actions, dtype=np.int64)
    if act.shape != (seg.n_segments,):
        raise ValueError(f"{seg.essay_id}: {act.shape} actions for {seg.n_segments} segments")
    cls = np.where(act > 0, (act - 1) // 2, -1)
    prev_cls = np.concatenate(([-1], cls[:-1]))
    continues = (act > 0) & (act % 2 == 0) & (cls == prev_cls)
    starts = np.flatnonzero((act > 0) & ~continues)
    # A span runs until the next segment that does not continue it.
    stop = np.flatnonzero(~continues)
    stop = np.append(stop, act.size)
    last = stop[np.searchsorted(stop, starts, side="right")] - 1
    return cls[starts], seg.word_start[starts], seg.word_end[last]


def spans_frame(segs: Sequence[EssaySegments], actions: Sequence[npt.ArrayLike]) -> pd.DataFrame:
    """Submission table (id, class, predictionstring, word_start, word_end) for many essays."""
    ids: list[str] = []
    parts: list[tuple[IntArray, IntArray, IntArray]] = []
    for seg, act in zip(segs, actions, strict=True):
        c, s, e = actions_to_spans(seg, act)
        ids += [seg.essay_id] * c.size
        parts.append((c, s, e))
    if not parts:
        z = np.zeros(0, np.int64)
        return spans_to_frame([], z, z, z)
    c, s, e = (np.concatenate(x) for x in zip(*parts, strict=True))
    return spans_to_frame(ids, c, s, e)


def gold_frame(corpus: Corpus, ids: Iterable[str]) -> pd.DataFrame:
    """The true elements of `ids` as the metric's ground-truth table."""
    keep = set(ids)
    el = corpus.elements
    return el[el["id"].isin(keep)][["id", "discourse_type", "word_start", "word_end"]]


def oracle_score(segs: Sequence[EssaySegments], corpus: Corpus) -> metric.Score:
    """Macro F1 of the gold segment labelling: what a perfect segment labeller would score
    (a lower bound on the best labelling; exact except in rare ties)."""
    with_gold = [
        s if s.gold_action is not None else s.with_gold(essay_gold_actions(s, corpus)) for s in segs
    ]
    pred = spans_frame(with_gold, [s.gold_action for s in with_gold])  # type: ignore[misc]
    return metric.score(pred, gold_frame(corpus, [s.essay_id for s in segs]))


def tradeoff_table(
    probs: Probs,
    corpus: Corpus,
    thresholds: Sequence[float],
    base: SegmentConfig | None = None,
    punctuation: Sequence[Punctuation] | None = None,
) -> pd.DataFrame:
    """Per punctuation mode and start threshold: segments per essay, segments per true
    element, oracle macro F1."""
    base = base or SegmentConfig()
    ids = [i for i in sorted(probs) if i in corpus.essays]
    words = {i: corpus.essays[i].words for i in ids}
    n_elements = int(corpus.elements["id"].isin(set(ids)).sum())
    rows = []
    for mode in punctuation or (base.punctuation,):
        for t in thresholds:
            # Features do not change the cuts or the oracle: the plain ones are enough here.
            cfg = dataclasses.replace(
                base, start_threshold=float(t), punctuation=mode, rich_features=False
            )
            segs = make_segments(probs, cfg, ids, words)
            n_seg = sum(s.n_segments for s in segs)
            rows.append(
                {
                    "punctuation": mode,
                    "start_threshold": float(t),
                    "segments_per_essay": n_seg / max(len(segs), 1),
                    "segments_per_element": n_seg / max(n_elements, 1),
                    "oracle_macro_f1": oracle_score(segs, corpus).macro_f1,
                }
            )
    return pd.DataFrame(rows)
