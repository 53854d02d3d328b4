"""ner-naive: the argmax label of each word, spans read off the B/I tags (`decode`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Self

from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders.registry import Decoder, Span, register, sorted_spans

if TYPE_CHECKING:  # types only
    from discourse_rl.core.arrays import Probs
    from discourse_rl.core.data import Essay
    from discourse_rl.core.records import NerMetrics

OUT_OF_FOLD = "out of fold: each essay scored by the NER fold model that never saw it"


@register
class NaiveDecoder(Decoder):
    name = "ner-naive"
    step = "ner"
    trained_on = "nothing: the tagger's argmax"
    title = "the NER tagger's most likely label per word"

    @classmethod
    def path(cls, lay: RunLayout) -> Path:
        return lay.ner

    @classmethod
    def marker(cls, lay: RunLayout) -> Path:
        return lay.ner_config

    @classmethod
    def files(cls, lay: RunLayout) -> list[Path]:
        return []  # the tagger's files, which every export carries

    @classmethod
    def seconds(cls, step_seconds: float | None, results: NerMetrics | None) -> float | None:
        if step_seconds is not None or results is None:
            return step_seconds
        return results.seconds

    @classmethod
    def out_of_fold(cls, ner: NerMetrics) -> tuple[float, str] | None:
        return ner.naive.macro_f1, OUT_OF_FOLD

    @classmethod
    def load(cls, run: Path) -> Self:
        return cls()

    def predict(self, probs: Probs, essays: Mapping[str, Essay]) -> dict[str, list[Span]]:
        # numpy: kept out of `discourse-rl --help`, which lists the registry
        import numpy as np

        from discourse_rl.decoders.decode import decode_naive

        return {k: sorted_spans(*decode_naive(np.asarray(p))) for k, p in probs.items()}
