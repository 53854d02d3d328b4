"""gbdt as a registered decoder: the run's deployed span model (RUN/gbdt/gbdt/)."""

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
    from discourse_rl.decoders.gbdt.gbdt import SpanModel

TITLE = (
    "span-level gradient boosting (LightGBM) over candidate spans, selected without overlap by "
    "fitted per-class thresholds"
)
"""Its line under the run report's table."""


@register
class GbdtDecoder(Decoder):
    """gbdt: candidate spans scored by gradient boosting, kept above per-class thresholds."""

    name = "gbdt"
    step = "gbdt"
    trained_on = "the training essays' candidate spans (first seed's model)"
    title = TITLE

    model: SpanModel

    @classmethod
    def own_step(cls) -> bool:
        # Its step bears its name but is the run's own, which fits ner-constrained too.
        return False

    @classmethod
    def path(cls, lay: RunLayout) -> Path:
        return lay.gbdt

    @classmethod
    def marker(cls, lay: RunLayout) -> Path:
        return lay.gbdt / "params.json"

    @classmethod
    def seconds(cls, step_seconds: float | None, results: SpansResults | None) -> float | None:
        return None if results is None else sum(results.gbdt_seconds)

    @classmethod
    def load(cls, run: Path) -> Self:
        # lightgbm and pandas: loaded only with a gbdt model (not by `discourse-rl --help`)
        from discourse_rl.decoders.gbdt.gbdt import SpanModel

        return cls(SpanModel.load(RunLayout(run).gbdt))

    def predict(self, probs: Probs, essays: Mapping[str, Essay]) -> dict[str, list[Span]]:
        from discourse_rl.core.data import CLASS_INDEX  # pandas: as in `load`

        out: dict[str, list[Span]] = {k: [] for k in probs}
        if not probs:
            return out
        table = self.model.predict(probs, essays)
        for k, g in table.groupby("id", sort=False):
            out[str(k)] = sorted_spans(g["class"].map(CLASS_INDEX), g["word_start"], g["word_end"])
        return out
