"""One writer per run folder, and readers that never take a stage being rewritten for a
finished one.

Writers. Every command that writes a run folder (`run`, `train-ner`, `train-agent`, `export`
into a run folder) holds an advisory lock on ``RUN/.lock`` (`fcntl.flock`) while it writes. A
second writer stops at once with one line naming the holder (pid, host, since when, command),
or with ``--wait`` waits for it. The lock file also holds the holder's description; the kernel
drops the lock of a process that dies, and the next writer, finding a description whose
process is gone, takes the lock over and says so in one line. Under torchrun only the main
process (rank 0) takes it: the others write nothing but what the main process tells them to.

The lock is taken where the run folder is first touched (`pipeline.start_run`, after the
config checks) and held until the outermost command function marked `@writes_run` returns;
a second `start_run` in the same process (run -> train_ner) nests inside the first.

Readers. A stage's files are complete when its manifest (``RUN/manifests/<stage>.json``,
written last, removed first when the stage re-runs) exists. `reading(run, stages)` refuses,
in one line, a stage whose manifest is missing (being rewritten, or left unfinished by a run
that stopped), and a load during which a manifest changed (a writer replaced the stage under
the reader).
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import errno
import fcntl
import functools
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from discourse_rl.core import faults
from discourse_rl.core.artefacts import rebuild_command
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.layout import RunLayout, step_name
from discourse_rl.decoders import registry
from discourse_rl.launch import distributed
from discourse_rl.run import space

P = ParamSpec("P")
R = TypeVar("R")

LOCK_NAME = ".lock"

_WAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("discourse_rl_wait", default=False)
_COMMAND: contextvars.ContextVar[str] = contextvars.ContextVar(
    "discourse_rl_command", default="discourse-rl"
)
_SCOPE: contextvars.ContextVar[list[RunLock] | None] = contextvars.ContextVar(
    "discourse_rl_lock_scope", default=None
)
_HELD: dict[Path, RunLock] = {}
"""The run folders this process holds, by resolved path (a nested writer reuses the lock)."""


class RunBusy(DiscourseRLError):
    """Another process is writing the run folder."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a run folder's lock, as written in the lock file."""

    pid: int
    host: str
    since: str
    command: str

    @classmethod
    def me(cls, command: str) -> Holder:
        now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return cls(os.getpid(), socket.gethostname(), now, command)

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            blob = json.loads(text)
            return cls(
                int(blob["pid"]), str(blob["host"]), str(blob["since"]), str(blob["command"])
            )
        except (ValueError, KeyError, TypeError):
            return None

    def to_text(self) -> str:
        return json.dumps(vars(self)) + "\n"

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host} since {self.since} (`{self.command}`)"

    def gone(self) -> bool:
        """Whether the holder's process is known to have ended (only knowable on this host)."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


def lock_path(run: str | Path) -> Path:
    return Path(run) / LOCK_NAME


def holder(run: str | Path) -> Holder | None:
    """The process writing `run` now, or None when no process holds its lock."""
    path = lock_path(run)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return Holder.parse(_read(fd)) or Holder(0, "?", "?", "?")
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace")


class RunLock:
    """A held run-folder lock; `release` lets the next writer in."""

    def __init__(self, root: Path, fd: int) -> None:
        self.root = root
        self.fd = fd
        self.depth = 1

    def release(self) -> None:
        self.depth -= 1
        if self.depth > 0:
            return
        _HELD.pop(self.root, None)
        try:
            os.ftruncate(self.fd, 0)  # a clean end leaves no holder to take over
        except OSError:
            pass
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def acquire(
    run: str | Path,
    *,
    command: str | None = None,
    wait: bool | None = None,
    log: Callable[[str], None] | None = None,
) -> RunLock | None:
    """Take `run`'s writer lock (None on a process other than the main one under a launcher).

    Busy: raise `RunBusy` (one line naming the holder), or with `wait` wait for it. A lock left
    by a process that died is taken over with one line on stderr."""
    if not distributed.is_main():
        return None
    root = Path(run)
    key = root.resolve()
    if key in _HELD:
        lock = _HELD[key]
        lock.depth += 1
        _remember(lock)
        return lock
    command = _COMMAND.get() if command is None else command
    wait = _WAIT.get() if wait is None else wait
    say = log or (lambda line: print(f"discourse-rl: {line}", file=sys.stderr, flush=True))
    root.mkdir(parents=True, exist_ok=True)
    path = lock_path(root)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = Holder.parse(_read(fd))
            who = other.describe() if other else "another process"
            if not wait:
                raise RunBusy(
                    f"{root}: another discourse-rl is writing this run folder: {who}; "
                    "wait for it to finish, or add --wait to start when it does"
                ) from None
            say(f"{root}: waiting for {who} to finish writing this run folder")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            # A filesystem without locks: the holder's description is all there is to go on.
            other = Holder.parse(_read(fd))
            if other is not None and not other.gone() and other.pid != os.getpid():
                raise RunBusy(
                    f"{root}: another discourse-rl is writing this run folder: "
                    f"{other.describe()} (this filesystem has no locks; if that process is "
                    f"gone, delete {path})"
                ) from None
        stale = Holder.parse(_read(fd))
        if stale is not None and stale.pid != os.getpid():
            say(
                f"{root}: taking over the run folder's lock from {stale.describe()}, "
                "which stopped without releasing it"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, Holder.me(command).to_text().encode(), 0)
    except BaseException:
        os.close(fd)
        raise
    lock = RunLock(key, fd)
    _HELD[key] = lock
    _remember(lock)
    return lock


def acquire_everywhere(run: str | Path) -> None:
    """`acquire` on the main process; under a launcher every process stops with its one line
    when the run folder is busy (instead of waiting for the main process at a barrier)."""

    def take() -> str | None:
        try:
            acquire(run)
        except DiscourseRLError as exc:
            return str(exc)
        except OSError as exc:  # no room for the lock file, a read-only folder
            return str(space.write_failure(exc, None))
        return None

    problem = distributed.from_main(take)
    if problem is not None:
        raise RunBusy(problem)


def _remember(lock: RunLock) -> None:
    """The writer function running now releases `lock` when it ends (outside one: at exit)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.append(lock)


