"""discourse-rl: find and label the discourse elements of student essays."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

# GNU OpenMP (torch's CPU wheel) reads this once, when torch loads, so it is set here, before
# any module of the package imports torch; a value the user set wins. Spinning worker threads
# (the default, ACTIVE) made a 2-thread training step 6x slower beside one `nice -n 19` process
# (issue 15); passive ones sleep while waiting. Torch imported before this package keeps its own.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["Element", "Labeller", "__version__"]

if TYPE_CHECKING:
    from discourse_rl.app.labeller import Element, Labeller


def __getattr__(name: str) -> Any:
    # `import discourse_rl` stays light: the labeller (and torch behind it) loads on first use.
    if name in ("Element", "Labeller"):
        from discourse_rl.app import labeller

        return getattr(labeller, name)
    raise AttributeError(f"module 'discourse_rl' has no attribute {name!r}")
