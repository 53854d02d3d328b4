"""How should the NER stage use 2 cores that other processes share? Training-step tokens/s of
each way (OpenMP wait policy, spin count, torch threads, two single-thread processes at once),
idle and beside one busy process at `nice -n 19` and at `nice -n 0`.

    .venv/bin/python -m experiments.cpu_threads --json                   # all options, ~3 min
    .venv/bin/python -m experiments.cpu_threads --options spin-2 passive-2 --backgrounds nice19

Every measurement is a fresh child process (OpenMP reads its settings when torch loads), given
its environment explicitly: the spinning options set `OMP_WAIT_POLICY=ACTIVE` themselves, which
also overrides a machine-wide default such as a sitecustomize that sets PASSIVE. A child trains
MiniLM as the reference does (3 layers frozen, no encoder dropout, bf16 autocast) for
`--steps` steps of `--batch` x `--seq` sub-tokens after one warm-up step, and is killed after
`--timeout` seconds (reported as null). `two-procs-1` runs two single-thread children at
once (as two folds trained side by side would) and reports the sum of their tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.background import KINDS, busy_background
from benchmarks.common import ROOT, run_benchmark

# name -> (torch intra-op threads, environment, processes at once)
OPTIONS: dict[str, tuple[int, dict[str, str], int]] = {
    "spin-2": (2, {"OMP_WAIT_POLICY": "ACTIVE"}, 1),
    "spin-1": (1, {"OMP_WAIT_POLICY": "ACTIVE"}, 1),
    # An explicit spin count wins over the policy in libgomp: spin briefly, then sleep.
    "spincount10k-2": (2, {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "10000"}, 1),
    "passive-2": (2, {"OMP_WAIT_POLICY": "PASSIVE"}, 1),
    "passive-1": (1, {"OMP_WAIT_POLICY": "PASSIVE"}, 1),
    "two-procs-1": (1, {"OMP_WAIT_POLICY": "PASSIVE"}, 2),
}

_CHILD = """
import json, sys, torch
from benchmarks.ner_speed import fresh_model, tokens_per_second
from types import SimpleNamespace
threads, batch, seq, steps = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(threads)
torch.set_num_interop_threads(1)
args = SimpleNamespace(backbone="", attention_dropout=0.0, hidden_dropout=0.0, freeze_layers=3)
rate = tokens_per_second(fresh_model(args), batch, seq, steps, True, True)
print(json.dumps({"train_tokens_per_s": rate}))
"""


def run_children(name: str, args: argparse.Namespace) -> float | None:
    """Summed training tokens/s of the option's child process(es); None if one timed out."""
    threads, env, procs = OPTIONS[name]
    child_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    cmd = [sys.executable, "-c", _CHILD, str(threads), str(args.batch), str(args.seq)]
    cmd.append(str(args.steps))

    def one(_: int) -> float | None:
        try:
            done = subprocess.run(
                cmd, env=child_env, capture_output=True, text=True, timeout=args.timeout, check=True
            )
        except subprocess.TimeoutExpired:
            return None
        return float(json.loads(done.stdout.strip().splitlines()[-1])["train_tokens_per_s"])

    with ThreadPoolExecutor(procs) as pool:
        rates = list(pool.map(one, range(procs)))
    return None if any(r is None for r in rates) else sum(r for r in rates if r is not None)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--options", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    ap.add_argument("--backgrounds", nargs="*", default=["nice19", "nice0"], choices=list(KINDS))
    ap.add_argument("--batch", type=int, default=8, help="windows per step")
    ap.add_argument("--seq", type=int, default=512, help="sub-tokens per window")
    ap.add_argument("--steps", type=int, default=2, help="timed steps per measurement")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per child at most")
    run_benchmark(ap, measure, argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"load_before": os.getloadavg(), "options": {}}
    for name in args.options:
        row: dict[str, Any] = {"idle": run_children(name, args)}
        for kind in args.backgrounds:
            with busy_background(kind, seconds=args.timeout * 3):
                row[kind] = run_children(name, args)
            if row["idle"] and row[kind]:
                row[f"slowdown_{kind}"] = row["idle"] / row[kind]
        print(f"{name}: {row} (load {os.getloadavg()})", flush=True)
        out["options"][name] = row
    out["load_after"] = os.getloadavg()
    return out


if __name__ == "__main__":
    main()
