"""What the hyper-parameter searches share (gbdt's and the agent's): a search space as
`name -> (kind, low, high)` and its values for an Optuna trial. Optuna itself is imported only
by the searches, inside the function that runs one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Space = Mapping[str, tuple[str, float, float]]
"""name -> (kind, low, high); kind is 'int', 'intlog', 'log' (a float on a log scale) or
'float'."""


def suggest(trial: Any, space: Space) -> dict[str, Any]:
    """The trial's value of each name of `space`."""
    out: dict[str, Any] = {}
    for name, (kind, lo, hi) in space.items():
        if kind == "int":
            out[name] = trial.suggest_int(name, int(lo), int(hi))
        elif kind == "intlog":
            out[name] = trial.suggest_int(name, int(lo), int(hi), log=True)
        elif kind == "log":
            out[name] = trial.suggest_float(name, lo, hi, log=True)
        else:
            out[name] = trial.suggest_float(name, lo, hi)
    return out
