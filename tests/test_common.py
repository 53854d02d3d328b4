from __future__ import annotations

import io
import os
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest

from discourse_rl.core import common, rules
from discourse_rl.core.common import (
    DiscourseRLError,
    atomic_open,
    atomic_save,
    atomic_write_text,
    config_from_dict,
    config_to_toml,
    load_toml,
    progress,
)
from tests.tiny import assert_refused


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
    with pytest.raises(DiscourseRLError, match=r"config: \[inner\] unknown key\(s\) lrr"):
        config_from_dict(Outer, {"inner": {"lrr": 1}})
    with pytest.raises(DiscourseRLError, match=r'config: seed = "7": expected int'):
        config_from_dict(Outer, {"seed": "7"})
    assert_refused(tmp_path / "bad.toml", "seed = = 1", load_toml, r"bad\.toml: invalid TOML")


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")
    with pytest.raises(RuntimeError), atomic_open(path) as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_save(tmp_path / "b.bin", lambda p: p.write_bytes(b"x"))
        with atomic_open(tmp_path / "c.csv", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    for name in ("a.txt", "b.bin", "c.csv"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "kept.txt"
    path.write_text("old")
    path.chmod(0o640)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and stat.S_IMODE(path.stat().st_mode) == 0o640


def test_atomic_write_over_a_folder_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(DiscourseRLError, match=r"out: is a folder; name a file to write"):
        atomic_write_text(tmp_path / "out", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_torch_threads_sets_and_restores_and_zero_leaves_as_is() -> None:
    import torch

    from discourse_rl.core.common import torch_threads

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with torch_threads(0):
        assert torch.get_num_threads() == before


def test_progress_in_a_log_file_is_periodic_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a terminal: no redrawn bar, a line at most every LOG_INTERVAL seconds, and the last
    status when the bar closes."""
    monkeypatch.setattr(common, "LOG_INTERVAL", 3600.0)
    log = io.StringIO()
    bar = progress(total=50, desc="BC", file=log, mininterval=0)
    for _ in range(50):
        bar.update(1)
        bar.set_postfix(loss=0.5)  # refreshes the bar each time
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2, lines
    assert lines[0].startswith("BC:   0% 0/50 [") and lines[1].startswith("BC: 100% 50/50 [")
    assert "loss=0.5" in lines[1] and "|" not in lines[1]


@dataclass(frozen=True)
class _Table:
    RUNTIME: ClassVar[frozenset[str]] = frozenset({"threads", "precision"})
    LEGACY_VALUES: ClassVar[dict[str, object]] = {"precision": True}
    lr: float = 0.1
    threads: int = 0
    precision: str = "auto"


def test_keys_leave_runtime_settings_out_and_legacy_keys_see_old_values() -> None:
    assert rules.keyed(_Table(threads=4)) == rules.keyed(_Table()) == {"lr": 0.1}
    assert rules.plain([_Table(threads=2)]) == [{"lr": 0.1, "threads": 2, "precision": True}]
