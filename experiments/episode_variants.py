"""Study: which estimator, reward and head should the episode trainer use? Compared on one setup.

    .venv/bin/python -m experiments.episode_variants [--essays 2000] [--passes 10] \\
        [--variants rloo-f1 sc-f1 ppo-f1 rloo-macro rloo-jaccard rloo-ar] [--seeds 0] \\
        [--out runs/episode/variants]

Every variant starts from the same BC policy (`benchmarks.episode_data`) and trains for the
same number of passes over the same training essays; its checkpoint with the best validation
macro F1 is scored on the held-out essays. Prints a markdown table (held-out macro F1 and its
per-class F1, essays per second) and writes it, with the raw rows, under --out. Runs on one
thread: on the shared 2-core machine that is faster than two contended ones. Answer in
experiments/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from benchmarks.common import ROOT, SHARED_DATA, one_line_errors
from benchmarks.episode_data import SETUP, prepare
from discourse_rl.core import metric
from discourse_rl.core.common import atomic_write_text
from discourse_rl.core.data import CLASSES
from discourse_rl.decoders.agent import FineTuneInputs, predict_spans
from discourse_rl.decoders.agent.episode import EpisodeConfig, train_episode
from discourse_rl.decoders.segments import EssaySegments, gold_frame

VARIANTS: dict[str, dict[str, Any]] = {
    "rloo-f1": {"estimator": "rloo", "reward": "f1"},
    "sc-f1": {"estimator": "self_critical", "reward": "f1"},
    "ppo-f1": {"estimator": "ppo", "reward": "f1"},
    "rloo-macro": {"estimator": "rloo", "reward": "macro"},
    "sc-macro": {"estimator": "self_critical", "reward": "macro"},
    "rloo-jaccard": {"estimator": "rloo", "reward": "jaccard"},
    "rloo-ar": {"estimator": "rloo", "reward": "f1", "autoregressive": True},
    "sc-ar": {"estimator": "self_critical", "reward": "f1", "autoregressive": True},
    "rloo-macro-ar": {"estimator": "rloo", "reward": "macro", "autoregressive": True},
}


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--essays", type=int, default=2000)
    ap.add_argument("--passes", type=float, default=10.0)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", nargs="*", default=[], help="EpisodeConfig overrides, key=value")
    ap.add_argument("--data", type=Path, default=SHARED_DATA, help="Kaggle-layout folder")
    ap.add_argument("--setup", type=Path, default=SETUP, help="cached setup (episode_data)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "episode" / "variants")
    args = ap.parse_args()
    s = prepare(args.setup, args.essays, args.data)
    gt = gold_frame(s.corpus, [x.essay_id for x in s.test])
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    rows: list[dict[str, Any]] = []
    bc = metric.score(predict_spans(s.bc_path, s.test), gt)
    rows.append(_row("BC", -1, bc, bc, {}))
    for name in args.variants:
        for seed in args.seeds:
            cfg = EpisodeConfig(
                seed=seed,
                passes=args.passes,
                progress_bar=False,
                **{**VARIANTS[name], **overrides},
            )
            out = args.out / f"{name}_s{seed}"
            inputs = FineTuneInputs(s.train, s.corpus, s.bc_path, out, s.val)
            path = train_episode(inputs, cfg).path
            best, last = (
                metric.score(predict(p, s.test), gt) for p in (path, last_checkpoint(path))
            )
            hist = json.loads((out / "history.json").read_text(encoding="utf-8"))
            rows.append(_row(name, seed, best, last, hist, dataclasses.asdict(cfg)))
            print(_table(rows), flush=True)
    atomic_write_text(args.out / "results.json", json.dumps(rows, indent=2))
    atomic_write_text(args.out / "results.md", _table(rows))


def predict(path: Path, segs: list[EssaySegments]) -> pd.DataFrame:
    """Spans of a trained episode policy (policy.pt of either kind: an autoregressive
    checkpoint decodes with its head)."""
    return predict_spans(path, segs)


def last_checkpoint(path: Path) -> Path:
    """The last checkpoint beside a trainer's best one (policy.pt -> last.pt)."""
    return path.with_name(path.name.replace("policy", "last"))


def _row(
    name: str,
    seed: int,
    score: metric.Score,
    last: metric.Score,
    hist: dict[str, Any],
    cfg: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "variant": name,
        "seed": seed,
        "heldout_macro_f1": score.macro_f1,
        "heldout_last_macro_f1": last.macro_f1,
        "per_class": {c: score.per_class[c].f1 for c in CLASSES},
        "essays_per_second": hist.get("essays_per_second", float("nan")),
        "train_seconds": hist.get("train_seconds", 0.0),
        "best_val_macro_f1": hist.get("best_val_macro_f1"),
        "config": cfg or {},
    }


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| variant | seed | held-out macro F1 | " + " | ".join(CLASSES)
    head += " | last checkpoint | essays/s | s |"
    lines = [head, "|---" * (len(CLASSES) + 6) + "|"]
    for r in rows:
        cells = " | ".join(f"{r['per_class'][c]:.3f}" for c in CLASSES)
        lines.append(
            f"| {r['variant']} | {r['seed'] if r['seed'] >= 0 else '-'} | "
            f"{r['heldout_macro_f1']:.4f} | {cells} | {r['heldout_last_macro_f1']:.4f} | "
            f"{r['essays_per_second']:.0f} | "
            f"{r['train_seconds']:.0f} |"
        )
    summary: dict[str, list[float]] = {}
    for r in rows:
        summary.setdefault(r["variant"], []).append(r["heldout_macro_f1"])
    if any(len(v) > 1 for v in summary.values()):
        lines += ["", "| variant | mean | sd | seeds |", "|---|---|---|---|"]
        for name, v in summary.items():
            sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
            lines.append(f"| {name} | {np.mean(v):.4f} | {sd:.4f} | {len(v)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    one_line_errors(main)
