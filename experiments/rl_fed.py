"""Issue 27's third comparison on a finished run: gbdt and the agent trained on the RL tagger's
probabilities (`[ner_rl] feeds = "rl"`) against the run's own rows on the cross-entropy
tagger's, with the run's settings, seeds and held-out essays.

    nice -n 5 .venv/bin/python -m experiments.rl_fed --run runs/reference \\
        --data ../shared/data/feedback-prize-2021 --out runs/reference-rl-fed

A run whose `[ner_rl] score_train_essays` is not 0 has the arm's probabilities only for the
held-out essays and a draw of training ones: the missing ones are predicted here, each by the
arm's model of the fold that did not train on it (out of fold, as in the step), and the whole
set is written to OUT/ner/oof.npz (reused when the command runs again). Then the run's gbdt step
and agent step write OUT/gbdt/ and OUT/agent/ with their held-out tables, and the rows of both
taggers are printed side by side. `--steps gbdt` skips the agent.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from discourse_rl.core.common import read_json
from discourse_rl.core.data import Corpus, load_corpus, load_word_probs, save_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.ner.backbone import load_tokenizer
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.inference import Reading, default_device, for_inference, window_probs
from discourse_rl.ner.model import NerModel
from discourse_rl.ner.rl import _load_fold_model, arm_oof, control_fold, rl_fold
from discourse_rl.run.config import load_run_config
from discourse_rl.run.pipeline import run_split
from discourse_rl.run.steps.agent import train_agent_stage
from discourse_rl.run.steps.gbdt import train_gbdt_stage

CHUNK = 200


def arm_model(lay: RunLayout, cfg: NerConfig, arm: str, k: int) -> NerModel:
    """The arm's model of fold `k`."""
    fold = rl_fold(lay, k) if arm == "rl" else control_fold(lay, k)
    return _load_fold_model(lay, cfg, k, fold.model).eval()


def complete_oof(
    lay: RunLayout, cfg: NerConfig, arm: str, corpus: Corpus, out: Path
) -> dict[str, Any]:
    """Every essay's out-of-fold probabilities of the arm: the step's, and the missing ones."""
    if out.is_file():
        return dict(load_word_probs(out))
    probs = dict(load_word_probs(arm_oof(lay, arm)))
    folds = {str(i): int(k) for i, k in read_json(lay.ner_folds).items()}
    missing = sorted(i for i in folds if i not in probs and i in corpus.essays)
    print(f"{arm}: {len(probs)} essays scored by the step, {len(missing)} to predict", flush=True)
    device = default_device()
    tokenizer = load_tokenizer(lay.ner_encoder)
    t = time.perf_counter()
    for k in sorted(set(folds.values())):
        mine = [i for i in missing if folds[i] == k]
        if not mine:
            continue
        model = for_inference(arm_model(lay, cfg, arm, k), cfg, device)
        how = Reading(tokenizer, cfg, device, prepared=True)
        for c in range(0, len(mine), CHUNK):
            chunk = mine[c : c + CHUNK]
            got = window_probs([model], [corpus.essays[i] for i in chunk], how)
            probs.update(zip(chunk, got, strict=True))
            print(f"fold {k}: {c + len(chunk)}/{len(mine)} ({time.perf_counter() - t:.0f} s)")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_word_probs(out, probs)
    return probs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="a finished run with [ner_rl]")
    ap.add_argument("--data", type=Path, required=True, help="its Kaggle data folder")
    ap.add_argument("--out", type=Path, required=True, help="a scratch run folder")
    ap.add_argument("--arm", choices=["rl", "control"], default="rl")
    ap.add_argument("--steps", nargs="+", choices=["gbdt", "agent"], default=["gbdt", "agent"])
    args = ap.parse_args()
    lay, scratch = RunLayout(args.run), RunLayout(args.out)
    cfg = load_run_config(lay.config)
    torch.set_num_threads(max(1, cfg.ner.threads))
    corpus = load_corpus(args.data)
    probs = complete_oof(lay, cfg.ner, args.arm, corpus, scratch.oof)
    split = run_split(probs, corpus, cfg)
    own = {r["stage"]: r for r in _rows(lay)}
    timings: dict[str, float] = {}
    if "gbdt" in args.steps:
        t = time.perf_counter()
        train_gbdt_stage(
            scratch.root, corpus, probs, split, cfg.constrained, cfg.gbdt, cfg.agent_seeds
        )
        timings["gbdt"] = time.perf_counter() - t
    if "agent" in args.steps:
        t = time.perf_counter()
        episode = cfg.episode if cfg.episode_trainer else None
        train_agent_stage(
            scratch.root,
            corpus,
            probs,
            split,
            cfg.segments,
            cfg.agent,
            cfg.agent_seeds,
            episode,
        )
        timings["agent"] = time.perf_counter() - t
    print(f"seconds: {timings}")
    for row in _rows(scratch):
        mine = own.get(row["stage"], {})
        print(
            f"{row['stage']:>16}: {args.arm}-fed {row['macro_f1']:.4f}"
            f"  ce-fed {mine.get('macro_f1', float('nan')):.4f}"
        )


def _rows(lay: RunLayout) -> list[dict[str, Any]]:
    """The held-out rows of a run's gbdt and agent results: stage, mean macro F1 over seeds."""
    rows = []
    for path in (lay.gbdt_results, lay.agent_results):
        if path.is_file():
            stages = json.loads(path.read_text(encoding="utf-8"))["stages"]
            rows += [{"stage": n, "macro_f1": r["macro_f1"]["mean"]} for n, r in stages.items()]
    return rows


if __name__ == "__main__":
    main()
