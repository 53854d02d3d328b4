"""Study (with episode_variants): score trained episode policies on the 400 held-out essays and
on 2,000 fresh ones; mean and sd per variant.

    .venv/bin/python -m experiments.episode_score runs/episode/variants runs/episode/seeds \\
        [--fresh 2000] [--out runs/episode/score.md]

Every folder NAME_sSEED below the given folders that holds a policy.pt (or policy_ar.pt) is
scored with its best-validation checkpoint and its last one; the BC policy of the setup
(`benchmarks.episode_data`) is scored alongside. The fresh essays are drawn from the shared
data outside the setup's 2,000, with simulated probabilities of the same noise: 2,000 of them
make differences of about 0.01 macro F1 readable, which the 160 validation and 400 held-out
essays do not. Answer in experiments/README.md.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import ROOT, SHARED_DATA, one_line_errors, require
from benchmarks.episode_data import SETUP, fresh_heldout, prepare
from discourse_rl.core import metric
from discourse_rl.core.common import atomic_write_text
from discourse_rl.decoders.segments import gold_frame
from experiments.episode_variants import last_checkpoint, predict


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", type=Path, nargs="+")
    ap.add_argument("--fresh", type=int, default=2000)
    ap.add_argument("--data", type=Path, default=SHARED_DATA, help="Kaggle-layout folder")
    ap.add_argument("--setup", type=Path, default=SETUP, help="cached setup (episode_data)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "episode" / "score.md")
    args = ap.parse_args()
    s = prepare(args.setup, data=args.data)
    fresh = fresh_heldout(s, args.fresh)
    sets = {"held-out 400": s.test, f"fresh {args.fresh}": fresh}
    gts = {k: gold_frame(s.corpus, [x.essay_id for x in v]) for k, v in sets.items()}

    def scores(path: Path) -> list[float]:
        return [metric.score(predict(path, sets[k]), gts[k]).macro_f1 for k in sets]

    rows: list[tuple[str, int, list[float]]] = [("BC", 0, scores(s.bc_path) * 2)]
    for folder in args.folders:
        for run in sorted(require(folder, "no such folder of trained policies").iterdir()):
            m = re.fullmatch(r"(.+)_s(\d+)", run.name)
            best = next((p for p in (run / "policy.pt", run / "policy_ar.pt") if p.is_file()), None)
            if m is None or best is None:
                continue
            rows.append((m.group(1), int(m.group(2)), scores(best) + scores(last_checkpoint(best))))
            print(rows[-1], flush=True)
    cols = [f"{k} ({c})" for c in ("best val", "last") for k in sets]
    lines = ["| variant | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for name in dict.fromkeys(r[0] for r in rows):
        vals = np.array([r[2] for r in rows if r[0] == name])
        seeds = ", ".join(str(r[1]) for r in rows if r[0] == name)
        cells = []
        for j in range(vals.shape[1]):
            sd = f" ± {vals[:, j].std(ddof=1):.4f}" if len(vals) > 1 else ""
            cells.append(f"{vals[:, j].mean():.4f}{sd}")
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    atomic_write_text(args.out, text)


if __name__ == "__main__":
    one_line_errors(main)
