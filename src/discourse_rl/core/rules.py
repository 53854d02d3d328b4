"""What a config value may be: the checks each config class runs in its `__post_init__`.

A config class names a rule per field (`rules.check_fields(self, {"lr": rules.positive})`); a
value a rule refuses raises `ConfigValueError` (the key, the value and why), which
`common.config_from_dict` turns into one line naming the file and the table. So a bad value stops
a run before any work starts, whether the config came from a file or from code.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from typing import Any


class ConfigValueError(ValueError):
    """A config value outside what its field accepts: the key, the value and why.

    Raised by the config classes' `__post_init__`; `config_from_dict` adds the file and table."""

    def __init__(self, key: str, value: Any, problem: str, table: str = "") -> None:
        self.key, self.value, self.problem, self.table = key, value, problem, table
        super().__init__(self.describe())

    def describe(self) -> str:
        where = f"[{self.table}] " if self.table else ""
        return f"{where}{self.key} = {_shown(self.value)}: {self.problem}"


def _shown(value: Any) -> str:
    """`value` as a config file would write it (TOML), else its repr."""
    if isinstance(value, (str, bool, int, float, list, tuple)):
        try:
            return toml_value(value)
        except (TypeError, ValueError):
            pass
    return repr(value)


Rule = Callable[[Any], "str | None"]
"""A check of one value: None when it is fine, else what is wrong ('must be > 0')."""


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def probability(v: Any) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def below_one(v: Any) -> str | None:
    return None if 0 <= v < 1 else "must be >= 0 and < 1"


def at_least(n: int | float) -> Rule:
    return lambda v: None if v >= n else f"must be >= {n}"


def at_most(n: int | float) -> Rule:
    return lambda v: None if v <= n else f"must be <= {n}"


def unit_interval(v: Any) -> str | None:
    """In (0, 1]: a share that cannot be empty."""
    return None if 0 < v <= 1 else "must be > 0 and <= 1"


def grid(values: Any) -> str | None:
    """A (start, stop, step) search grid over probabilities."""
    start, stop, step = values
    if not all(0 <= v <= 1 for v in values):
        return "must hold values between 0 and 1"
    return None if start <= stop and step > 0 else "needs start <= stop and step > 0"


def each(rule: Rule) -> Rule:
    """`rule` applied to every item of a tuple."""

    def check(values: Any) -> str | None:
        for v in values:
            if (problem := rule(v)) is not None:
                return f"{problem} (item {_shown(v)})"
        return None

    return check


def check_fields(cfg: Any, rules: Mapping[str, Rule] | None = None) -> None:
    """Check a config dataclass's values: every `Literal` field against its choices, then
    `rules` (field name -> its check). The first failure raises
    `ConfigValueError`, so a bad value stops a run before any work starts."""
    for name, hint in field_types(type(cfg)).items():
        if typing.get_origin(hint) is typing.Literal:
            choices = typing.get_args(hint)
            value = getattr(cfg, name)
            if value not in choices:
                shown = ", ".join(_shown(c) for c in choices)
                raise ConfigValueError(name, value, f"must be one of {shown}")
    for name, rule in (rules or {}).items():
        value = getattr(cfg, name)
        if (problem := rule(value)) is not None:
            raise ConfigValueError(name, value, problem)


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """The declared type of each field of config class `cls` (resolved once per class: every
    config's `__post_init__` reads them)."""
    if cls not in _FIELD_TYPES:
        _FIELD_TYPES[cls] = typing.get_type_hints(cls)
    return _FIELD_TYPES[cls]


def plain(obj: Any) -> Any:
    """A config (nested dataclasses, tuples, dicts) as plain JSON-able data, every setting in
    it: what a step's key hashed before runtime settings left it. A runtime setting whose
    meaning changed since (a new default) shows its old value, from its class's
    `LEGACY_VALUES`, so that run folders written then keep their steps."""
    return _data(obj, keyed=False)


def keyed(obj: Any) -> Any:
    """`plain(obj)` without each config's runtime settings (the names its class lists in
    `RUNTIME`): what a step's key hashes. Runtime settings change how a step runs (threads,
    worker processes, progress bars, checkpoint cadence, batch sizes of inference), never what
    it computes, so changing one never retrains. A switch added to a config after run folders
    were made with it (its class's `ADDED_OFF`: name -> the value that changes nothing) is
    hashed only when it is on, in both forms, so that those folders keep their steps."""
    return _data(obj, keyed=True)


def _data(obj: Any, keyed: bool) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        skip: frozenset[str] = getattr(obj, "RUNTIME", frozenset()) if keyed else frozenset()
        old: Mapping[str, Any] = {} if keyed else getattr(obj, "LEGACY_VALUES", {})
        added: Mapping[str, Any] = getattr(obj, "ADDED_OFF", {})
        data = {
            f.name: old[f.name] if f.name in old else _data(getattr(obj, f.name), keyed)
            for f in dataclasses.fields(obj)
            if f.name not in skip
            and not (f.name in added and getattr(obj, f.name) == added[f.name])
        }
        return flattened(data, getattr(obj, "FLAT_NAMES", {}))
    if isinstance(obj, dict):
        return {k: _data(v, keyed) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_data(v, keyed) for v in obj]
    return obj


def flattened(data: Mapping[str, Any], flat_names: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
    """`data` with its parts' settings back under the flat names they had before a table was
    split into parts (`flat_names`: old name -> (part, name)), so that a step's key stays what
    it was. A setting of a part without an old name keys as 'part.name'."""
    if not flat_names:
        return dict(data)
    old = {part_name: flat for flat, part_name in flat_names.items()}
    parts = {part for part, _ in flat_names.values()}
    out = {k: v for k, v in data.items() if k not in parts}
    for part in parts:
        for name, value in data.get(part, {}).items():
            out[old.get((part, name), f"{part}.{name}")] = value
    return out


def toml_value(v: Any) -> str:
    """`v` as a TOML value (also how a config error shows the value it refuses)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if v is None:
        raise ValueError("TOML has no null; use an empty string for 'unset'")
    raise TypeError(f"cannot write {type(v).__name__} to TOML")
