"""Exported models: one .zip that `Labeller.load`, `predict`, `label` and `serve` accept."""

from __future__ import annotations

from pathlib import Path

from discourse_rl.common import DiscourseRLError


def open_model(model: str | Path) -> Path:
    """The run folder a model path names (an exported .zip is unpacked once to a cache)."""
    model = Path(model)
    if model.is_dir():
        return model
    if not model.exists():
        raise DiscourseRLError(f"{model}: no such run folder or model file")
    raise DiscourseRLError(f"{model}: not a run folder")
