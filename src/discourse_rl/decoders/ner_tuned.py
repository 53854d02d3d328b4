"""ner-tuned: the naive spans that reach per-class minima of length and mean probability, fitted
on the training essays' out-of-fold probabilities (`decode`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Self

from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders.ner_naive import OUT_OF_FOLD, NaiveDecoder
from discourse_rl.decoders.registry import Decoder, Span, register, sorted_spans

if TYPE_CHECKING:  # types only
    from discourse_rl.core.arrays import Probs
    from discourse_rl.core.data import Essay
    from discourse_rl.core.records import DecodingScore, NerMetrics
    from discourse_rl.decoders.decode import TunedThresholds


@register
class TunedDecoder(Decoder):
    name = "ner-tuned"
    step = "ner"
    trained_on = "out-of-fold probabilities (per-class minima)"
    title = "the NER tagger with per-class minima fitted on the training essays"

    model: TunedThresholds

    @classmethod
    def path(cls, lay: RunLayout) -> Path:
        return lay.tuned

    @classmethod
    def files(cls, lay: RunLayout) -> list[Path]:
        # RUN/decode.json travels with every export; the gbdt step's refit where it ran.
        return [lay.gbdt_tuned] if lay.gbdt_tuned.is_file() else []

    seconds = NaiveDecoder.seconds

    @classmethod
    def out_of_fold(cls, ner: NerMetrics) -> tuple[DecodingScore, str] | None:
        cross = ner.tuned_cross_fitted
        note = ", with minima fitted on the other folds"
        return None if cross is None else (cross, OUT_OF_FOLD + note)

    @classmethod
    def load(cls, run: Path) -> Self:
        # numpy and pandas come with `decode`: kept out of `discourse-rl --help`
        from discourse_rl.decoders.decode import load_thresholds

        return cls(load_thresholds(RunLayout(run).tuned))

    def predict(self, probs: Probs, essays: Mapping[str, Essay]) -> dict[str, list[Span]]:
        from discourse_rl.decoders.decode import decode_tuned  # as in `load`

        return {k: sorted_spans(*decode_tuned(p, self.model)) for k, p in probs.items()}
