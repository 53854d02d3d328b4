"""The reference the exact metric is checked against: a plain, slow transcription of the widely
used pandas implementation of the competition metric (the one public notebooks copied).

Used only to check `metric.score` (tests/test_metric.py, benchmarks/metric.py); nothing in the
pipeline scores with it. It keeps that implementation's semantics on purpose, including its
flaw: true spans pick their best prediction independently, so one prediction covering halves of
two true spans counts as two hits. One deliberate difference: the outer merge's placeholder rows
(a true span with no prediction of its class in the essay, or the reverse) carry a missing id,
which the original counts as one extra FP or FN; here missing ids are not counted, as they are
no spans at all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def _overlaps(row: pd.Series) -> list[float]:
    pred_words = set(row["predictionstring_pred"].split(" "))
    gt_words = set(row["predictionstring_gt"].split(" "))
    common = len(pred_words & gt_words)
    return [common / len(gt_words), common / len(pred_words)]


def _class_f1(pred: pd.DataFrame, gt: pd.DataFrame) -> tuple[float, set[str]]:
    pred = pred[["id", "class", "predictionstring"]].reset_index(drop=True).copy()
    gt = gt[["id", "discourse_type", "predictionstring"]].reset_index(drop=True).copy()
    pred["pred_id"] = pred.index
    gt["gt_id"] = gt.index
    joined = pred.merge(
        gt,
        left_on=["id", "class"],
        right_on=["id", "discourse_type"],
        how="outer",
        suffixes=("_pred", "_gt"),
    )
    joined["predictionstring_gt"] = joined["predictionstring_gt"].fillna(" ")
    joined["predictionstring_pred"] = joined["predictionstring_pred"].fillna(" ")
    # Row by row, and each pair read back through its text, as the original does: this is
    # what makes it slow.
    joined["overlaps"] = joined.apply(_overlaps, axis=1)
    joined["overlap_gt"] = joined["overlaps"].apply(lambda x: eval(str(x))[0])
    joined["overlap_pred"] = joined["overlaps"].apply(lambda x: eval(str(x))[1])
    joined["potential_tp"] = (joined["overlap_gt"] >= 0.5) & (joined["overlap_pred"] >= 0.5)
    joined["max_overlap"] = joined[["overlap_gt", "overlap_pred"]].max(axis=1)
    candidates = joined[joined["potential_tp"]].sort_values("max_overlap", ascending=False)
    tp_pred_ids = candidates.groupby(["id", "predictionstring_gt"]).first()["pred_id"].to_numpy()
    all_pred = joined["pred_id"].dropna().unique()
    fp = len([p for p in all_pred if p not in tp_pred_ids])
    matched_gt = set(candidates["gt_id"].dropna().unique())
    fn = len([g for g in joined["gt_id"].dropna().unique() if g not in matched_gt])
    tp = len(tp_pred_ids)
    # Essays where a prediction could be a hit on two true spans: only there can the
    # double count (or the greedy choice it comes with) make the score differ from a matching.
    twice = candidates.groupby("pred_id")["gt_id"].transform("size") > 1
    return tp / (tp + 0.5 * (fp + fn)), set(candidates.loc[twice, "id"])


def oracle_score(pred: pd.DataFrame, gt: pd.DataFrame) -> tuple[float, dict[str, float], set[str]]:
    """Macro F1 over the classes of the ground truth, the per-class F1, and the essays where a
    prediction could hit two true spans."""
    per_class: dict[str, float] = {}
    doubtful: set[str] = set()
    for cls, gt_part in gt.groupby("discourse_type"):
        pred_part = pred[pred["class"] == cls]
        per_class[str(cls)], essays = _class_f1(pred_part, gt_part)
        doubtful |= essays
    return float(np.mean(list(per_class.values()))), per_class, doubtful
