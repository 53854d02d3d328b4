from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discourse_rl.common import DiscourseRLError
from discourse_rl.data import CLASS_INDEX, CLASSES
from discourse_rl.metric import essay_counts, essay_f1, essay_jaccard, per_essay_scores, score
from tests.oracle import oracle_score

ESSAYS = ("e1", "e2", "e3")
SOME_CLASSES = CLASSES[:3]  # few classes, so that same-class overlaps are frequent


def _ps(words: list[int]) -> str:
    return " ".join(map(str, words))


@st.composite
def cases(draw: st.DrawFn) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Ground truth: disjoint ranges per essay. Predictions: copies, shifts, halves, gaps, junk."""
    gt_rows: list[tuple[str, str, str]] = []
    for essay in ESSAYS[: draw(st.integers(1, 3))]:
        pos = draw(st.integers(0, 3))
        for _ in range(draw(st.integers(0, 5))):
            length = draw(st.integers(1, 12))
            gt_rows.append(
                (essay, draw(st.sampled_from(SOME_CLASSES)), _ps(list(range(pos, pos + length))))
            )
            pos += length + draw(st.integers(0, 3))
    pred_rows: list[tuple[str, str, str]] = []
    for _ in range(draw(st.integers(0, 12))):
        kind = draw(st.sampled_from(["copy", "shift", "halves", "gap", "random"]))
        cls = draw(st.sampled_from(SOME_CLASSES))
        essay = draw(st.sampled_from(ESSAYS))
        if kind != "random" and gt_rows:
            g_essay, g_cls, g_ps = draw(st.sampled_from(gt_rows))
            words = [int(w) for w in g_ps.split()]
            essay = g_essay
            cls = g_cls if draw(st.booleans()) else cls
            if kind == "shift":
                d = draw(st.integers(-6, 6))
                words = [w + d for w in words if w + d >= 0] or [0]
            elif kind == "halves":  # exact 0.5 overlaps with this span and its neighbour
                n = len(words)
                words = list(range(words[0] + n - n // 2 - n % 2, words[-1] + 1 + n // 2))
            elif kind == "gap" and len(words) > 2:
                words = words[:1] + words[2:]
        else:
            start = draw(st.integers(0, 40))
            words = list(range(start, start + draw(st.integers(1, 15))))
        pred_rows.append((essay, cls, _ps(words)))
    gt = pd.DataFrame(gt_rows, columns=["id", "discourse_type", "predictionstring"])
    pred = pd.DataFrame(pred_rows, columns=["id", "class", "predictionstring"])
    return pred, gt


def _can_double_count(pred: pd.DataFrame, gt: pd.DataFrame) -> bool:
    """Does some prediction hit two true spans? (Only then may the pandas oracle count twice.)"""
    for essay, cls, ps in zip(pred["id"], pred["class"], pred["predictionstring"], strict=True):
        pw = set(ps.split())
        hits = 0
        for gs in gt.loc[(gt["id"] == essay) & (gt["discourse_type"] == cls), "predictionstring"]:
            gw = set(gs.split())
            common = len(pw & gw)
            hits += common / len(gw) >= 0.5 and common / len(pw) >= 0.5
        if hits > 1:
            return True
    return False


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_agrees_with_pandas_oracle_unless_double_count(
    case: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    pred, gt = case
    ours = score(pred, gt)
    assert math.isnan(ours.macro_f1) == gt.empty
    if gt.empty:
        return
    assert 0.0 <= ours.macro_f1 <= 1.0
    for s in ours.per_class.values():
        assert math.isnan(s.f1) or 0.0 <= s.f1 <= 1.0
    macro, per_class, doubtful = oracle_score(pred, gt)
    assert bool(doubtful) == _can_double_count(pred, gt)
    if doubtful:
        return
    assert ours.macro_f1 == pytest.approx(macro, abs=1e-12)
    for cls, f1 in per_class.items():
        assert ours.per_class[cls].f1 == pytest.approx(f1, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(cases())
def test_per_essay_counts_agree_with_corpus_score(case: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    pred, gt = case
    # The per-essay function takes word ranges: drop the gapped predictions.
    is_range = [np.all(np.diff(list(map(int, s.split()))) == 1) for s in pred["predictionstring"]]
    pred = pred[np.array(is_range, dtype=bool)]
    total = np.zeros((len(CLASSES), 3), dtype=np.int64)
    for essay in ESSAYS:
        p, g = pred[pred["id"] == essay], gt[gt["id"] == essay]

        def arrays(df: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            words = [list(map(int, s.split())) for s in df["predictionstring"]]
            return (
                df[col].map(CLASS_INDEX).to_numpy(np.int64),
                np.array([w[0] for w in words], dtype=np.int64),
                np.array([w[-1] + 1 for w in words], dtype=np.int64),
            )

        total += essay_counts(*arrays(p, "class"), *arrays(g, "discourse_type"))
    corpus = score(pred, gt)
    for c, name in enumerate(CLASSES):
        s = corpus.per_class[name]
        assert (s.tp, s.fp, s.fn) == tuple(total[c])


def test_one_prediction_over_two_true_halves_is_one_hit() -> None:
    gt = pd.DataFrame(
        {
            "id": ["a", "a"],
            "discourse_type": ["Claim", "Claim"],
            "predictionstring": ["0 1 2 3", "4 5 6 7"],
        }
    )
    pred = pd.DataFrame(
        {"id": ["a"], "class": ["Claim"], "predictionstring": [_ps(list(range(8)))]}
    )
    ours = score(pred, gt).per_class["Claim"]
    assert (ours.tp, ours.fp, ours.fn) == (1, 0, 1)
    assert oracle_score(pred, gt)[1]["Claim"] == 1.0  # the flaw we do not copy
    assert oracle_score(pred, gt)[2] == {"a"}


def test_exact_half_overlap_counts_and_just_under_does_not() -> None:
    gt = pd.DataFrame({"id": ["a"], "discourse_type": ["Lead"], "predictionstring": ["0 1 2 3"]})
    half = pd.DataFrame({"id": ["a"], "class": ["Lead"], "predictionstring": ["2 3 4 5"]})
    under = pd.DataFrame({"id": ["a"], "class": ["Lead"], "predictionstring": ["2 3 4 5 6"]})
    assert score(half, gt).per_class["Lead"].tp == 1
    assert score(under, gt).per_class["Lead"].tp == 0


def test_macro_covers_classes_of_the_ground_truth_and_wrong_class_misses() -> None:
    gt = pd.DataFrame(
        {"id": ["a", "a"], "discourse_type": ["Lead", "Claim"], "predictionstring": ["0 1", "2 3"]}
    )
    pred = pd.DataFrame(
        {"id": ["a", "a"], "class": ["Lead", "Evidence"], "predictionstring": ["0 1", "2 3"]}
    )
    result = score(pred, gt)
    assert result.macro_f1 == pytest.approx(0.5)
    assert math.isnan(result.per_class["Evidence"].f1)
    assert result.per_class["Evidence"].fp == 1


def test_word_ranges_score_like_predictionstrings() -> None:
    gt = pd.DataFrame({"id": ["a"], "discourse_type": ["Lead"], "word_start": [0], "word_end": [4]})
    pred = pd.DataFrame({"id": ["a"], "class": ["Lead"], "predictionstring": ["1 2 3 4 5"]})
    assert score(pred, gt).macro_f1 == 1.0


def test_essay_scores() -> None:
    z = np.array([], dtype=np.int64)
    empty = essay_counts(z, z, z, z, z, z)
    assert essay_f1(empty) == 1.0 and essay_jaccard(empty) == 1.0
    counts = essay_counts(
        np.array([0, 2]),
        np.array([0, 10]),
        np.array([5, 12]),
        np.array([0, 2]),
        np.array([0, 20]),
        np.array([5, 25]),
    )
    assert counts[0].tolist() == [1, 0, 0] and counts[2].tolist() == [0, 1, 1]
    assert essay_f1(counts) == pytest.approx(1 / (1 + 1)) and essay_jaccard(
        counts
    ) == pytest.approx(1 / 3)


def test_bad_input_is_a_clear_error() -> None:
    gt = pd.DataFrame({"id": ["a"], "discourse_type": ["Lead"], "predictionstring": ["0 1"]})
    with pytest.raises(DiscourseRLError, match="unknown class 'Leed'"):
        score(pd.DataFrame({"id": ["a"], "class": ["Leed"], "predictionstring": ["0"]}), gt)
    with pytest.raises(DiscourseRLError, match="integers"):
        score(pd.DataFrame({"id": ["a"], "class": ["Lead"], "predictionstring": ["0 x"]}), gt)


def test_per_essay_scores_match_essay_counts() -> None:
    gt = pd.DataFrame(
        {
            "id": ["a", "a", "b"],
            "discourse_type": ["Lead", "Claim", "Claim"],
            "word_start": [0, 5, 0],
            "word_end": [5, 9, 4],
        }
    )
    pred = pd.DataFrame(
        {
            "id": ["a", "a", "c"],
            "class": ["Lead", "Lead", "Claim"],
            "word_start": [0, 5, 0],
            "word_end": [5, 9, 4],
        }
    )
    table = per_essay_scores(pred, gt).set_index("id")
    assert table.loc["a", "f1"] == pytest.approx(1 / (1 + 0.5 * 2))
    assert table.loc["a", "jaccard"] == pytest.approx(1 / 3)
    assert table.loc["b", "f1"] == 0.0 and list(table.index) == ["a", "b"]
