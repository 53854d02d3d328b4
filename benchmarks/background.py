"""A busy process beside a measurement: what a laptop, a CI runner or a shared server has.

`busy_background("nice19")` starts one single-threaded Python/numpy loop at `nice -n 19` (or
`"nice0"`: normal priority, i.e. one core taken) and stops it when the block ends, also on an
error, Ctrl-C or SIGTERM. The loop also ends by itself after `seconds` and when its parent
disappears, so a killed benchmark never leaves it spinning.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

KINDS = {"nice19": 19, "nice0": 0}

# One core's worth of work: small matrix products in one thread, checking the clock and the
# parent (re-parented to init or a subreaper when the benchmark dies) between them.
_LOOP = """
import os, sys, time
import numpy as np
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
a = np.random.default_rng(0).random((128, 128))
while time.monotonic() < end and os.getppid() == parent:
    for _ in range(200):
        a = np.tanh(a @ a)
"""

# numpy's BLAS must stay on one thread, or the "one process" would take every core.
_ONE_THREAD = {
    k: "1"
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS")
}


def start_busy(kind: str, seconds: float) -> subprocess.Popen[bytes]:
    """Start the busy loop (see the module's docstring); the caller must stop it."""
    if kind not in KINDS:
        raise ValueError(f"background kind: expected one of {sorted(KINDS)}, got {kind!r}")
    niceness = KINDS[kind]

    def lower_priority() -> None:
        os.nice(niceness)

    return subprocess.Popen(
        [sys.executable, "-c", _LOOP, str(os.getpid()), str(seconds)],
        env={**os.environ, **_ONE_THREAD},
        preexec_fn=lower_priority,
        stdin=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process (by its own id) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait()


@contextmanager
def busy_background(kind: str, seconds: float = 900.0) -> Iterator[subprocess.Popen[bytes]]:
    """While inside, one busy process of `kind` runs (for at most `seconds`)."""
    proc = start_busy(kind, seconds)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through `finally`, which kills the loop

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: SIGTERM stays as it was
        previous = None
    try:
        yield proc
    finally:
        stop(proc)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
