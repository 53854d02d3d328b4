"""discourse-rl: find and label the discourse elements of student essays."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Element", "Labeller", "__version__"]

if TYPE_CHECKING:
    from discourse_rl.labeller import Element, Labeller


def __getattr__(name: str) -> Any:
    # `import discourse_rl` stays light: the labeller (and torch behind it) loads on first use.
    if name in ("Element", "Labeller"):
        from discourse_rl import labeller

        return getattr(labeller, name)
    raise AttributeError(f"module 'discourse_rl' has no attribute {name!r}")
