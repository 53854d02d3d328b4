"""Cutting an essay into segments where an element is likely to start, and making each essay's
`EssaySegments` (`make_segments`)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from discourse_rl.core.arrays import BoolArray, IntArray, Probs
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import (
    NUM_LABELS,
    Essay,
)
from discourse_rl.decoders.gbdt.features import essay_layout
from discourse_rl.decoders.segments.features import (
    rich_segment_features,
    segment_features,
    word_class,
)
from discourse_rl.decoders.segments.types import (
    PUNCTUATION,
    EssaySegments,
    SegmentConfig,
)

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
    cls = word_class(p)
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
