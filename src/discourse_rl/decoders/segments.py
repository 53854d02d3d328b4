"""Segments: each essay cut into short word runs where an element is likely to start.

The agent labels segments instead of words, so a segment boundary must fall on (or near) every
true element boundary: cuts go where the start probability (the summed B- labels) passes a
threshold and where the most probable class changes. A lower threshold finds more boundaries and
makes more segments; `tradeoff_table` measures that trade-off with the oracle macro F1 (the
score of the best labelling we know of these segments, the gold segment labels).

Actions, shared with the environment and the agent, mirror the word labels: 0 = none,
1 + 2k = class k beginning a new element, 2 + 2k = class k continuing the running one.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd

from discourse_rl.core import artefacts, metric, rules
from discourse_rl.core.arrays import BoolArray, FloatArray, IntArray, Probs
from discourse_rl.core.common import DiscourseRLError, atomic_save
from discourse_rl.core.data import (
    CLASSES,
    NUM_LABELS,
    Corpus,
    Essay,
    labels_to_spans,
    spans_to_frame,
)
from discourse_rl.decoders.gbdt.features import essay_layout

N_CLASSES = len(CLASSES)
N_ACTIONS = NUM_LABELS
NONE_ACTION = 0
# Features per segment (see `segment_features`), and those `rich_features` adds.
N_BASE_FEATURES = NUM_LABELS + N_CLASSES + 7
Punctuation = Literal["none", "sentence", "clause"]
PUNCTUATION: tuple[Punctuation, ...] = get_args(Punctuation)
N_RICH_FEATURES = 8 + 8 + N_CLASSES + 11
RICH_EDGE = 3  # words on each side of a segment start that its sharpness compares


@dataclass(frozen=True)
class SegmentConfig:
    """How essays are cut into segments and what each segment shows the agent."""

    start_threshold: float = 0.3
    """Cut before a word whose start probability (sum of the B- labels) exceeds this."""
    class_change: bool = True
    """Also cut where the most probable class (O or one of the 7) changes from word to word."""
    punctuation: Punctuation = "none"
    """Also cut after punctuation: 'sentence' (. ! ?), 'clause' (also , ; :) or 'none'.
    Elements nearly always start there, so the oracle stays high even when the tagger's start
    probabilities are weak (the run configs use 'clause'); needs the essays' words."""
    max_segments: int = 96
    """At most this many segments per essay; beyond it the weakest cuts are dropped."""
    start_window: int = 3
    """Words at a segment's start whose B- probabilities are averaged into its features."""
    rich_features: bool = False
    """Add gbdt-like statistics per segment (`rich_segment_features`: per-class min, max and
    shares above 0.5, boundary sharpness, sentence/paragraph alignment, position); needs the
    essays' words and paragraph starts. Off: the seed's plain features."""

    def __post_init__(self) -> None:
        rules.check_fields(
            self,
            {
                "start_threshold": rules.probability,
                "max_segments": rules.positive,
                "start_window": rules.positive,
            },
        )


@dataclass(frozen=True, eq=False)
class EssaySegments:
    """One essay's segments: half-open word ranges, features and (for training) gold actions."""

    essay_id: str
    n_words: int
    word_start: IntArray
    word_end: IntArray
    features: FloatArray
    """(n_segments, n_features) float32."""
    gold_action: IntArray | None = None
    """(n_segments,) gold actions derived from the true elements, None when unknown."""

    @property
    def n_segments(self) -> int:
        return int(self.word_start.shape[0])

    def with_gold(self, gold: IntArray | None) -> EssaySegments:
        return EssaySegments(
            self.essay_id, self.n_words, self.word_start, self.word_end, self.features, gold
        )


# ---------------------------------------------------------------------------------------------
# Cutting and features


_SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")
_CLAUSE_END = re.compile(r"[,;:][\"')\]]*$")


