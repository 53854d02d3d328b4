"""The evaluation protocol every second stage shares: one seeded held-out share of the essays.

The held-out essays are a fixed, seeded share (20% by default) of the essays that have both
out-of-fold word probabilities and labels. No second stage trains on them and no threshold is
fitted on them; every second stage (ner-tuned's minima, ner-constrained, gbdt, the agents) trains
on the rest. The NER rows are scored on the same essays: their out-of-fold probabilities come
from fold models that never saw them. The split depends only on the sorted ids, the share and the
seed, so the gbdt step and the agent step draw the same one without reading each other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from discourse_rl.core import metric
from discourse_rl.core.common import DiscourseRLError, atomic_write_text
from discourse_rl.core.data import CLASS_INDEX, CLASSES, Corpus
from discourse_rl.core.records import HeldOutEssays, HeldOutScore


@dataclass(frozen=True)
class Split:
    """Training and held-out essay ids (each sorted) and how they were drawn."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    share: float
    seed: int
    simulated: bool = False
    """Simulated word probabilities instead of the NER stage's (train-agent --simulate)."""

    @property
    def candidates(self) -> int:
        return len(self.train) + len(self.heldout)

    def describe(self) -> HeldOutEssays:
        return HeldOutEssays.split(self.share, self.seed, self.candidates, self.simulated)

    def to_json(self) -> dict[str, object]:
        return {
            "share": self.share,
            "seed": self.seed,
            "simulated": self.simulated,
            "train": list(self.train),
            "heldout": list(self.heldout),
        }


def scored_ids(probs: Iterable[str], corpus: Corpus) -> list[str]:
    """Essays with both word probabilities and labels, sorted."""
    return sorted(set(probs) & set(corpus.essays))


def heldout_split(ids: Iterable[str], share: float, seed: int, *, simulated: bool = False) -> Split:
    """A seeded `share` of `ids` held out, the rest for training (deterministic, disjoint)."""
    pool = sorted(set(ids))
    if not 0.0 < share < 1.0:
        raise DiscourseRLError(f"heldout_share: expected a share in (0, 1), got {share}")
    n_held = round(share * len(pool))
    if n_held < 1 or n_held >= len(pool):
        raise DiscourseRLError(
            f"heldout_share {share}: {len(pool)} essays leave no training or no held-out essay"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    held = {pool[i] for i in order[:n_held].tolist()}
    return Split(
        tuple(i for i in pool if i not in held),
        tuple(i for i in pool if i in held),
        float(share),
        int(seed),
        simulated,
    )


def write_split(path: str | Path, split: Split) -> None:
    atomic_write_text(path, json.dumps(split.to_json(), indent=1) + "\n")


def read_split(path: str | Path) -> Split:
    try:
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        return Split(
            tuple(d["train"]),
            tuple(d["heldout"]),
            float(d["share"]),
            int(d["seed"]),
            bool(d.get("simulated", False)),
        )
    except FileNotFoundError:
        raise DiscourseRLError(f"{path}: not found") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise DiscourseRLError(f"{path}: unreadable split ({exc!r})") from None


def heldout_score(pred: pd.DataFrame, gt: pd.DataFrame) -> HeldOutScore:
    """Per-class and macro F1, plus the per-essay means of the RL reward (essay F1) and of the
    seed's essay score TP / (TP + FP + FN)."""
    score = metric.score(pred, gt)
    pred_by = {k: g for k, g in pred.groupby("id", sort=False)}
    f1s, jacs = [], []
    for eid, g in gt.groupby("id", sort=False):
        p = pred_by.get(eid, pred.iloc[:0])
        counts = metric.essay_counts(
            np.asarray(p["class"].map(CLASS_INDEX), dtype=np.int64),
            p["word_start"].to_numpy(np.int64),
            p["word_end"].to_numpy(np.int64),
            np.asarray(g["discourse_type"].map(CLASS_INDEX), dtype=np.int64),
            g["word_start"].to_numpy(np.int64),
            g["word_end"].to_numpy(np.int64),
        )
        f1s.append(metric.essay_f1(counts))
        jacs.append(metric.essay_jaccard(counts))
    return HeldOutScore(
        score.macro_f1,
        {c: score.per_class[c].f1 for c in CLASSES},
        float(np.mean(f1s)),
        float(np.mean(jacs)),
    )
