"""Faults of the machine while a run is written: a full disk, a read-only folder, a permission
error, an I/O error.

- Every write of a run's files (the atomic writes of `common`, and the memory-mapped caches
  preallocated by `preallocate`) passes `write_point` just before the file becomes visible: the
  place where a fault can be injected (`inject`, or the environment variable `FAULT_ENV` for a
  process started from the command line) to test what a real one would do.
- `as_os_error` turns a library's failure to write (safetensors' `SafetensorError`, torch's
  `RuntimeError`) into an `OSError` naming the file, so that one kind of error reaches the top.
- `describe` gives any `OSError` as `PATH: cause`; `run.space.write_failure` makes the one
  line a run that could not write ends with (with, for a full disk, the space the stage needs).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

FAULT_ENV = "DISCOURSE_RL_FAIL_WRITE"
"""`N:ENOSPC` (or EIO, EROFS, EACCES, EDQUOT): the Nth write of this process fails so. Writes are
counted per process (the NER stage's fold processes, if any, count their own)."""

SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EIO: "input/output error",
}
_PHRASES = (
    ("no space left", errno.ENOSPC),
    ("quota exceeded", errno.EDQUOT),
    ("read-only file system", errno.EROFS),
    ("permission denied", errno.EACCES),
    ("input/output error", errno.EIO),
    ("i/o error", errno.EIO),
)
_NOT_IO = (ValueError, TypeError, KeyError, AttributeError, AssertionError, ArithmeticError)
"""Errors of the program, not of the disk (DiscourseRLError too: checked by name below)."""
_WRITE_FAILED = re.compile(r"write failed|failed writing|cannot write|unable to write", re.I)


@dataclass
class _Plan:
    fail_at: int
    code: int
    count: int = 0


_plan: _Plan | None = None
_writes = 0


def writes() -> int:
    """Writes this process has made through `write_point`."""
    return _writes


@contextmanager
def inject(n: int, code: int = errno.ENOSPC) -> Iterator[_Plan]:
    """Within the block, the `n`th write (from 1) fails with `code`; the plan counts writes."""
    global _plan
    before, _plan = _plan, _Plan(n, code)
    try:
        yield _plan
    finally:
        _plan = before


def _env_plan() -> _Plan | None:
    text = os.environ.get(FAULT_ENV)
    if not text:
        return None
    n, _, name = text.partition(":")
    return _Plan(int(n), int(getattr(errno, name or "ENOSPC")))


def write_point(path: str | Path) -> None:
    """A write of `path` is about to become visible: count it, and fail it if a fault is
    planned for it."""
    global _plan, _writes
    _writes += 1
    if _plan is None and (planned := _env_plan()) is not None:
        _plan = planned
    if _plan is None:
        return
    _plan.count += 1
    if _plan.count == _plan.fail_at:
        raise OSError(_plan.code, os.strerror(_plan.code), str(path))


def preallocate(path: str | Path) -> None:
    """Give a memory-mapped file created sparse its blocks now: on a full disk the write then
    fails here with ENOSPC instead of killing the process with SIGBUS when a page is touched."""
    path = Path(path)
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise OSError(exc.errno, exc.strerror, str(path)) from None
        write_point(path)
    except BaseException:
        path.unlink(missing_ok=True)  # a file without its blocks is no use to the next run
        raise
    finally:
        os.close(fd)


def inside(path: str, folder: Path) -> str | None:
    try:
        return Path(path).relative_to(folder).as_posix()
    except ValueError:
        return None


def as_os_error(exc: BaseException, path: Path, temp: Path | None = None) -> BaseException:
    """What to raise when writing `path` (through its temporary `temp`) raised `exc`: an
    `OSError` naming `path` for a failure to write, else `exc` itself."""
    if isinstance(exc, OSError):
        name = exc.filename
        if temp is not None and name is not None:
            rel = inside(str(name), temp)
            if rel is not None:
                # A write inside a temporary folder: name the file where it would have landed.
                target = path / rel if rel != "." else path
                return OSError(exc.errno, exc.strerror, str(target))
        if name is None:
            return OSError(exc.errno, exc.strerror, str(path))
        return exc
    if not isinstance(exc, Exception) or isinstance(exc, _NOT_IO):
        return exc  # an interrupt stays an interrupt; the program's own errors stay theirs
    if type(exc).__name__ == "DiscourseRLError":
        return exc
    text = str(exc).lower()
    for phrase, code in _PHRASES:
        if phrase in text:
            return OSError(code, os.strerror(code), str(path))
    if _WRITE_FAILED.search(text):
        # A library that says only that the write failed (torch.save): a full disk is the
        # likely cause when the folder has no room left.
        code = errno.ENOSPC if _free(path) < (1 << 20) else errno.EIO
        return OSError(code, os.strerror(code), str(path))
    return exc


def _free(path: Path) -> int:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return -1


# --- the one line ------------------------------------------------------------------------------


def is_write_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in CAUSES


def cause(exc: OSError) -> str:
    if exc.errno in CAUSES:
        return CAUSES[exc.errno]
    text = exc.strerror or str(exc)
    return text[:1].lower() + text[1:]


def describe(exc: OSError) -> str:
    """`PATH: cause` of any OSError."""
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{cause(exc)}"


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent); -1 unknown."""
    return _free(path)
