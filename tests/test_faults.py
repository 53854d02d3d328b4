"""Faults of the machine while a run is written, in the spirit of SQLite's I/O-error tests: the
Nth write of a tiny run fails (ENOSPC or EIO); the command stops with one line naming the path
and the cause, leaves nothing a later command would trust, and the next run finishes with the
same results as an uninterrupted one.

`test_every_write_fails_once` tries every N up to the number of writes of the tiny run (about
70; some 15 minutes on 2 cores): it runs when DISCOURSE_RL_ALL_WRITES=1. The default run tries
a sample of them, one in each stage.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from benchmarks.kill_resume import unreadable
from discourse_rl.app.cli import main
from discourse_rl.app.labeller import Labeller, offered_stages
from discourse_rl.core import artefacts, faults
from discourse_rl.core.common import TEMP_PATTERN, DiscourseRLError, atomic_save, atomic_write_text
from discourse_rl.core.data import load_corpus, sample_dir
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.records import read_stages
from discourse_rl.run import lock as runlock
from discourse_rl.run import space
from tests.test_pipeline import _config
from tests.tiny import save_tiny_bert

N_ESSAYS = 12


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A data folder of 12 essays, a tiny config, and an uninterrupted run with its writes."""
    root = tmp_path_factory.mktemp("faults")
    backbone = save_tiny_bert(root / "backbone", 16, 1, 512)
    data = root / "data"
    (data / "train").mkdir(parents=True)
    src = sample_dir()
    ids = sorted(load_corpus().essays)[:N_ESSAYS]
    for i in ids:
        shutil.copy(src / "train" / f"{i}.txt", data / "train" / f"{i}.txt")
    train = pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False)
    train[train["id"].isin(ids)].to_csv(data / "train.csv", index=False)
    config = _config(root / "tiny.toml", backbone, bc_epochs=1)
    whole = root / "whole"
    before = faults.writes()
    assert main(_run(data, whole, config)) == 0
    return {
        "data": data,
        "config": config,
        "whole": whole,
        "writes": faults.writes() - before,
        "root": root,
    }


def _run(data: Path, out: Path, config: Path, *more: str) -> list[str]:
    return ["run", "--data", str(data), "--out", str(out), "--config", str(config), *more]


def _timeless(x: Any) -> Any:
    """A JSON value without its wall times (they differ between any two runs)."""
    if isinstance(x, dict):
        return {k: _timeless(v) for k, v in x.items() if "second" not in k}
    if isinstance(x, list):
        return [_timeless(v) for v in x]
    return x


def _content(path: Path) -> Any:
    """A stage file's content as a comparison sees it: JSON without wall times; a torch file's
    tensors (its bytes name the temporary file it was saved as); else the sha256."""
    if path.suffix == ".json":
        return _timeless(json.loads(path.read_text()))
    if path.suffix == ".pt":
        import hashlib

        import torch

        blob = torch.load(path, map_location="cpu", weights_only=False)
        state = blob.pop("state_dict")
        tensors = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in state.items()}
        return {"tensors": tensors, **{k: repr(v) for k, v in blob.items()}}
    return artefacts.entry(path).sha256


def results(run: Path) -> dict[str, Any]:
    """What an uninterrupted run must equal: the content of every file a stage's manifest
    lists (held-out scores, thresholds, fold models, policies), wall times left out."""
    lay = RunLayout(run)
    out = {}
    for stage in ("ner", "gbdt", "agent"):
        for rel in json.loads(lay.manifest(stage).read_text())["files"]:
            out[rel] = _content(run / rel)
    return out


def _consistent(run: Path) -> None:
    """Nothing a later command would trust is partial: every stage recorded as finished has a
    manifest its files match; every file a reader takes for finished loads; no temporary file
    is left; a reader either loads a stage or refuses it in one line."""
    lay = RunLayout(run)
    leftovers = [p for p in run.rglob("*") if TEMP_PATTERN.match(p.name)]
    assert not leftovers, leftovers
    assert not unreadable(run)
    for stage in read_stages(lay.stages):
        assert lay.manifest(stage).is_file(), stage
        assert not artefacts.damaged(lay, stage), stage
    for stage in offered_stages(run):
        try:
            Labeller.load(run, stage)
        except DiscourseRLError as exc:
            assert "\n" not in str(exc)
            assert "incomplete" in str(exc) or "not trained" in str(exc), exc


