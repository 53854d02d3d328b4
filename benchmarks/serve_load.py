"""Load on `discourse-rl serve`: concurrent clients against 127.0.0.1, throughput and latency.

    .venv/bin/python -m benchmarks.serve_load              # 8 clients, 60 s
    .venv/bin/python -m benchmarks.serve_load --seconds 5 --json

Starts the server as a child process on a free port of 127.0.0.1 (or uses `--url`, which must
be a loopback address: this never loads anyone else's server), waits for /api/health, reads
the server's resident memory, runs `--clients` threads that each POST sample essays to
/api/label back to back for `--seconds`, reads the memory again and stops the server.
Reports requests/s, p50/p95 latency, errors (any non-200 or failed connection) and the
server's memory before and after. The server labels one essay at a time (see serve.py), so
latency under load is about clients x the single-essay time; its queue admits 32 waiting
requests (serve --queue), so 8 clients never meet its 503.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from benchmarks.common import parser, require, run_benchmark
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import read_essay, sample_dir


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _post(url: str, text: str, timeout: float) -> int:
    req = urllib.request.Request(
        url + "/api/label",
        data=json.dumps({"text": text}).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _wait_healthy(url: str, proc: subprocess.Popen[bytes] | None, limit: float = 300) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        if proc is not None and proc.poll() is not None:
            raise DiscourseRLError(f"the server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise DiscourseRLError(f"{url}: not healthy after {limit:.0f} s")


def run_load(url: str, texts: list[str], clients: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        i = k
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                ok = _post(url, texts[i % len(texts)], timeout=120) == 200
            except OSError:
                ok = False
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt) if ok else None
                errors[0] += 0 if ok else 1
            i += clients

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([float("nan")])
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "requests_per_s": len(latencies) / wall,
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "wall_s": wall,
    }


def start_server(model: Path, stage: str | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """`discourse-rl serve` as a child process on a free port of 127.0.0.1, once healthy."""
    require(model, "no such run folder or model file")
    port = _free_port()
    cmd = [sys.executable, "-m", "discourse_rl.app.cli", "serve", "--model", str(model)]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--stage", stage] if stage else []
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
    except BaseException:
        proc.terminate()
        raise
    return url, proc


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__, model=True)
    ap.add_argument("--url", default=None, help="an already running server on 127.0.0.1")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=60.0)
    run_benchmark(ap, measure, argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    texts = [read_essay(p).text for p in sorted((sample_dir() / "test").glob("*.txt"))]
    proc = None
    if args.url is None:
        url, proc = start_server(args.model)
    else:
        url = args.url.rstrip("/")
        if urlparse(url).hostname not in ("127.0.0.1", "localhost", "::1"):
            raise DiscourseRLError(f"{url}: --url must be a loopback address (127.0.0.1)")
        _wait_healthy(url, None)
    try:
        _post(url, texts[0], timeout=120)  # warm: the first call builds caches
        before = _rss_mib(proc.pid) if proc else float("nan")
        result: dict[str, Any] = dict(run_load(url, texts, args.clients, args.seconds))
        after = _rss_mib(proc.pid) if proc else float("nan")
    finally:
        if proc is not None:
            stop_server(proc)
    result |= {
        "clients": args.clients,
        "rss_before_mib": before,
        "rss_after_mib": after,
        "rss_growth": after / before - 1 if before == before else float("nan"),
        "load_average_1m": os.getloadavg()[0],
    }
    print(
        f"{args.clients} clients, {result['wall_s']:.0f} s: {result['requests']} requests "
        f"({result['requests_per_s']:.2f}/s), {result['errors']} errors; latency p50 "
        f"{result['p50_s']:.3f} s, p95 {result['p95_s']:.3f} s; server memory "
        f"{before:.0f} -> {after:.0f} MiB ({100 * result['rss_growth']:+.1f}%); "
        f"load average {result['load_average_1m']:.1f}"
    )
    return result


if __name__ == "__main__":
    main()