def punctuation_starts(words: Sequence[str]) -> tuple[BoolArray, BoolArray]:
    """Per word: does it follow a sentence end, does it follow a , ; or : (the first word is
    a sentence start)."""
    n = len(words)
    sent = np.zeros(n, np.bool_)
    clause = np.zeros(n, np.bool_)
    if n:
        sent[0] = True
        sent[1:] = [bool(_SENTENCE_END.search(w)) for w in words[:-1]]
        clause[1:] = [bool(_CLAUSE_END.search(w)) for w in words[:-1]]
    return sent, clause


def cut_points(
    p: npt.NDArray[np.floating],
    cfg: SegmentConfig,
    words: Sequence[str] | None = None,
) -> IntArray:
    """Word indices where segments start (always including 0), at most `cfg.max_segments`."""
    n = p.shape[0]
    start_p = p[:, 1::2].sum(1)
    cls = _word_class(p)
    cut = start_p > cfg.start_threshold
    if cfg.class_change:
        cut[1:] |= cls[1:] != cls[:-1]
    strength = start_p.astype(np.float64)
    strength[1:] += cls[1:] != cls[:-1]
    if cfg.punctuation != "none":
        if cfg.punctuation not in PUNCTUATION:
            raise DiscourseRLError(f"segments.punctuation: expected one of {PUNCTUATION}")
        if words is None or len(words) != n:
            raise DiscourseRLError(f"segments.punctuation={cfg.punctuation!r} needs the words")
        sent, clause = punctuation_starts(words)
        cut |= sent | (clause if cfg.punctuation == "clause" else False)
        strength += 0.5 * sent + 0.25 * clause
    cut[0] = True
    starts = np.flatnonzero(cut).astype(np.int64)
    if starts.size > cfg.max_segments:
        # Keep the first word and the strongest other cuts.
        strength = strength[starts]
        keep = np.argsort(-strength[1:], kind="stable")[: cfg.max_segments - 1] + 1
        starts = np.concatenate(([0], np.sort(starts[keep])))
    return starts[starts < n] if n else starts[:0]


def _word_class(p: npt.NDArray[np.floating]) -> IntArray:
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


def paragraph_starts(essays: Mapping[str, Essay], ids: Iterable[str]) -> dict[str, BoolArray]:
    """Per essay of `ids`: does each word open a paragraph (for `rich_features`)."""

    return {i: essay_layout(essays[i]).paragraph for i in ids}


def make_segments(
    probs: Probs,
    cfg: SegmentConfig | None = None,
    ids: Iterable[str] | None = None,
    words: Mapping[str, Sequence[str]] | None = None,
    paragraphs: Mapping[str, BoolArray] | None = None,
) -> list[EssaySegments]:
    """Segments of every essay in `probs` (or of `ids`), in sorted id order, without gold.

    `words` (essay id -> its words) is needed for punctuation cuts and features; `paragraphs`
    (essay id -> paragraph starts per word, `paragraph_starts`) for rich features."""
    cfg = cfg or SegmentConfig()
    if cfg.rich_features and (words is None or paragraphs is None):
        raise DiscourseRLError("segments.rich_features needs the essays' words and paragraphs")
    out: list[EssaySegments] = []
    for eid in sorted(probs) if ids is None else list(ids):
        p = np.asarray(probs[eid], dtype=np.float32)
        if p.ndim != 2 or p.shape[1] != NUM_LABELS or p.shape[0] == 0:
            raise DiscourseRLError(f"{eid}: word probabilities must be (n_words>0, 15), {p.shape}")
        w = None if words is None else words.get(eid)
        if w is not None and len(w) != p.shape[0]:
            raise DiscourseRLError(f"{eid}: {len(w)} words but {p.shape[0]} probability rows")
        starts = cut_points(p, cfg, w)
        ends = np.append(starts[1:], p.shape[0])
        feats = segment_features(p, starts, ends, cfg.start_window)
        if w is not None:
            sent, clause = punctuation_starts(w)
            feats = np.concatenate(
                [feats, np.stack([sent[starts], clause[starts]], 1).astype(np.float32)], 1
            )
        else:
            feats = np.concatenate([feats, np.zeros((starts.size, 2), np.float32)], 1)
        if cfg.rich_features:
            assert w is not None and paragraphs is not None
            para = np.asarray(paragraphs[eid], dtype=np.bool_)
            if para.shape != (p.shape[0],):
                raise DiscourseRLError(f"{eid}: {para.shape} paragraph flags, {p.shape[0]} words")
            sent = punctuation_starts(w)[0] | para
            rich = rich_segment_features(p, starts, ends, sent, para)
            feats = np.concatenate([feats, rich], 1)
        out.append(EssaySegments(eid, p.shape[0], starts, ends, feats))
    return out


