"""A busy process beside a measurement: what a laptop, a CI runner or a shared server has.

`busy_background("nice19")` starts one single-threaded Python/numpy loop at `nice -n 19` (or
`"nice0"`: normal priority, i.e. one core taken; `"torch19"`: at `nice -n 19`, someone else's
PyTorch program, small training steps with torch's own thread count and OpenMP waiting, as the
job beside which the NER stage's steps once ran 6x slower) and stops it when the block ends,
also on an error, Ctrl-C or SIGTERM. The loop also ends by itself after `seconds` and when its
parent disappears, so a killed benchmark never leaves it spinning.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

KINDS = {"nice19": 19, "nice0": 0, "torch19": 19}

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

# Small steps, as an RL job takes them: many short parallel regions, where OpenMP threads wait.
_TORCH_LOOP = """
import os, sys, time
import torch
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(), torch.nn.Linear(256, 64))
opt = torch.optim.Adam(net.parameters())
x = torch.randn(512, 64)
while time.monotonic() < end and os.getppid() == parent:
    for _ in range(50):
        loss = net(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
"""

# Another program's torch: no thread count or wait policy of ours.
_NOT_OURS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

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

    if kind == "torch19":
        program, env = _TORCH_LOOP, {k: v for k, v in os.environ.items() if k not in _NOT_OURS}
    else:
        program, env = _LOOP, {**os.environ, **_ONE_THREAD}
    return subprocess.Popen(
        [sys.executable, "-c", program, str(os.getpid()), str(seconds)],
        env=env,
        preexec_fn=lower_priority,
        stdin=subprocess.DEVNULL,
    )


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float | None:
    """CPU time the running process has used so far (Linux; None where /proc has no answer):
    how much of the cores the background really got."""
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime, the 14th and 15th fields of the line (the 12th and 13th after the name).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
