"""A combining stage: per class, the spans of whichever trained stage labels that class best,
chosen by inner cross-fitting on the training essays.

Each member is a stage that can be fitted on some essays and predict others (`Member`). The
training essays are cut into `folds` inner folds; each member is fitted on all folds but one
and predicts the left-out fold, so every training essay gets every member's out-of-fold spans.
Per class, the member with the highest out-of-fold F1 is chosen (ties: the first listed). The
deployed stage fits each chosen member on every training essay and takes, for each class, its
member's spans of that class. The metric scores each class on its own, so spans of different
classes may overlap, as they may in any stage's output. No held-out essay is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from discourse_rl.core import metric
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASSES, Corpus
from discourse_rl.decoders.segments import gold_frame

Predictor = Callable[[Sequence[str]], pd.DataFrame]
Member = Callable[[Sequence[str]], Predictor]
"""Fit on these essays; return what predicts spans (id, class, word_start, word_end, ...)."""


@dataclass(frozen=True)
class Choice:
    """Per class the chosen member, and every member's out-of-fold F1 per class."""

    member: dict[str, str]
    oof_f1: dict[str, dict[str, float]]
    """member -> class -> F1 over the training essays, out of fold."""

    def to_json(self) -> dict[str, object]:
        return {"member": self.member, "oof_f1": self.oof_f1}


def choose(oof: Mapping[str, pd.DataFrame], gt: pd.DataFrame) -> Choice:
    """Per class, the member whose out-of-fold spans score the highest F1 against `gt`."""
    if not oof:
        raise DiscourseRLError("combine: no member")
    f1 = {
        name: {c: float(s.f1) for c, s in metric.score(frame, gt).per_class.items()}
        for name, frame in oof.items()
    }
    member = {}
    for c in CLASSES:
        names = list(oof)
        best = max(names, key=lambda n: (np.nan_to_num(f1[n].get(c, 0.0)), -names.index(n)))
        member[c] = best
    return Choice(member, f1)


def out_of_fold(
    members: Mapping[str, Member], ids: Sequence[str], folds: int, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """Every member's spans of `ids`, each fold predicted by a fit on the other folds."""
    if folds < 2 or len(ids) < folds:
        raise DiscourseRLError(f"combine: {folds} inner folds for {len(ids)} essays")
    fold = np.random.default_rng([seed, 5]).permutation(len(ids)) % folds
    out: dict[str, list[pd.DataFrame]] = {name: [] for name in members}
    for f in range(folds):
        fit_ids = [i for i, k in zip(ids, fold, strict=True) if k != f]
        held_ids = [i for i, k in zip(ids, fold, strict=True) if k == f]
        for name, member in members.items():
            out[name].append(member(fit_ids)(held_ids))
    return {name: pd.concat(frames, ignore_index=True) for name, frames in out.items()}


def combine_frames(frames: Mapping[str, pd.DataFrame], choice: Choice) -> pd.DataFrame:
    """Each class's spans from its chosen member's frame."""
    parts = [
        frames[choice.member[c]][frames[choice.member[c]]["class"] == c]
        for c in CLASSES
        if choice.member[c] in frames
    ]
    if not parts:
        return next(iter(frames.values())).iloc[:0]
    return pd.concat(parts, ignore_index=True)


def fit_combined(
    members: Mapping[str, Member],
    train_ids: Sequence[str],
    corpus: Corpus,
    folds: int = 2,
    seed: int = 0,
) -> tuple[Choice, Predictor]:
    """The choice by inner cross-fitting on `train_ids`, and the combined predictor (each
    chosen member refitted on every training essay)."""
    ids = sorted(train_ids)
    choice = choose(out_of_fold(members, ids, folds, seed), gold_frame(corpus, ids))
    fitted = {name: members[name](ids) for name in sorted(set(choice.member.values()))}

    def predict(pred_ids: Sequence[str]) -> pd.DataFrame:
        return combine_frames({name: f(pred_ids) for name, f in fitted.items()}, choice)

    return choice, predict
