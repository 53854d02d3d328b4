"""Segments: each essay cut into short word runs where an element is likely to start.

The agent labels segments instead of words, so a segment boundary must fall on (or near) every
true element boundary: cuts go where the start probability (the summed B- labels) passes a
threshold and where the most probable class changes. A lower threshold finds more boundaries and
makes more segments; `tradeoff_table` measures that trade-off with the oracle macro F1 (the
score of the best labelling we know of these segments, the gold segment labels).

Actions, shared with the environment and the agent, mirror the word labels: 0 = none,
1 + 2k = class k beginning a new element, 2 + 2k = class k continuing the running one.

By job: `types` (settings, one essay's segments, sizes), `cut` (where segments start;
`make_segments`), `features` (what the agent sees of a segment), `gold` (gold actions, masks,
actions back to spans, the oracle), `simulate` (a simulated tagger), `store` (RUN/segments.npz).
"""

from __future__ import annotations

from discourse_rl.decoders.segments.cut import (
    cut_points,
    make_segments,
    paragraph_starts,
    punctuation_starts,
)
from discourse_rl.decoders.segments.features import (
    rich_segment_features,
    segment_features,
    word_class,
)
from discourse_rl.decoders.segments.gold import (
    action_masks,
    actions_to_spans,
    allowed_actions,
    essay_gold_actions,
    gold_frame,
    gold_spans,
    oracle_score,
    segment_gold_actions,
    spans_frame,
    tradeoff_table,
)
from discourse_rl.decoders.segments.simulate import (
    naive_frame,
    simulate_word_probs,
)
from discourse_rl.decoders.segments.store import (
    load_segments,
    save_segments,
)
from discourse_rl.decoders.segments.types import (
    N_ACTIONS,
    N_BASE_FEATURES,
    N_CLASSES,
    N_RICH_FEATURES,
    NONE_ACTION,
    PUNCTUATION,
    RICH_EDGE,
    EssaySegments,
    Punctuation,
    SegmentConfig,
)

__all__ = [
    "NONE_ACTION",
    "N_ACTIONS",
    "N_BASE_FEATURES",
    "N_CLASSES",
    "N_RICH_FEATURES",
    "PUNCTUATION",
    "RICH_EDGE",
    "EssaySegments",
    "Punctuation",
    "SegmentConfig",
    "action_masks",
    "actions_to_spans",
    "allowed_actions",
    "cut_points",
    "essay_gold_actions",
    "gold_frame",
    "gold_spans",
    "load_segments",
    "make_segments",
    "naive_frame",
    "oracle_score",
    "paragraph_starts",
    "punctuation_starts",
    "rich_segment_features",
    "save_segments",
    "segment_features",
    "segment_gold_actions",
    "simulate_word_probs",
    "spans_frame",
    "tradeoff_table",
    "word_class",
]
