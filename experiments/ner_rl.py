"""Study: how should the tagger's RL phase (`ner.rl`) sample, reward and regularise, and does it
beat more cross-entropy for the same wall time?

    .venv/bin/python -m experiments.ner_rl --run RUN --data ../shared/data/feedback-prize-2021 \\
        [--fold 0] [--steps 100] [--variants base t1 t05 k4 k16 kl0 kl02 greedy lattice f1 ce] \\
        [--control base] [--out runs/ner_rl/study]

RUN is a finished 'finetune' NER run (read only: its encoder, folds and fold-k model are linked
into a work folder under --out). Every variant starts from fold k's cross-entropy model and
trains on fold k's training essays only; it is scored on fold k's held-out essays (out of
fold): naive macro F1, and tuned macro F1 cross-fitted over a seeded two-way split of those
essays (minima fitted on one half, scored on the other, and the reverse). `--control V` also
trains the honest control for variant V's measured training seconds. The frozen layers' states
are computed once (--out/shared/frozen_states) and shared by the variants.

Prints a markdown table and writes it with the raw rows to --out/results.{md,json}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from discourse_rl.core.common import atomic_write_text, config_from_dict, load_toml
from discourse_rl.core.data import load_corpus, load_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders.decode import evaluate_decoding
from discourse_rl.ner import rl
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.finetune import _prepare, _state_cache
from discourse_rl.ner.inference import default_device
from discourse_rl.ner.run import fold_split

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},  # masked sampler, K = 8, RLOO, macro reward, KL 0.05 (or what --set says)
    "t1": {"temperature": 1.0},
    "t05": {"temperature": 0.5},
    "k4": {"samples": 4},
    "k16": {"samples": 16},
    "kl0": {"kl_beta": 0.0},
    "kl02": {"kl_beta": 0.2},
    "greedy": {"baseline": "greedy"},
    "lattice": {"sampler": "lattice"},
    "f1": {"reward": "f1"},
    "ce": {"ce_weight": 0.1},
}


def _work_run(src: Path, out: Path, fold: int, cache: Path) -> RunLayout:
    """A run folder for one variant: the source's NER settings, folds, encoder and fold model,
    linked (never written), and the shared frozen-state cache."""
    s, d = RunLayout(src), RunLayout(out)
    d.ner.mkdir(parents=True, exist_ok=True)
    for path in (s.ner_config, s.ner_folds):
        shutil.copy(path, d.ner / path.name)
    if not d.ner_encoder.exists():
        os.symlink(s.ner_encoder.resolve(), d.ner_encoder)
    f_src, f_dst = s.fold(fold), d.fold(fold)
    f_dst.root.mkdir(parents=True, exist_ok=True)
    for path in (f_src.model, f_src.oof):
        if not (f_dst.root / path.name).exists():
            os.symlink(path.resolve(), f_dst.root / path.name)
    cache.mkdir(parents=True, exist_ok=True)
    if not d.ner_frozen_states.exists():
        os.symlink(cache.resolve(), d.ner_frozen_states)
    return d


def _scores(probs: dict[str, Any], corpus: Any, seed: int) -> dict[str, float]:
    """Naive and cross-fitted tuned macro F1 over `probs` (one fold's held-out essays)."""
    ids = sorted(probs)
    half = np.random.default_rng(seed).permutation(len(ids)) % 2
    report = evaluate_decoding(probs, corpus, dict(zip(ids, half.tolist(), strict=True)))
    return {
        "naive": round(report.naive.macro_f1, 4),
        "tuned_cf": round(report.tuned_cross_fitted.macro_f1, 4),
        **{f"tuned_{c}": round(s.f1, 3) for c, s in report.tuned_cross_fitted.per_class.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="finished 'finetune' NER run")
    ap.add_argument("--data", type=Path, required=True, help="Kaggle-layout folder")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=0.0, help="per variant (0 = --steps)")
    ap.add_argument("--variants", nargs="+", default=["base"])
    ap.add_argument("--control", default="", help="a variant whose seconds the control gets")
    ap.add_argument("--set", nargs="*", default=[], help="NerRlConfig overrides, key=value")
    ap.add_argument(
        "--max-train",
        type=int,
        default=0,
        help="seeded subset of fold k's training essays (0 = all)",
    )
    ap.add_argument(
        "--max-held", type=int, default=0, help="seeded subset of its held-out essays (0 = all)"
    )
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/ner_rl/study"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    src = RunLayout(args.run)
    raw = load_toml(src.ner_config)
    ner = config_from_dict(NerConfig, raw.get("ner", {}), where=str(src.ner_config), table="ner")
    seed = int(raw.get("seed", 0))
    folds: dict[str, int] = json.loads(src.ner_folds.read_text())
    corpus = load_corpus(args.data)
    rng = np.random.default_rng(seed)
    train_ids, held = fold_split(folds, args.fold)
    if args.max_train:
        train_ids = sorted(rng.permutation(train_ids)[: args.max_train].tolist())
    if args.max_held:
        held = sorted(rng.permutation(held)[: args.max_held].tolist())
    # Only these essays are tokenised, cached and predicted: the folds file keeps its own.
    corpus = corpus.subset(sorted(i for i in (*train_ids, *held) if i in corpus.essays))
    overrides = dict(kv.split("=", 1) for kv in args.set)
    base = config_from_dict(rl.NerRlConfig, {"enabled": True, **_typed(overrides)}, where="--set")
    base = dataclasses.replace(base, steps=args.steps, max_seconds=args.seconds)
    cache = args.out / "shared" / "frozen_states"
    rows: list[dict[str, Any]] = []
    ce = {i: p for i, p in load_word_probs(src.fold(args.fold).oof).items() if i in set(held)}
    rows.append({"variant": "cross-entropy (start)", "seconds": 0.0, **_scores(ce, corpus, seed)})
    print(rows[-1], flush=True)
    device = default_device()
    seconds: dict[str, float] = {}
    for name in [*args.variants, *([f"control:{args.control}"] if args.control else [])]:
        is_control = name.startswith("control:")
        variant = name.split(":", 1)[1] if is_control else name
        cfg = dataclasses.replace(base, **VARIANTS[variant])
        lay = _work_run(args.run, args.out / name.replace(":", "_"), args.fold, cache)
        data = _prepare(corpus, ner, lay)
        st = _state_cache(ner, lay, data.per_essay, data.pad_id, device)
        arm = rl._Arm(
            lay,
            ner,
            cfg,
            rl._Essays(data, st, ner, device),
            args.fold,
            [data.position[i] for i in train_ids],
            held,
            corpus,
            seed,
        )
        t0 = time.perf_counter()
        if is_control:
            done = rl.train_fold_control(arm, seconds[variant])
            probs = load_word_probs(rl.control_fold(lay, args.fold).oof)
        else:
            done = rl.train_fold_rl(arm)
            seconds[variant] = float(done["seconds"])
            probs = load_word_probs(rl.rl_fold(lay, args.fold).oof)
        row = {
            "variant": name,
            "steps": done.get("steps"),
            "seconds": done.get("seconds", done.get("trained_seconds")),
            "wall": round(time.perf_counter() - t0, 1),
            **_scores(probs, corpus, seed),
        }
        rows.append(row)
        print(row, flush=True)
        rl.plot_curves(lay, args.fold + 1, ["control" if is_control else "rl"])
    cols = ["variant", "steps", "seconds", "naive", "tuned_cf"]
    lines = ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows]
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "results.md", table + "\n")
    atomic_write_text(args.out / "results.json", json.dumps(rows, indent=2) + "\n")


def _typed(raw: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


if __name__ == "__main__":
    main()