def _fault_then_resume(
    tiny: dict[str, Any], n: int, code: int, capsys: pytest.CaptureFixture[str]
) -> str:
    """Write `n` fails with `code`: one line, a consistent folder; the re-run then finishes
    with the uninterrupted run's results. Returns the error line."""
    run = tiny["root"] / f"run-{n}-{errno.errorcode[code]}"
    shutil.rmtree(run, ignore_errors=True)
    argv = _run(tiny["data"], run, tiny["config"])
    capsys.readouterr()
    with faults.inject(n, code) as plan:
        status = main(argv)
    err = capsys.readouterr().err
    assert plan.count >= n, f"the run made only {plan.count} writes"
    assert status == 2, (n, err[-2000:])
    lines = [line for line in err.splitlines() if line.startswith("discourse-rl: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    cause = faults.CAUSES[code]
    assert f": cannot write: {cause}" in lines[0], lines[0]
    assert str(run) in lines[0], lines[0]
    if code == errno.ENOSPC:
        assert " MB free" in lines[0], lines[0]
    _consistent(run)
    assert runlock.holder(run) is None  # the lock went with the command
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    assert results(run) == results(tiny["whole"])
    shutil.rmtree(run)
    return lines[0]


def test_tiny_run_writes(tiny: dict[str, Any]) -> None:
    # Every artefact of the tiny run, bookkeeping included, is written through the fault point.
    assert 60 <= tiny["writes"] <= 120, tiny["writes"]


@pytest.mark.parametrize(
    ("where", "code"),
    [
        (0.0, errno.ENOSPC),
        (0.2, errno.EIO),
        (0.45, errno.ENOSPC),
        (0.7, errno.EIO),
        (1.0, errno.ENOSPC),
    ],
)
def test_sampled_write_fails(
    tiny: dict[str, Any], where: float, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    n = max(1, round(where * tiny["writes"]))
    _fault_then_resume(tiny, n, code, capsys)


ALL_WRITES = os.environ.get("DISCOURSE_RL_ALL_WRITES", "")
"""`1`: every write; `K/M`: share K (from 0) of M of them, for M processes side by side."""


@pytest.mark.skipif(
    not ALL_WRITES,
    reason="every write of a tiny run, one by one (about 15 min): DISCOURSE_RL_ALL_WRITES=1",
)
def test_every_write_fails_once(tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    k, _, m = (ALL_WRITES if "/" in ALL_WRITES else "0/1").partition("/")
    share = [n for n in range(1, tiny["writes"] + 1) if n % int(m) == int(k)]
    for n in share:
        line = _fault_then_resume(tiny, n, errno.ENOSPC if n % 2 else errno.EIO, capsys)
        with capsys.disabled():
            print(f"write {n} of {tiny['writes']}: {line}", flush=True)
    with capsys.disabled():
        print(f"fault injection: {len(share)} of {tiny['writes']} writes covered", flush=True)


# --- pieces --------------------------------------------------------------------------------


def test_library_write_errors_become_os_errors(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"

    class SafetensorError(Exception):
        pass

    def full(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise SafetensorError("Error while serializing: I/O error: No space left on device")

    with pytest.raises(OSError) as caught:
        atomic_save(target, full)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []
    # A program error stays what it is.
    with pytest.raises(ValueError, match="bad"):
        atomic_save(target, lambda tmp: (_ for _ in ()).throw(ValueError("bad")))


def test_read_only_folder_is_one_line(
    tmp_path: Path, tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    if os.geteuid() == 0:
        # root writes anywhere: the folder's permissions cannot stop it; inject what they would.
        with faults.inject(1, errno.EACCES):
            status = main(_run(tiny["data"], tmp_path / "run", tiny["config"]))
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        status = main(_run(tiny["data"], locked / "run", tiny["config"]))
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "permission denied" in err, err


def test_full_disk_line_names_the_space_a_stage_needs(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    atomic_write_text(space.sizes_path(run), json.dumps({"ner": 95_000_000}))
    (run / "ner").mkdir()
    exc = OSError(errno.ENOSPC, "No space left on device", str(run / "ner" / "oof.npz"))
    line = str(space.write_failure(exc, run))
    assert line.startswith(f"{run / 'ner' / 'oof.npz'}: cannot write: no space left on device")
    assert "the ner stage needs about 95.0 MB (measured when it last finished)" in line
    assert "MB free" in line and "run the same command again" in line
    # A stage never finished: estimated from its inputs.
    est = space.ner_estimate(
        n_words=200_000, hidden=384, backbone_bytes=90_000_000, frozen=True, folds=3
    )
    assert 200e6 < est < 300e6  # the encoder, its word vectors (float16), the probabilities


def test_reader_refuses_an_incomplete_stage(
    tiny: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny["whole"], run)
    lay = RunLayout(run)
    Labeller.load(run, "bc")
    # The agent stage being rewritten: the writer holds the lock and its manifest is gone.
    lay.manifest("agent").rename(tmp_path / "agent.json")
    with runlock.writing(run, "run"):
        me = f"pid {os.getpid()} on "
        with pytest.raises(DiscourseRLError, match=f"the agent stage is being rewritten by {me}"):
            Labeller.load(run, "bc")
        Labeller.load(run, "ner-naive")  # the NER stage is complete: readable meanwhile
        capsys.readouterr()
        assert main(["info", "--model", str(run), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert "bc" not in [r["stage"] for r in rows] and "gbdt" in [r["stage"] for r in rows]
    # Nobody writing: a run that stopped before finishing the stage.
    with pytest.raises(DiscourseRLError, match=r"the agent stage is incomplete .* finish it with"):
        Labeller.load(run, "bc")
    (tmp_path / "agent.json").rename(lay.manifest("agent"))


def test_reader_notices_a_stage_replaced_while_it_loads(
    tiny: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny["whole"], run)
    import discourse_rl.ner as ner

    real = ner.NerPredictor.load

    def load_while_rewritten(*args: Any, **kw: Any) -> Any:
        out = real(*args, **kw)
        manifest = RunLayout(run).manifest("ner")
        manifest.write_text(manifest.read_text().replace('"sha256"', '"sha256" ', 1))
        return out

    monkeypatch.setattr(ner.NerPredictor, "load", load_while_rewritten)
    with pytest.raises(DiscourseRLError, match="the ner stage was rewritten while it was being"):
        Labeller.load(run, "ner-naive")


def test_two_writers_at_once(tiny: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 26's case: `run` twice into one folder. The second stops with one true line naming
    the first; with --wait it starts when the first is done (and finds every stage done)."""
    import subprocess
    import sys
    import time

    from tests.test_lock import child_env

    run = tiny["root"] / "two-writers"
    shutil.rmtree(run, ignore_errors=True)
    argv = _run(tiny["data"], run, tiny["config"])
    first = subprocess.Popen(
        [sys.executable, "-m", "discourse_rl", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    try:
        deadline = time.monotonic() + 120
        while runlock.holder(run) is None:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert f"another discourse-rl is writing this run folder: pid {first.pid} on " in err
        assert main([*argv, "--wait"]) == 0
        captured = capsys.readouterr()
        assert f"waiting for pid {first.pid} on " in captured.err
        assert "(stages run: none)" in captured.out
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
    assert first.stderr is not None and "error" not in first.stderr.read()
    assert results(run) == results(tiny["whole"])


def test_fault_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DISCOURSE_RL_FAIL_WRITE=N:CODE fails the Nth write of a process started from a shell."""
    monkeypatch.setattr(faults, "_plan", None)
    monkeypatch.setenv(faults.FAULT_ENV, "2:EIO")
    atomic_write_text(tmp_path / "a.txt", "a")
    with pytest.raises(OSError) as caught:
        atomic_write_text(tmp_path / "b.txt", "b")
    assert caught.value.errno == errno.EIO and caught.value.filename == str(tmp_path / "b.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
