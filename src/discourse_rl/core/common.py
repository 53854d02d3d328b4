"""Pieces every stage shares: the error users see, atomic writes, TOML-backed configs."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import secrets
import shutil
import stat
import sys
import time
import tomllib
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

from discourse_rl.core import faults, rules
from discourse_rl.core.rules import toml_value


class DiscourseRLError(Exception):
    """A problem with the user's input, reported by the CLI as one line (no traceback)."""


TEMP_PATTERN = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp(\.[A-Za-z0-9]+)?$")
"""The names atomic writes give their temporary files and folders (`.NAME.1a2b3c4d.tmp`, with
the target's suffix after it when a library insists on one)."""


WRITE_TRACE = "DISCOURSE_RL_WRITE_TRACE"
"""Environment variable naming a file that gets one line per atomic write ("RANK PATH"): how
the multi-process test checks that each artefact is written once, by the main process."""


def _trace(path: Path) -> None:
    trace = os.environ.get(WRITE_TRACE)
    if trace:
        with open(trace, "a", encoding="utf-8") as fh:
            fh.write(f"{os.environ.get('RANK', '0')} {path.resolve()}\n")


def temp_name(name: str, suffix: str = "") -> str:
    """A fresh temporary name beside `name`, matching TEMP_PATTERN."""
    suffix = "" if suffix == ".tmp" else suffix
    return f".{name}.{secrets.token_hex(4)}.tmp{suffix}"


