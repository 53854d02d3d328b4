"""ner-constrained: Viterbi over the word labels with at-most-one limits, then per-class minima
(`constrained`), fitted by the gbdt step on the training essays."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Self

from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders.registry import Decoder, Span, register, sorted_spans

if TYPE_CHECKING:  # types only
    from discourse_rl.core.arrays import Probs
    from discourse_rl.core.data import Essay
    from discourse_rl.core.records import SpansResults
    from discourse_rl.decoders.constrained import ConstrainedParams


@register
class ConstrainedDecoder(Decoder):
    name = "ner-constrained"
    step = "gbdt"
    trained_on = "training essays' out-of-fold probabilities (limits, minima)"
    title = (
        "the best valid tag sequence (Viterbi, at most one span of the classes essays almost "
        "never repeat) with per-class minima fitted on the training essays"
    )

    model: ConstrainedParams

    @classmethod
    def path(cls, lay: RunLayout) -> Path:
        return lay.constrained

    @classmethod
    def seconds(cls, step_seconds: float | None, results: SpansResults | None) -> float | None:
        return None if results is None else results.constrained_seconds

    @classmethod
    def load(cls, run: Path) -> Self:
        # numpy comes with `constrained`: kept out of `discourse-rl --help`
        from discourse_rl.decoders.constrained import load_constrained

        return cls(load_constrained(run))

    def predict(self, probs: Probs, essays: Mapping[str, Essay]) -> dict[str, list[Span]]:
        import numpy as np  # as in `load`

        from discourse_rl.decoders.constrained import decode_constrained

        return {
            k: sorted_spans(*decode_constrained(np.asarray(p), self.model))
            for k, p in probs.items()
        }
