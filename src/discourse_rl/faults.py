"""Faults of the machine while a run is written: a full disk, a read-only folder, a permission
error, an I/O error.

- Every write of a run's files (the atomic writes of `common`, and the memory-mapped caches
  preallocated by `preallocate`) passes `write_point` just before the file becomes visible: the
  place where a fault can be injected (`inject`, or the environment variable `FAULT_ENV` for a
  process started from the command line) to test what a real one would do.
- `as_os_error` turns a library's failure to write (safetensors' `SafetensorError`, torch's
  `RuntimeError`) into an `OSError` naming the file, so that one kind of error reaches the top.
- `write_failure` turns that `OSError` into the one line the user sees: the path, the cause,
  and for a full disk how much space the stage needs (measured when it last finished, recorded
  in ``RUN/sizes.json``, else estimated) and how much is free.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FAULT_ENV = "DISCOURSE_RL_FAIL_WRITE"
"""`N:ENOSPC` (or EIO, EROFS, EACCES, EDQUOT): the Nth write of this process fails so. Writes are
counted per process (the NER stage's fold processes, if any, count their own)."""

SIZES_NAME = "sizes.json"
"""RUN/sizes.json: bytes each stage's files took when it last finished."""

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


def _inside(path: str, folder: Path) -> str | None:
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
            rel = _inside(str(name), temp)
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


@dataclass
class _Current:
    root: Path
    stage: str
    corpus: Any
    cfg: Any


_current: _Current | None = None


def stage_started(root: str | Path, stage: str, corpus: Any = None, cfg: Any = None) -> None:
    """The stage the run is writing now, with its inputs (what a full disk's line is about)."""
    global _current
    _current = _Current(Path(root), stage, corpus, cfg)


def stage_of(root: Path, path: Path) -> str | None:
    """The stage whose files `path` is, by its place in the run folder."""
    rel = _inside(str(Path(path).resolve()), root.resolve())
    if rel is None:
        return None
    first = rel.split("/", 1)[0]
    if first in ("ner", "decode.json"):
        return "ner"
    if first in ("agent", "segments.npz", "tb"):
        return "agent"
    if first == "spans":
        return "spans"
    return None


def sizes_path(root: str | Path) -> Path:
    return Path(root) / SIZES_NAME


def stage_paths(root: Path, stage: str) -> list[Path]:
    if stage == "ner":
        return [root / "ner", root / "decode.json"]
    if stage == "agent":
        return [root / "agent", root / "segments.npz", root / "tb"]
    return [root / stage]


def du(paths: list[Path]) -> int:
    """Bytes `paths` take on disk (a sparse file counts for the blocks it has)."""
    files: list[Path] = []
    for p in paths:
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += [f for f in p.rglob("*") if f.is_file()]
    total = 0
    for f in files:
        st = f.stat()
        total += min(st.st_size, st.st_blocks * 512)
    return total


def read_sizes(root: str | Path) -> dict[str, int]:
    try:
        blob = json.loads(sizes_path(root).read_text(encoding="utf-8"))
        return {str(k): int(v) for k, v in blob.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def record_size(root: str | Path, stage: str) -> None:
    """After `stage` finished: how many bytes its files take, for the next full disk's line."""
    from discourse_rl.common import atomic_write_text

    global _current
    root = Path(root)
    sizes = read_sizes(root)
    sizes[stage] = du(stage_paths(root, stage))
    atomic_write_text(sizes_path(root), json.dumps(sizes, indent=2, sort_keys=True) + "\n")
    if _current is not None and _current.stage == stage:
        _current = None


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def space_hint(root: Path | None, path: Path) -> str:
    """For a full disk: what the stage writing `path` needs, and what is free."""
    stage = None
    estimate: int | None = None
    if _current is not None and (root is None or _current.root.resolve() == root.resolve()):
        root, stage = _current.root, _current.stage
        estimate = estimate_stage(stage, root, _current.corpus, _current.cfg)
    if root is not None and stage is None:
        stage = stage_of(root, path)
    free = _free(path)
    free_text = f"{_mb(free)} free" if free >= 0 else "free space unknown"
    if root is None or stage is None:
        return f" ({free_text})"
    measured = read_sizes(root).get(stage)
    if measured is not None:
        need = f"the {stage} stage needs about {_mb(measured)} (measured when it last finished)"
    elif estimate is not None:
        need = f"the {stage} stage needs about {_mb(estimate)} (estimated)"
    else:
        need = f"the {stage} stage's size is not known yet"
    done = du(stage_paths(root, stage))
    return f" ({need}; {_mb(done)} of it written, {free_text})"


def write_failure(exc: OSError, root: str | Path | None) -> Exception:
    """The one-line error of a run that could not write: path, cause, space, what to do."""
    from discourse_rl.common import DiscourseRLError

    root = Path(root) if root is not None else None
    path = Path(exc.filename) if exc.filename else (root or Path("."))
    hint = space_hint(root, path) if exc.errno in SPACE_ERRORS else ""
    again = (
        "; the run folder keeps every finished stage: fix the cause and run the same command "
        "again to continue"
        if root is not None
        else ""
    )
    return DiscourseRLError(f"{path}: cannot write: {cause(exc)}{hint}{again}")


def ner_estimate(n_words: int, hidden: int, backbone_bytes: int, frozen: bool, folds: int) -> int:
    """Bytes the NER stage writes: the encoder's files, the frozen word vectors (float16), the
    fold models and the word probabilities (float16, 15 labels, out of fold and test)."""
    # Frozen: the encoder's weights once, its word vectors, small heads. Finetune: a whole
    # model per fold (the encoder folder then holds its config and tokenizer only).
    models = backbone_bytes if frozen else backbone_bytes * folds
    cache = n_words * hidden * 2 if frozen else 0
    probs = 2 * n_words * 15 * 2
    return int(models + cache + probs)


def folder_bytes(path: str | Path) -> int:
    p = Path(path)
    return du([p]) if p.exists() else 0


def estimate_stage(stage: str, root: Path, corpus: Any, cfg: Any) -> int | None:
    """A rough size of `stage`'s files before it ever finished (None: no estimate)."""
    if corpus is None or cfg is None:
        return None
    try:
        if stage == "ner":
            from discourse_rl.ner import mpnet_parts
            from discourse_rl.ner.backbone import resolve_backbone

            if cfg.ner.backbone == mpnet_parts.NAME:
                return None  # resolving it may assemble it: not while the disk is full

            backbone = Path(resolve_backbone(cfg.ner.backbone))
            hidden = 384
            config = backbone / "config.json"
            if config.is_file():
                hidden = int(json.loads(config.read_text()).get("hidden_size", hidden))
            n_words = sum(len(e.words) for e in corpus.essays.values())
            frozen = cfg.ner.mode == "frozen"
            return ner_estimate(n_words, hidden, folder_bytes(backbone), frozen, cfg.ner.folds)
        oof = root / "ner" / "oof.npz"
        if oof.is_file():
            # The second stages' files (segments, features, models) scale with the essays'.
            return 2 * oof.stat().st_size + (5 << 20)
    except Exception:
        return None
    return None
