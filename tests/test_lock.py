"""One writer per run folder: a second writer stops with one true line (or waits with --wait),
a lock left by a dead process is taken over, and under torchrun only rank 0 takes it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import discourse_rl
from discourse_rl.app.cli import main
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.run import lock as runlock

HOLD = (
    "import sys, time\n"
    "from discourse_rl.run import lock as runlock\n"
    "with runlock.writing(sys.argv[1], 'run'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(float(sys.argv[2]))\n"
)


def child_env() -> dict[str, str]:
    """This checkout's package for a child process."""
    src = str(Path(discourse_rl.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


@contextmanager
def holder(run: Path, seconds: float = 60.0) -> Iterator[subprocess.Popen[str]]:
    """Another process holding `run`'s lock (as `discourse-rl run` would)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_second_writer_stops_with_one_line_naming_the_holder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    with holder(run) as proc:
        who = runlock.holder(run)
        assert who is not None and who.pid == proc.pid and who.host == socket.gethostname()
        for argv in (
            ["run", "--out", str(run)],
            ["train-ner", "--out", str(run)],
            ["train-agent", "--run", str(run), "--simulate"],
            ["export", "--model", str(run), "--out", str(run / "model.zip")],
        ):
            capsys.readouterr()
            if argv[0] == "export":  # into a run folder: a writer of that folder
                (run / "format.json").touch()
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1, err
            assert err.startswith(
                f"discourse-rl: error: {run}: another discourse-rl is writing this run folder: "
                f"pid {proc.pid} on {socket.gethostname()} since "
            ), err
            assert "(`discourse-rl run`); wait for it to finish, or add --wait" in err
    (run / "format.json").unlink()


def test_a_dead_holders_lock_is_taken_over_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    with holder(run) as proc:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert runlock.holder(run) is None  # the kernel dropped the lock with the process
    capsys.readouterr()
    with runlock.writing(run, "train-agent"):
        mine = runlock.holder(run)
        assert mine is not None and mine.pid == os.getpid()
        assert mine.command == "discourse-rl train-agent"
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"taking over the run folder's lock from pid {proc.pid} on " in err
    assert "which stopped without releasing it" in err
    # A clean end leaves nothing to take over.
    with runlock.writing(run, "run"):
        pass
    assert capsys.readouterr().err == ""


def test_wait_starts_when_the_holder_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    with holder(run, seconds=1.5) as proc:
        t0 = time.monotonic()
        with pytest.raises(runlock.RunBusy), runlock.writing(run, "run"):
            pass
        capsys.readouterr()
        with runlock.waiting(True), runlock.writing(run, "run"):
            # Not before the holder let go (it held on for 1.5 s after saying so).
            assert time.monotonic() - t0 > 1.0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"waiting for pid {proc.pid} on " in err, err


def test_nested_writers_in_one_process_share_the_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"

    @runlock.writes_run("run")
    def outer() -> None:
        runlock.acquire(run)
        inner()
        assert runlock.holder(run) is not None

    @runlock.writes_run("train-ner")
    def inner() -> None:
        runlock.acquire(run)

    outer()
    assert runlock.holder(run) is None


def test_only_rank_0_takes_the_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with runlock.writing(run, "run"):
        assert not runlock.lock_path(run).exists()
    monkeypatch.setenv("RANK", "0")
    with runlock.writing(run, "run"):
        assert runlock.holder(run) is not None


def test_busy_is_a_discourse_rl_error() -> None:
    assert issubclass(runlock.RunBusy, DiscourseRLError)
