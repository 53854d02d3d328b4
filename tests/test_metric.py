from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discourse_rl.core import metric
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASS_INDEX, CLASSES
from discourse_rl.core.metric import essay_counts, essay_f1, essay_jaccard, per_essay_scores, score
from tests.metric_oracle import oracle_score

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


# ---------------------------------------------------------------------------------------------
# Fast paths against the exact ones


def _parse_both(strings: list[object]) -> tuple[metric._Parsed, metric._Parsed]:
    column = pd.Series(strings, dtype=object)
    return metric._parse_predictionstrings(column, "x"), metric._parse_exactly(strings, "x")


def _assert_same_parse(fast: metric._Parsed, exact: metric._Parsed) -> None:
    for a, b in zip(fast[:3], exact[:3], strict=True):
        assert a.tolist() == b.tolist()
    assert fast[3].keys() == exact[3].keys()
    for r, words in exact[3].items():
        assert fast[3][r].tolist() == words.tolist()


def test_only_canonical_range_texts_skip_the_exact_parse() -> None:
    strings: list[object] = [
        "4 5 6 7",  # the range 4..7
        "9 10 11 12 13 14 15 16",  # longer than a string view's 12 inline bytes
        "1 3 4",  # a gap
        "1 3 3 4",  # as many words as 1..4, and as long a text, but not that range
        "3 2 1",  # the words of a range, out of order
        "1 1 2",
        "01 02",
        "1  2",
        " 1 2",
        "1 2 ",
        "5",
        "",
        "1234567 1234568",  # more digits than the first-word window
        "7 8 9 10 11 12 13 14 15 16 17 18 19 20",
        "98 99 100",
        "2",
    ]
    column = pd.Series(strings, dtype="str")
    ranges = metric._canonical_ranges(column)
    assert ranges is not None
    is_range, first, stop = ranges
    canonical = {0, 1, 10, 13, 14}  # the last rows start in the window's clamp and may go exact
    assert set(np.flatnonzero(is_range).tolist()) == canonical
    assert [(int(first[r]), int(stop[r])) for r in sorted(canonical)] == [
        (4, 8),
        (9, 17),
        (5, 6),
        (7, 21),
        (98, 101),
    ]
    fast = metric._parse_predictionstrings(column, "x")
    _assert_same_parse(fast, metric._parse_exactly(strings, "x"))
    assert fast[3][2].tolist() == [1, 3, 4] and fast[3][3].tolist() == [1, 3, 4]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.integers(0, 1200), st.integers(1, 40)).map(
                lambda t: _ps(list(range(t[0], t[0] + t[1])))
            ),
            st.lists(st.integers(0, 200), min_size=1, max_size=12).map(_ps),
            st.text(alphabet="0123456789 ", max_size=9).filter(
                lambda s: not s.strip() or all(w.isdigit() for w in s.split())
            ),
        ),
        max_size=20,
    )
)
def test_fast_parse_equals_exact_parse(strings: list[str]) -> None:
    _assert_same_parse(*_parse_both(list(strings)))
    # An Arrow-backed column, sliced so that its offsets do not start at zero.
    column = pd.Series(["0 1 2", *strings], dtype="str").iloc[1:]
    _assert_same_parse(metric._parse_predictionstrings(column, "x"), _parse_both(strings)[1])


def test_missing_predictionstrings_are_empty_spans() -> None:
    fast, exact = _parse_both(["1 2 3", None, float("nan"), "4 5"])
    _assert_same_parse(fast, exact)
    assert fast[2].tolist() == [3, 0, 0, 2]


def test_other_column_types_parse_as_before() -> None:
    strings = ["1 2 3", "4 5 6 7 8 9 10 11 12 13", "2 4", "7 8"]
    exact = metric._parse_exactly(strings, "x")
    for dtype in ("category", "string[python]", "string[pyarrow]", object):
        _assert_same_parse(
            metric._parse_predictionstrings(pd.Series(strings, dtype=dtype), "x"), exact
        )
    # Numbers are no text: the exact path has always read them as no words.
    numbers = pd.Series([5, 6, 70000000])
    _assert_same_parse(
        metric._parse_predictionstrings(numbers, "x"), metric._parse_exactly(numbers.tolist(), "x")
    )


