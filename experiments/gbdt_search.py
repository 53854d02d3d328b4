"""gbdt's hyper-parameters by an Optuna search with inner folds on the proxy's training essays
(`spans.search`), then the chosen values scored once on the held-out essays beside the base.

    PYTHONPATH=/tmp/optuna-site:src nice -n 5 .venv/bin/python -m experiments.gbdt_search \\
        --probs /tmp/proxy/oof.npz --data ../shared/data/feedback-prize-2021 \\
        --base paragraph_candidates=true --trials 12 --folds 2

Needs optuna (`pip install optuna`). Prints every trial (mean inner-fold macro F1), the best
values, and the held-out macro F1 of the base and of the chosen values.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from discourse_rl.core.protocol import heldout_score
from discourse_rl.decoders import constrained
from discourse_rl.decoders.gbdt.gbdt import TrainingTable, fit_table
from discourse_rl.decoders.gbdt.model import GbdtConfig, build_candidates
from discourse_rl.decoders.gbdt.search import search
from discourse_rl.decoders.segments import gold_frame
from experiments.span_proxy import add_data_args, parse_settings, proxy_data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_args(ap)
    ap.add_argument("--base", default="", help="KEY=VALUE,... on top of GbdtConfig()")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    corpus, probs, train, held = proxy_data(args)
    base = dataclasses.replace(GbdtConfig(), num_threads=args.threads, **parse_settings(args.base))
    limits = constrained.fit_constrained(
        probs, corpus, train, constrained.ConstrainedConfig(fit=False)
    )
    t = time.perf_counter()
    data = TrainingTable(
        sorted(train),
        limits,
        build_candidates(probs, corpus.essays, sorted(train), base, limits, corpus),
    )
    print(f"table {time.perf_counter() - t:.0f} s, {data.table.cls.size} candidates", flush=True)
    t = time.perf_counter()
    best, history = search(data, corpus, base, args.trials, args.folds)
    search_s = time.perf_counter() - t
    print(f"best {best} ({search_s:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
    held_probs = {i: probs[i] for i in held}
    htab = build_candidates(held_probs, corpus.essays, held, base, limits, corpus)
    gt = gold_frame(corpus, held)
    out = {"best": best, "trials": history, "search_s": search_s}
    for name, cfg in (("base", base), ("searched", dataclasses.replace(base, **best))):
        sc = heldout_score(fit_table(data, corpus, cfg).predict_table(htab), gt)
        print(
            f"held-out {name}: macro F1 {sc.macro_f1:.4f},"
            f" essay TP/(TP+FP+FN) {sc.essay_jaccard:.4f}"
        )
        out[name] = {"macro_f1": sc.macro_f1, "essay_tp_fp_fn": sc.essay_jaccard}
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
