from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from discourse_rl.common import (
    DiscourseRLError,
    atomic_open,
    atomic_write_text,
    config_from_dict,
    config_to_toml,
    load_toml,
)


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    """Learning rate."""
    layers: tuple[int, ...] = (1, 2)
    """Layer sizes."""


@dataclass(frozen=True)
class Outer:
    seed: int = 0
    """Random seed."""
    name: str = "x"
    """A name."""
    inner: Inner = field(default_factory=Inner)
    """Nested stage config."""


def test_config_round_trips_through_toml(tmp_path: Path) -> None:
    cfg = config_from_dict(Outer, {"seed": 7, "inner": {"lr": 1, "layers": [3]}})
    assert cfg == Outer(seed=7, inner=Inner(lr=1.0, layers=(3,)))
    path = tmp_path / "c.toml"
    atomic_write_text(path, config_to_toml(cfg))
    assert config_from_dict(Outer, load_toml(path)) == cfg
    assert tomllib.loads(path.read_text())["inner"]["lr"] == 1.0


def test_config_rejects_unknown_keys_and_wrong_types(tmp_path: Path) -> None:
    with pytest.raises(DiscourseRLError, match=r"config.inner: unknown key\(s\) lrr"):
        config_from_dict(Outer, {"inner": {"lrr": 1}})
    with pytest.raises(DiscourseRLError, match=r"config\.seed: expected int"):
        config_from_dict(Outer, {"seed": "7"})
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = = 1")
    with pytest.raises(DiscourseRLError, match=r"bad\.toml: invalid TOML"):
        load_toml(bad)


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
