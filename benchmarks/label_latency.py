"""Latency of labelling one essay of about 500 words, warm: through the Python API and over HTTP.

    .venv/bin/python -m benchmarks.label_latency --model runs/reference --repeats 30
    .venv/bin/python -m benchmarks.label_latency --repeats 5 --json

The essay is the embedded sample's essay closest to `--words` words. API: `Labeller.label` on a
model loaded once (after one warm-up call). HTTP: POST /api/label to `discourse-rl serve`
started as a child process on 127.0.0.1 (one request at a time). Reports p50 and p95 of each
and the load average, since shared cores make every figure pessimistic.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

from benchmarks.common import parser, run_benchmark
from benchmarks.serve_load import _post, start_server, stop_server
from discourse_rl import Labeller
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import load_corpus


def _percentiles(xs: list[float]) -> dict[str, float]:
    return {"p50_s": float(np.percentile(xs, 50)), "p95_s": float(np.percentile(xs, 95))}


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, model=True)
    ap.add_argument("--stage", default=None, help="default: the run's best")
    for flag, default, what in (
        ("--words", 500, "words of the essay labelled"),
        ("--repeats", 20, "how many times it is labelled"),
    ):
        ap.add_argument(flag, type=int, default=default, help=f"{what} ({default})")
    run_benchmark(ap, measure, argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    essays = load_corpus().essays.values()
    essay = min(essays, key=lambda e: abs(e.n_words - args.words))

    labeller = Labeller.load(args.model, args.stage)
    labeller.label(essay.text)
    api = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        labeller.label(essay.text)
        api.append(time.perf_counter() - t)
    del labeller

    url, proc = start_server(args.model, args.stage)
    http = []
    try:
        _post(url, essay.text, timeout=120)
        for _ in range(args.repeats):
            t = time.perf_counter()
            status = _post(url, essay.text, timeout=120)
            http.append(time.perf_counter() - t)
            if status != 200:
                raise DiscourseRLError(f"{url}/api/label: HTTP status {status}")
    finally:
        stop_server(proc)
    result = {
        "essay": essay.id,
        "words": essay.n_words,
        "repeats": args.repeats,
        "api": _percentiles(api),
        "http": _percentiles(http),
        "load_average_1m": os.getloadavg()[0],
    }
    print(
        f"essay {essay.id} ({essay.n_words} words), {args.repeats} repeats: API p50 "
        f"{result['api']['p50_s']:.3f} s, p95 {result['api']['p95_s']:.3f} s; HTTP p50 "
        f"{result['http']['p50_s']:.3f} s, p95 {result['http']['p95_s']:.3f} s; "
        f"load average {result['load_average_1m']:.1f}"
    )
    return result


if __name__ == "__main__":
    main()
