"""Span-level gradient boosting (`gbdt`): candidate spans, their features, a LightGBM model
that scores them, and selection by fitted per-class thresholds without overlap."""

from discourse_rl.decoders.gbdt.gbdt import FitReport, SpanModel, fit
from discourse_rl.decoders.gbdt.model import SpanConfig

__all__ = ["FitReport", "SpanConfig", "SpanModel", "fit"]
