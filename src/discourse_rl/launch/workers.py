"""Child processes the package starts itself (NER folds trained side by side, prediction in
shares): one launcher, so every child starts alike.

A child is a fresh Python (`python -m discourse_rl.launch.workers`) that runs one `Job` — a
module-level function and its arguments, pickled — with the environment `child_env` gives it:
its torch / OpenMP / BLAS thread count, passive OpenMP waiting, a fixed hash seed, the parent's
import path, and no launcher rank (a child is not one of torchrun's data-parallel ranks:
`distributed` sees one process). Its output reaches the parent's stderr line by line, prefixed
with the job's name; its return value comes back pickled; a failure becomes one
`DiscourseRLError` line naming the job and the child's last error line.

Why processes: on a shared 2-core CPU two single-thread processes have no barriers between the
cores, where one process's two OpenMP threads wait on each other (docs/ner.md, "Sharing the
cores").
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from discourse_rl.core.common import DiscourseRLError

ERROR_MARK = "discourse-rl worker error: "
"""Starts the last line a failing child writes: its error, for the parent's message."""

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK")
"""What torchrun / accelerate tell their ranks; a child of ours must not inherit them."""


@dataclass(frozen=True)
class Job:
    """One child process's work: `function(*args)`; the function must be importable by name
    (module level), its arguments and result picklable."""

    name: str
    """Names the job in its log lines' prefix and in an error, e.g. 'fold 1'."""
    function: Callable[..., Any]
    """What the child runs."""
    args: tuple[Any, ...] = ()
    """Its arguments."""


def child_env(threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child with `threads` CPU threads (0 = the libraries' own choice)."""
    env = dict(os.environ if base is None else base)
    for name in LAUNCHER_VARS:
        env.pop(name, None)
    if threads > 0:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    # As the package sets it for itself; a value the user chose wins here too.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Same seed, same result: a set's order of strings must not change from child to child.
    env.setdefault("PYTHONHASHSEED", "0")
    env["PYTHONUNBUFFERED"] = "1"
    # The child imports what the parent imports (a source tree, a test's path).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def run_jobs(
    jobs: Sequence[Job], at_once: int, threads: int, out: IO[str] | None = None
) -> list[Any]:
    """Run every job in its own child, at most `at_once` at a time, each with `threads` CPU
    threads; their results in job order. The first failure stops the other children and is
    raised as one line; so is an interrupt of the parent."""
    if not jobs:
        return []
    out = sys.stderr if out is None else out
    lock = threading.Lock()
    live: dict[int, subprocess.Popen[bytes]] = {}
    stopping = threading.Event()
    failed: list[tuple[int, int, str]] = []  # (job, exit status, last line), the cause first
    with tempfile.TemporaryDirectory(prefix="discourse-rl-jobs-") as tmp:
        folder = Path(tmp)
        # One file for all jobs: pickle shares an argument they have in common (the corpus).
        with (folder / "jobs.pkl").open("wb") as f:
            pickle.dump([(j.function, j.args) for j in jobs], f, protocol=pickle.HIGHEST_PROTOCOL)

        def one(i: int) -> None:
            if stopping.is_set():
                return
            cmd = [
                sys.executable,
                "-m",
                "discourse_rl.launch.workers",
                str(folder),
                str(i),
                str(threads),
            ]
            proc = subprocess.Popen(
                cmd,
                env=child_env(threads),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            with lock:
                live[i] = proc
            if stopping.is_set():  # another child failed while this one started
                proc.terminate()
            last = ""
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip()
                if line.strip():
                    last = line
                with lock:
                    out.write(f"[{jobs[i].name}] {line}\n")
                    out.flush()
            code = proc.wait()
            with lock:
                live.pop(i, None)
                if code != 0 and not stopping.is_set():
                    failed.append((i, code, last))
            if code != 0:
                stopping.set()
                _stop(live, lock)

        pool = ThreadPoolExecutor(max(1, at_once))
        try:
            list(pool.map(one, range(len(jobs))))
        except BaseException:
            stopping.set()
            _stop(live, lock)
            raise
        finally:
            pool.shutdown(wait=True)
        if failed:
            # The first to fail is the cause; the others were stopped because of it.
            i, code, last = failed[0]
            if last.startswith(ERROR_MARK):
                why = last[len(ERROR_MARK) :]
            else:  # killed, or died without a Python error: what it was doing last
                why = f"its last output: {last}" if last else "no output"
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            raise DiscourseRLError(f"{jobs[i].name} failed in its own process ({how}): {why}")
        return [pickle.loads((folder / f"result-{i}.pkl").read_bytes()) for i in range(len(jobs))]


def _stop(live: dict[int, subprocess.Popen[bytes]], lock: threading.Lock) -> None:
    with lock:
        procs = list(live.values())
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _orphan_watch(parent: int) -> None:
    """End this child when its parent is gone (killed outright): no fold keeps training, and
    writing, beside a restarted run."""
    while os.getppid() == parent:
        time.sleep(2.0)
    os._exit(1)


def _child(folder: Path, index: int, threads: int) -> int:
    threading.Thread(target=_orphan_watch, args=(os.getppid(),), daemon=True).start()
    try:
        if threads > 0:
            import torch

            torch.set_num_threads(threads)
        with (folder / "jobs.pkl").open("rb") as f:
            function, args = pickle.load(f)[index]
        result = function(*args)
        tmp = folder / f".result-{index}.pkl"
        with tmp.open("wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(folder / f"result-{index}.pkl")
    except BaseException as exc:  # every failure, an interrupt too, becomes the one line
        traceback.print_exc()
        what = str(exc) if isinstance(exc, DiscourseRLError) else f"{type(exc).__name__}: {exc}"
        print(ERROR_MARK + " ".join(what.split()), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
