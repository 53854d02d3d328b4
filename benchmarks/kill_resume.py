"""Kill and resume: the main job, killed with SIGKILL at random moments and re-run each time,
ends with an uninterrupted run's held-out scores, never reads a half-written file, and leaves
no temporary file behind.

    .venv/bin/python -m benchmarks.kill_resume --kills 2
    .venv/bin/python -m benchmarks.kill_resume --kills 5 --seed 1 --json
    .venv/bin/python -m benchmarks.kill_resume --kills 3 --phases bc,ppo,episode

First an uninterrupted `python -m discourse_rl run` (the demo config unless `--config`) into a
temporary folder, its output read line by line to time its phases: NER (encoding the essays,
training the fold heads), NER prediction, BC, PPO, the episode trainer. Then the same command
into a second folder, killed (its whole process group, SIGKILL) once per `--kills`: kill k waits
for phase k (cycling through the phases in order, skipping those the run has already passed),
then a seeded random part of that phase's uninterrupted duration. After each kill every file of
the run folder that a reader would take for finished (JSON, .npz, .pt, .safetensors, TOML; not
TensorBoard logs, Trainer checkpoints or the encoder cache's memory map, which track their own
progress) must load: one that does not counts in `half_written`. The run is re-run until it
finishes; then the held-out scores (RUN/agent/results.json's table and RUN/ner/metrics.json,
wall times left out) are compared with the uninterrupted run's (`identical`), and the
temporary files atomic writes leave when killed are counted (`leftover_tmp`, 0 expected: the
next run removes them).

`--json`: one line `{"kills": N, "identical": true|false, "leftover_tmp": N, ...}`. Takes about
two demo runs plus what each kill throws away (about 3 min per demo run on 2 idle cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import parser, run_benchmark
from discourse_rl.core.common import TEMP_PATTERN, DiscourseRLError
from discourse_rl.core.layout import RunLayout

PHASES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("ner-train", re.compile(r"^\[ner\] running|^encode essays|^fold\d+ head")),
    # The test essays' prediction loads the encoder again once the last fold head is done.
    ("ner-predict", re.compile(r"^Loading weights")),
    ("bc", re.compile(r"^\[agent\] running|^BC:")),
    # PPO's progress bar shows only when it ends: PPO starts when BC's bar is full.
    ("ppo", re.compile(r"^BC:\s+100%|^\[agent\] seed \d+: bc finished earlier")),
    ("episode", re.compile(r"^episode RL")),
)
"""Phases of the main job as its output shows them (a line that starts one)."""
PHASE_NAMES = tuple(name for name, _ in PHASES)
SKIP_PARTS = ("tb", "tensorboard", "checkpoints", "cache")
"""Folders whose files are not written atomically on purpose (see the module's docstring)."""


@dataclass
class Watched:
    """A running main job whose output is followed: the phase it is in, and when each began."""

    proc: subprocess.Popen[bytes]
    started: float
    phase: str = ""
    fold_seen: bool = False
    began: dict[str, float] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    changed: threading.Event = field(default_factory=threading.Event)

    def follow(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := self.proc.stdout.read1(4096):
            buf += chunk
            *done, buf = re.split(rb"[\r\n]", buf)
            for raw in done:
                line = raw.decode("utf-8", "replace").strip()
                if line:
                    self.see(line)
        self.changed.set()

    def see(self, line: str) -> None:
        if len(self.lines) < 10_000:
            self.lines.append(line)
        self.fold_seen = self.fold_seen or line.startswith("fold")
        for rank, (name, pattern) in enumerate(PHASES):
            # Phases only move forward: a later line may mention an earlier phase.
            ahead = not self.phase or rank > PHASE_NAMES.index(self.phase)
            if name == "ner-predict" and not self.fold_seen:
                continue  # the backbone loads before training too
            if ahead and pattern.search(line):
                self.phase = name
                self.began.setdefault(name, time.perf_counter() - self.started)
                self.changed.set()


def start(cmd: list[str]) -> Watched:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    w = Watched(proc, time.perf_counter())
    threading.Thread(target=w.follow, daemon=True).start()
    return w


def finish(w: Watched) -> float:
    """Wait for the job; its wall time. A failed job is an error naming its last lines."""
    code = w.proc.wait()
    seconds = time.perf_counter() - w.started
    time.sleep(0.1)
    if code != 0:
        tail = " | ".join(w.lines[-3:])
        raise DiscourseRLError(f"main job failed (exit {code}): {tail}")
    return seconds


def kill_in(w: Watched, phase: str, delay: float) -> str | None:
    """SIGKILL the job `delay` seconds into `phase` (or later, when it started past it); the
    phase it was killed in, or None when it finished first."""
    target = PHASE_NAMES.index(phase)
    while w.proc.poll() is None:
        if w.phase and PHASE_NAMES.index(w.phase) >= target:
            break
        w.changed.wait(0.2)
        w.changed.clear()
    deadline = time.perf_counter() + delay
    while w.proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.05)
    if w.proc.poll() is not None:
        return None
    os.killpg(w.proc.pid, signal.SIGKILL)
    w.proc.wait()
    return w.phase


def scores(run: Path) -> dict[str, Any]:
    """The held-out scores of a finished run, without wall times."""
    lay = RunLayout(run)
    agent = json.loads(lay.agent_results.read_text())
    ner = json.loads(lay.ner_metrics.read_text())
    return {
        "agent": agent["stages"],
        "ner": {k: v for k, v in ner.items() if k != "seconds"},
    }


def unreadable(run: Path) -> list[str]:
    """Files a reader would take for finished that do not load."""
    bad = []
    for path in sorted(run.rglob("*")):
        rel = path.relative_to(run)
        if not path.is_file() or TEMP_PATTERN.match(path.name):
            continue
        if any(part in SKIP_PARTS or part.startswith("checkpoint-") for part in rel.parts[:-1]):
            continue
        if not _loads(path):
            bad.append(str(rel))
    return bad


def _loads(path: Path) -> bool:
    try:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".toml":
            import tomllib

            tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".npz":
            with np.load(path) as z:
                for k in z.files:
                    z[k]
        elif path.suffix == ".pt":
            import torch

            torch.load(path, map_location="cpu", weights_only=False)
        elif path.suffix == ".safetensors":
            from safetensors.torch import load_file

            load_file(str(path))
    except Exception:  # any failure to load is what is counted
        return False
    return True


def leftover_temporaries(run: Path) -> list[str]:
    return [str(p.relative_to(run)) for p in run.rglob(".*") if TEMP_PATTERN.match(p.name)]


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--kills", type=int, default=3, help="how many times to kill the job")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    ap.add_argument(
        "--phases",
        default=",".join(PHASE_NAMES),
        help="phases to kill in, cycled through in order (default: all of them)",
    )
    ap.add_argument("--config", type=Path, default=None, help="run config (default: the demo)")
    ap.add_argument("--data", type=Path, default=None, help="data folder (default: the sample)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the run folders here")
    run_benchmark(ap, measure, argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.kills < 1:
        raise DiscourseRLError("--kills: at least 1")
    unknown = set(p.strip() for p in args.phases.split(",")) - set(PHASE_NAMES)
    if unknown:
        raise DiscourseRLError(f"--phases: unknown {sorted(unknown)}; known: {PHASE_NAMES}")
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="kill_resume_")
    work = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    try:
        return _measure(args, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _command(args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, "-m", "discourse_rl", "run", "--out", str(out)]
    if args.config is not None:
        cmd += ["--config", str(args.config)]
    if args.data is not None:
        cmd += ["--data", str(args.data)]
    return cmd


def _measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed)
    whole_dir, killed_dir = work / "whole", work / "killed"
    print(f"uninterrupted run into {whole_dir} ...", flush=True)
    w = start(_command(args, whole_dir))
    total = finish(w)
    began = dict(w.began)
    order = sorted(began, key=lambda p: began[p])
    ends = [*(began[p] for p in order[1:]), total]
    length = {p: max(0.5, e - began[p]) for p, e in zip(order, ends, strict=True)}
    print(
        f"  {total:.0f} s; phases began at " + ", ".join(f"{p} {s:.0f} s" for p, s in began.items())
    )
    wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
    seen = [p for p in PHASE_NAMES if p in began and p in wanted]
    if not seen:
        raise DiscourseRLError(f"--phases {args.phases}: none of them showed in the run")

    kills: list[dict[str, Any]] = []
    half: list[str] = []
    runs = 0
    for k in range(args.kills):
        phase = seen[k % len(seen)]
        delay = float(rng.uniform(0.05, 0.9)) * length[phase]
        w = start(_command(args, killed_dir))
        runs += 1
        hit = kill_in(w, phase, delay)
        if hit is None:
            print(f"  kill {k + 1}: the run finished before {phase} + {delay:.1f} s", flush=True)
            continue
        at = time.perf_counter() - w.started
        bad = unreadable(killed_dir)
        half += bad
        kills.append({"phase": hit, "after_s": round(at, 1), "half_written": bad})
        print(f"  kill {k + 1}: SIGKILL in {hit} after {at:.1f} s; unreadable files: {len(bad)}")
    print("final re-run ...", flush=True)
    last = start(_command(args, killed_dir))
    final_s = finish(last)
    runs += 1
    leftover = leftover_temporaries(killed_dir)
    identical = scores(killed_dir) == scores(whole_dir)
    print(f"  {final_s:.0f} s; identical scores: {identical}; leftover temporary files: {leftover}")
    return {
        "kills": len(kills),
        "identical": identical,
        "leftover_tmp": len(leftover),
        "half_written": len(half),
        "killed_in": [k["phase"] for k in kills],
        "uninterrupted_s": round(total, 1),
        "final_rerun_s": round(final_s, 1),
        "runs": runs,
        "detail": kills,
    }


if __name__ == "__main__":
    main()
