"""Span-level gradient boosting (`gbdt`): candidate spans, their features, a LightGBM model
that scores them, and selection by fitted per-class thresholds without overlap.

`decoder` registers it; `gbdt` is the model (`SpanModel`, `fit`); `model` its config table
(`GbdtConfig`, the run config's `[gbdt]`) and candidate building."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from discourse_rl.decoders.gbdt.gbdt import FitReport, SpanModel, fit
    from discourse_rl.decoders.gbdt.model import GbdtConfig

__all__ = ["FitReport", "GbdtConfig", "SpanModel", "fit"]


def __getattr__(name: str) -> Any:
    # lightgbm loads with the model module: the registry imports `decoder` without it.
    if name in ("FitReport", "SpanModel", "fit"):
        from discourse_rl.decoders.gbdt import gbdt

        return getattr(gbdt, name)
    if name == "GbdtConfig":
        from discourse_rl.decoders.gbdt.model import GbdtConfig

        return GbdtConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