def test_non_contiguous_prediction_scores_by_word_sets_on_the_fast_path() -> None:
    gt = pd.DataFrame(
        {
            "id": ["a"] * 3,
            "discourse_type": ["Claim"] * 3,
            "predictionstring": ["0 1 2 3", "10 11 12 13 14 15", "20 21"],
        }
    )
    # Six words of 0..9 with a hole: overlap 4 of 4 and 4 of 6 is a hit, though a range 0..9
    # would cover only 4 of 10. "10 12 14" has 3 of 6 with the second span (exact halves), and
    # "20 22 24 26" has 1 of 4 with the third, a miss.
    pred = pd.DataFrame(
        {
            "id": ["a"] * 3,
            "class": ["Claim"] * 3,
            "predictionstring": ["0 1 2 3 8 9", "10 12 14", "20 22 24 26"],
        }
    )
    result = score(pred, gt).per_class["Claim"]
    assert (result.tp, result.fp, result.fn) == (2, 1, 1)
    _, per_class, doubtful = oracle_score(pred, gt)
    assert not doubtful and per_class["Claim"] == result.f1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_score_is_the_same_without_the_fast_parse(case: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    pred, gt = case
    fast = score(pred, gt)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metric, "_canonical_ranges", lambda column: None)
        exact = score(pred, gt)
    assert fast.to_dict() == exact.to_dict() or (
        math.isnan(fast.macro_f1) and math.isnan(exact.macro_f1)
    )
    # Object columns (pandas without Arrow strings) take the same way.
    assert score(pred.astype(object), gt.astype(object)).to_dict() == fast.to_dict() or gt.empty


@st.composite
def essays(draw: st.DrawFn) -> tuple[np.ndarray, ...]:
    """Spans of one essay, overlapping freely, empty ones included."""

    def spans(n: int) -> list[np.ndarray]:
        start = draw(st.lists(st.integers(0, 40), min_size=n, max_size=n))
        length = draw(st.lists(st.integers(-1, 15), min_size=n, max_size=n))
        cls = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
        return [
            np.array(cls, dtype=np.int64),
            np.array(start, dtype=np.int64),
            np.array(start, dtype=np.int64) + np.array(length, dtype=np.int64),
        ]

    return (*spans(draw(st.integers(0, 12))), *spans(draw(st.integers(0, 12))))


@settings(max_examples=500, deadline=None)
@given(essays())
def test_small_essay_loop_equals_whole_matrix_counts(arrays: tuple[np.ndarray, ...]) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(metric, "_VECTORISE_PAIRS", -1)  # every essay takes the whole-matrix path
        expected = essay_counts(*arrays)
    assert essay_counts(*arrays).tolist() == expected.tolist()
    tp, fp, fn = expected.sum(0)
    assert essay_f1(expected) == (tp / (tp + 0.5 * (fp + fn)) if tp + fp + fn else 1.0)
    assert essay_jaccard(expected) == (tp / (tp + fp + fn) if tp + fp + fn else 1.0)


def test_big_essays_take_the_whole_matrix_path() -> None:
    n = 40  # 1600 pairs
    start = np.arange(0, 10 * n, 10, dtype=np.int64)
    cls = np.arange(n, dtype=np.int64) % len(CLASSES)
    counts = essay_counts(cls, start, start + 8, cls, start + 1, start + 9)
    assert counts[:, 0].sum() == n and counts[:, 1:].sum() == 0
    assert n * n > metric._VECTORISE_PAIRS


def test_bad_class_index_is_an_error() -> None:
    one = np.array([0], dtype=np.int64)
    with pytest.raises(ValueError, match="class index"):
        essay_counts(np.array([-1]), one, one + 1, one, one, one + 1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2, 6), max_size=15), st.lists(st.integers(-2, 6), max_size=15))
def test_same_key_pairs_is_an_inner_join(a: list[int], b: list[int]) -> None:
    i, j = metric._same_key_pairs(np.array(a, dtype=np.int64), np.array(b, dtype=np.int64))
    got = sorted(zip(i.tolist(), j.tolist(), strict=True))
    assert got == [(x, y) for x in range(len(a)) for y in range(len(b)) if a[x] == b[y]]