def writes_run(command: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Mark a function that writes a run folder as `command`: the lock its `start_run` takes is
    released when it returns (or raises)."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> R:
            if _SCOPE.get() is not None:  # nested in another writer: its scope releases
                return fn(*args, **kwargs)
            with _scope(command):
                return fn(*args, **kwargs)

        return inner

    return deco


@contextmanager
def _scope(command: str) -> Iterator[None]:
    held: list[RunLock] = []
    token = _SCOPE.set(held)
    name = _COMMAND.set(f"discourse-rl {command}")
    try:
        yield
    except OSError as exc:
        # A full disk, a read-only folder, no permission: one line, the run folder as it was
        # after its last complete stage.
        root = held[0].root if held else None
        if faults.is_write_error(exc) or (root is not None and _within(exc.filename, root)):
            raise space.write_failure(exc, root) from exc
        raise
    finally:
        _SCOPE.reset(token)
        _COMMAND.reset(name)
        for lock in reversed(held):
            lock.release()


def _within(name: object, root: Path) -> bool:
    if not isinstance(name, (str, os.PathLike)):
        return False
    try:
        Path(name).resolve().relative_to(root)
    except (ValueError, OSError):
        return False
    return True


@contextmanager
def writing(run: str | Path, command: str) -> Iterator[None]:
    """Hold `run`'s writer lock for a block (a writer that does not go through `start_run`)."""
    with _scope(command):
        acquire(run)
        yield


@contextmanager
def waiting(wait: bool) -> Iterator[None]:
    """Writers started inside the block wait for a busy run folder instead of stopping."""
    token = _WAIT.set(wait)
    try:
        yield
    finally:
        _WAIT.reset(token)


# --- readers ----------------------------------------------------------------------------------


def _manifests(lay: RunLayout) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if lay.manifests.is_dir():
        for p in sorted(lay.manifests.glob("*.json")):
            try:
                out[step_name(p.stem)] = p.read_bytes()
            except OSError:
                out[step_name(p.stem)] = b""
    return out


def check_complete(run: str | Path, stages: Sequence[str]) -> None:
    """One line when a stage a reader needs is not complete: a writer is rewriting it, or a
    run that stopped left it unfinished. Runs from before manifests pass."""
    lay = RunLayout(run)
    if not lay.manifests.is_dir():
        return
    for stage in stages:
        if lay.manifest(stage).is_file():
            continue
        if not _stage_present(lay, stage):
            continue  # never trained: the reader's own check says so
        raise DiscourseRLError(_incomplete(lay, stage))


def incomplete(run: str | Path) -> dict[str, str]:
    """The run's stages that are present but not complete, each with its one-line reason."""
    lay = RunLayout(run)
    if not lay.manifests.is_dir():
        return {}
    return {
        stage: _incomplete(lay, stage)
        for stage in _steps()
        if _stage_present(lay, stage) and not lay.manifest(stage).is_file()
    }


def _stage_present(lay: RunLayout, stage: str) -> bool:
    if stage == "ner":
        return lay.ner.is_dir()
    if stage == "agent":
        return lay.agent.is_dir()
    return lay.step_dir(stage).is_dir()


def _incomplete(lay: RunLayout, stage: str) -> str:
    other = holder(lay.root)
    if other is not None:
        return (
            f"{lay.root}: the {stage} stage is being rewritten by {other.describe()}; "
            "try again when it finishes"
        )
    return (
        f"{lay.root}: the {stage} stage is incomplete (a run stopped before finishing it); "
        f"finish it with `{rebuild_command(lay.step_dir(stage))}`"
    )


def snapshot(run: str | Path, stages: Sequence[str]) -> dict[str, bytes]:
    """Before a reader loads `stages`: refuse an incomplete one (one line); what to compare
    with after the load (`unchanged`)."""
    check_complete(run, stages)
    return _manifests(RunLayout(run))


def unchanged(run: str | Path, stages: Sequence[str], before: dict[str, bytes]) -> None:
    """After the load: one line when a writer replaced one of `stages` meanwhile."""
    lay = RunLayout(run)
    after = _manifests(lay)
    for stage in stages:
        if before.get(stage) != after.get(stage):
            other = holder(lay.root)
            who = f" by {other.describe()}" if other is not None else ""
            raise DiscourseRLError(
                f"{lay.root}: the {stage} stage was rewritten{who} while it was being read; "
                "try again when the writer finishes"
            )


@contextmanager
def reading(run: str | Path, stages: Sequence[str]) -> Iterator[None]:
    """Load `stages` of `run` inside the block: refused in one line when one is incomplete
    before the load, or when a writer replaced a stage while it loaded."""
    before = snapshot(run, stages)
    yield
    unchanged(run, stages, before)


def run_folder_of(path: str | Path) -> Path | None:
    """The run folder `path` lies in (itself or a parent with a format.json), if any."""
    p = Path(path).absolute()
    for folder in [p, *p.parents][:4]:
        if RunLayout(folder).format.is_file():
            return folder
    return None


def _steps() -> list[str]:
    """Every training step a decoder names, the tagger's first."""
    steps = ["ner"]
    for decoder in registry.decoders():
        if decoder.step not in steps:
            steps.append(decoder.step)
    return steps


def stages_for(stage: str, run: str | Path) -> tuple[str, ...]:
    """The training steps whose files labelling with `stage` reads: the tagger's, and the step
    that fitted the decoder (ner-tuned reads gbdt/tuned.json where the gbdt step ran)."""
    decoder = registry.get(stage)
    step = decoder.step
    if step == "ner" and stage == "ner-tuned" and RunLayout(run).gbdt_dir.is_dir():
        step = "gbdt"
    # A decoder that loads other steps' outputs (combine: its chosen members) reads them too.
    return tuple(dict.fromkeys(("ner", step, *decoder.reads)))
