"""What the segments are: the settings that cut them (`SegmentConfig`, the `[segments]` table),
one essay's segments (`EssaySegments`), and the sizes of actions and features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from discourse_rl.core import rules
from discourse_rl.core.arrays import FloatArray, IntArray
from discourse_rl.core.data import (
    CLASSES,
    NUM_LABELS,
)

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