# ---------------------------------------------------------------------------------------------
# Gold labels, actions and spans


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


# ---------------------------------------------------------------------------------------------
# Simulated word probabilities (development before the NER stage's exist)

# Pairs a tagger confuses in practice (similar wording or role).
_CONFUSABLE: dict[int, tuple[int, ...]] = {
    0: (1,),  # Lead -> Position
    1: (2, 0),  # Position -> Claim, Lead
    2: (5, 1, 6),  # Claim -> Evidence, Position, Concluding Statement
    3: (4, 2),  # Counterclaim -> Rebuttal, Claim
    4: (3, 2),  # Rebuttal -> Counterclaim, Claim
    5: (2,),  # Evidence -> Claim
    6: (2, 5),  # Concluding Statement -> Claim, Evidence
}
# Rarer, more subtle classes get confused more often (as in real taggers' per-class F1).
_DIFFICULTY = (0.5, 0.8, 1.0, 1.6, 2.0, 0.5, 0.5)


def simulate_word_probs(
    corpus: Corpus, noise: float = 0.5, seed: int = 0, ids: Iterable[str] | None = None
) -> dict[str, FloatArray]:
    """Word probabilities (n_words, 15) that imitate a tagger from the gold labels plus noise.

    Per element, with probabilities growing with `noise`: its class is swapped for a confusable
    one, its start shifts by a few words, its start is missed (it merges into the element before)
    or a spurious start splits it. Class logits then get Gaussian noise correlated over nearby
    words (taggers err in runs, not word by word), and the start share of each class is blurred
    onto neighbouring words and sometimes raised at random. Deterministic for a given corpus,
    noise and seed; noise=0.5 makes naive argmax decoding score about 0.45 macro F1.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, FloatArray] = {}
    kernel = np.hanning(17)[1:-1]
    kernel /= np.sqrt((kernel**2).sum())
    for eid in sorted(corpus.essays) if ids is None else list(ids):
        n = corpus.essays[eid].n_words
        g_cls, g_start, g_end = gold_spans(corpus, eid)
        seen = np.zeros(n, dtype=np.int64)  # 0 = O, 1 + k = class k
        b_share = np.full(n, 0.02)
        for c, s, e in zip(g_cls, g_start, g_end, strict=True):
            c, s, e = int(c), int(s), int(e)
            if rng.random() < 0.4 * noise * _DIFFICULTY[c]:
                c = int(rng.choice(_CONFUSABLE[c]))
            if rng.random() < 0.6 * noise:
                s = int(np.clip(s + rng.integers(-3, 4), 0, max(e - 1, 0)))
            seen[s:e] = 1 + c
            if rng.random() > 0.3 * noise:
                b_share[s] = rng.uniform(0.55, 0.95)
            else:
                b_share[s] = rng.uniform(0.1, 0.5)
            if e - s > 12 and rng.random() < 0.5 * noise:
                b_share[int(rng.integers(s + 4, e - 4))] = rng.uniform(0.3, 0.9)
        # Start mass leaks onto the words next to a start, as taggers hedge boundaries.
        peaks = np.flatnonzero(b_share > 0.3)
        for d in (-1, 1):
            nb = np.clip(peaks + d, 0, n - 1)
            b_share[nb] = np.maximum(b_share[nb], rng.uniform(0, 0.6 * noise, peaks.size))
        spurious = rng.random(n) < 0.01 * noise
        b_share[spurious] = np.maximum(b_share[spurious], rng.uniform(0.1, 0.7, spurious.sum()))
        logits = np.zeros((n, 1 + N_CLASSES))
        logits[np.arange(n), seen] = 4.0
        eps = rng.standard_normal((n + kernel.size - 1, 1 + N_CLASSES))
        smooth = np.stack(
            [np.convolve(eps[:, j], kernel, mode="valid") for j in range(1 + N_CLASSES)], 1
        )
        logits += 2.2 * noise * smooth[:n] + 0.3 * noise * rng.standard_normal(logits.shape)
        logits -= logits.max(1, keepdims=True)
        pc = np.exp(logits)
        pc /= pc.sum(1, keepdims=True)
        p = np.empty((n, NUM_LABELS))
        p[:, 0] = pc[:, 0]
        p[:, 1::2] = pc[:, 1:] * b_share[:, None]
        p[:, 2::2] = pc[:, 1:] * (1 - b_share[:, None])
        out[eid] = p.astype(np.float32)
    return out


def naive_frame(probs: Probs, ids: Iterable[str]) -> pd.DataFrame:
    """Argmax decoding of word probabilities, the 'NER naive' baseline."""

    rows: list[pd.DataFrame] = []
    for eid in ids:
        c, s, e = labels_to_spans(np.asarray(probs[eid]).argmax(1))
        rows.append(spans_to_frame([eid] * c.size, c, s, e))
    return pd.concat(rows, ignore_index=True) if rows else spans_frame([], [])


# ---------------------------------------------------------------------------------------------
# Saving


def save_segments(path: str | Path, segs: Sequence[EssaySegments]) -> None:
    """All essays' segments in one .npz (gold actions stored as -1 where unknown)."""
    counts = np.array([s.n_segments for s in segs], dtype=np.int64)
    n_feat = segs[0].features.shape[1] if segs else N_BASE_FEATURES

    def cat(
        xs: list[npt.NDArray[np.generic]], dtype: type, width: int = 0
    ) -> npt.NDArray[np.generic]:
        shape = (0, width) if width else (0,)
        return np.concatenate(xs).astype(dtype) if xs else np.zeros(shape, dtype)

    gold = [s.gold_action if s.gold_action is not None else np.full(s.n_segments, -1) for s in segs]

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.savez(
                fh,
                ids=np.array([s.essay_id for s in segs], dtype=str),
                n_words=np.array([s.n_words for s in segs], dtype=np.int64),
                counts=counts,
                word_start=cat([s.word_start for s in segs], np.int64),
                word_end=cat([s.word_end for s in segs], np.int64),
                features=cat([s.features for s in segs], np.float32, n_feat),
                gold_action=cat(gold, np.int64),
            )

    atomic_save(path, write)


def load_segments(path: str | Path) -> list[EssaySegments]:

    data = artefacts.load_npz(path, "segments file", "a segments file")
    need = {"ids", "n_words", "counts", "word_start", "word_end", "features", "gold_action"}
    if not need <= set(data):
        raise DiscourseRLError(f"{path}: not a segments file (missing {sorted(need - set(data))})")
    bounds = np.concatenate(([0], np.cumsum(data["counts"])))
    out = []
    for k, eid in enumerate(data["ids"]):
        sl = slice(bounds[k], bounds[k + 1])
        gold = data["gold_action"][sl]
        out.append(
            EssaySegments(
                str(eid),
                int(data["n_words"][k]),
                data["word_start"][sl],
                data["word_end"][sl],
                data["features"][sl],
                None if gold.size and gold[0] < 0 else gold,
            )
        )
    return out