def remove_temporaries(root: str | Path) -> int:
    """Delete what interrupted atomic writes left under `root` (a process killed between writing
    a temporary file and renaming it); returns how many went. Only for a folder no other process
    is writing in."""
    root = Path(root)
    if not root.is_dir():
        return 0
    found = [p for p in root.rglob(".*") if TEMP_PATTERN.match(p.name)]
    for p in sorted(found, key=lambda p: len(p.parts)):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink(missing_ok=True)
    return len(found)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Fill a temporary folder beside `path`, then put it in `path`'s place: a reader sees the
    old folder, no folder, or the whole new one, never a half-written one."""
    path = Path(path)
    _trace(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.name)
    tmp.mkdir()
    try:
        yield tmp
        faults.write_point(path)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (failed := faults.as_os_error(exc, path, tmp)) is exc:
            raise
        raise failed from exc


def _temp_beside(path: Path, suffix: str) -> tuple[int, Path]:
    """A new empty file beside `path`, created as `open()` would create `path`.

    mkstemp creates 0600 files; a file the user asked for gets the umask's mode, or keeps the
    mode of the file it replaces.
    """
    if path.is_dir():
        raise DiscourseRLError(f"{path}: is a folder; name a file to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.stat()
        mode = stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else None
    except OSError:
        mode = None
    _trace(path)
    while True:
        tmp = path.parent / temp_name(path.name, suffix)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:  # a read-only folder, no permission: name the file asked for
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        if mode is not None:
            os.fchmod(fd, mode)
        return fd, tmp


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Write to a temporary file beside `path`, then rename it over `path`.

    A reader never sees a half-written file, and a crash leaves the old file intact.
    """
    path = Path(path)
    fd, tmp = _temp_beside(path, ".tmp")
    with _replacing(path, tmp):
        with os.fdopen(fd, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            faults.write_point(path)
            os.fsync(fh.fileno())
        os.replace(tmp, path)


@contextmanager
def _replacing(path: Path, tmp: Path) -> Iterator[None]:
    """Around writing `tmp` and renaming it over `path`: on any failure `tmp` is removed, and an
    OS error names `path` (`faults.as_os_error`)."""
    try:
        yield
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if (failed := faults.as_os_error(exc, path, tmp)) is exc:
            raise
        raise failed from exc


_REQUIRED: Any = object()


def read_json(path: str | Path, missing: Any = _REQUIRED) -> Any:
    """A JSON file's value; `missing` when the file does not exist (without it: an error).
    Unreadable JSON is one `DiscourseRLError` line naming the file."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing is _REQUIRED:
            raise DiscourseRLError(f"{path}: not found") from None
        return missing
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DiscourseRLError(f"{path}: invalid JSON ({exc})") from None


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def atomic_save(path: str | Path, write: Callable[[Path], None]) -> None:
    """Atomic write for libraries that insist on writing to a path themselves."""
    path = Path(path)
    fd, tmp = _temp_beside(path, path.suffix)
    os.close(fd)
    with _replacing(path, tmp):
        write(tmp)
        faults.write_point(path)
        os.replace(tmp, path)


C = TypeVar("C")


def config_from_dict(
    cls: type[C], values: Mapping[str, Any], *, where: str = "config", table: str = ""
) -> C:
    """Build config dataclass `cls` from a mapping, rejecting unknown keys, wrong types and
    values its checks refuse; every error is one line naming `where` (the file), the table and
    the key, e.g. `configs/x.toml: [ner] epochs = -1.0: must be > 0`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = rules.field_types(cls)
    unknown = sorted(set(values) - set(fields))
    in_table = f" [{table}]" if table else ""
    if unknown:
        raise DiscourseRLError(f"{where}:{in_table} unknown key(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise DiscourseRLError(f"{where}: {name} must be a table ([{name}])")
            sub = f"{table}.{name}" if table else name
            kwargs[name] = config_from_dict(hint, value, where=where, table=sub)  # type: ignore[arg-type,type-var]
            continue
        try:
            kwargs[name] = _coerce(value, hint)
        except rules.ConfigValueError as exc:
            raise DiscourseRLError(f"{where}: {_in(exc, name, table).describe()}") from None
    try:
        return cls(**kwargs)
    except rules.ConfigValueError as exc:
        raise DiscourseRLError(f"{where}: {_in(exc, exc.key, table).describe()}") from None


def _in(exc: rules.ConfigValueError, key: str, table: str) -> rules.ConfigValueError:
    """`exc` located in `table` (a check across tables names its own)."""
    return exc if exc.table else rules.ConfigValueError(key, exc.value, exc.problem, table)


def _coerce(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        items = [a for a in args if a is not Ellipsis]
        if Ellipsis not in args and len(args) != len(value):
            raise rules.ConfigValueError("", value, f"expected {len(args)} values")
        kind = items[0] if items and all(a is items[0] for a in items) else None
        if kind in (int, float):
            numbers = (int, float) if kind is float else (int,)
            if any(isinstance(v, bool) or not isinstance(v, numbers) for v in value):
                raise rules.ConfigValueError("", value, f"expected a list of {kind.__name__}")
            return tuple(kind(v) for v in value)
        return tuple(value)
    if hint in (int, float, str, bool) and not (
        isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    ):
        raise rules.ConfigValueError("", value, f"expected {hint.__name__}")
    # A literal of booleans too (e.g. "auto" | true | false) takes its own booleans.
    if (
        origin is typing.Literal
        and not isinstance(value, str)
        and not any(type(value) is type(a) and value == a for a in typing.get_args(hint))
    ):
        raise rules.ConfigValueError("", value, "expected str")
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise DiscourseRLError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise DiscourseRLError(f"{path}: invalid TOML ({exc})") from None


def config_to_toml(cfg: Any) -> str:
    """A (nested) config dataclass as TOML: top-level scalars, then one table per field."""
    data = dataclasses.asdict(cfg)
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    lines = [f"{k} = {toml_value(v)}" for k, v in scalars.items()]
    for name, table in tables.items():
        lines += _toml_table(name, table)
    return "\n".join(lines) + "\n"


def _toml_table(name: str, table: Mapping[str, Any]) -> list[str]:
    """`[name]` and its keys, then its sub-tables as `[name.key]` (an empty table: nothing)."""
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    lines = ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in scalars.items()]
    lines = lines if scalars else []
    for key, sub in table.items():
        if isinstance(sub, dict):
            lines += _toml_table(f"{name}.{key}", sub)
    return lines


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block with `n` torch CPU threads (0 = leave torch's setting as it is), then restore
    the previous setting. Every stage's thread setting means this."""
    # torch: only the steps that train or predict set its threads
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


LOG_INTERVAL = 30.0
"""Seconds between progress lines when stderr is not a terminal (a log file, a pipe)."""


LOG_FORMAT = (
    "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)
"""A progress line in a log file: the bar's numbers without the bar."""


class _Lines:
    """tqdm's output as plain lines: its refreshes (tqdm writes '\\r' + status, and refreshes at
    every `set_postfix`) become at most one line per `LOG_INTERVAL` seconds, plus the last
    status when the bar closes, so a log file gets readable lines instead of one endless one."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.pending = ""
        self.last = -math.inf

    def write(self, s: str) -> int:
        line = s.replace("\r", "").rstrip()
        now = time.monotonic()
        if line:
            self.pending = line
        if self.pending and (now - self.last >= LOG_INTERVAL or (not line and "\n" in s)):
            self.stream.write(self.pending + "\n")
            self.pending, self.last = "", now
        return len(s)

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable: Any = None, **kwargs: Any) -> Any:
    """A tqdm progress bar on a terminal; elsewhere, periodic plain lines on stderr.

    Every long loop (NER encoding and training, BC, PPO, the episode trainer, predict) takes its
    bar from here, so a run whose stderr goes to a file still says how far it got."""

    # tqdm: only long loops draw bars
    from tqdm.auto import tqdm

    stream = kwargs.get("file") or sys.stderr
    if not kwargs.get("disable") and not is_terminal(stream):
        kwargs["file"] = _Lines(stream)
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("maxinterval", LOG_INTERVAL)
        if kwargs.get("total") is not None or hasattr(iterable, "__len__"):
            kwargs.setdefault("bar_format", LOG_FORMAT)
    return tqdm(iterable, **kwargs)


def is_terminal(stream: Any) -> bool:
    """Is `stream` a terminal (else a file or a pipe, where a redrawn bar is unreadable)?"""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
