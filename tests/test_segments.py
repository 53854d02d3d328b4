"""Segments: cuts, features, gold actions, begins/continues semantics, oracle, saving."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

from discourse_rl.core import metric
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import NUM_LABELS, Corpus, load_corpus
from discourse_rl.decoders.segments import (
    N_BASE_FEATURES,
    EssaySegments,
    SegmentConfig,
    action_masks,
    actions_to_spans,
    allowed_actions,
    cut_points,
    essay_gold_actions,
    gold_frame,
    gold_spans,
    load_segments,
    make_segments,
    naive_frame,
    oracle_score,
    save_segments,
    segment_gold_actions,
    simulate_word_probs,
    tradeoff_table,
)


@cache
def sample() -> Corpus:
    return load_corpus()


def one_hot_probs(labels: list[int]) -> np.ndarray:
    p = np.full((len(labels), NUM_LABELS), 0.001, np.float32)
    p[np.arange(len(labels)), labels] = 1.0
    return p / p.sum(1, keepdims=True)


def seg(starts: list[int], ends: list[int], n_words: int = 20) -> EssaySegments:
    s = np.array(starts, dtype=np.int64)
    return EssaySegments("X", n_words, s, np.array(ends, dtype=np.int64), np.zeros((len(s), 1)))


def test_cuts_at_start_probability_and_class_change() -> None:
    # O O B-Lead I-Lead I-Lead I-Claim I-Claim B-Claim I-Claim
    p = one_hot_probs([0, 0, 1, 2, 2, 6, 6, 5, 6])
    assert cut_points(p, SegmentConfig(class_change=True)).tolist() == [0, 2, 5, 7]
    assert cut_points(p, SegmentConfig(class_change=False)).tolist() == [0, 2, 7]


def test_punctuation_cuts_need_words_and_add_sentence_features() -> None:
    words = ["I", "think", "so.", "But", ",", "no", ";", "maybe", "yes"]
    p = one_hot_probs([1] + [2] * (len(words) - 1))  # one long Lead, no start inside
    none = make_segments({"E": p}, SegmentConfig(), None, {"E": words})[0]
    assert none.word_start.tolist() == [0]
    sent = make_segments({"E": p}, SegmentConfig(punctuation="sentence"), None, {"E": words})[0]
    assert sent.word_start.tolist() == [0, 3]
    clause = make_segments({"E": p}, SegmentConfig(punctuation="clause"), None, {"E": words})[0]
    assert clause.word_start.tolist() == [0, 3, 5, 7]
    # The last two features flag a start after a sentence end and after , ; :
    assert clause.features[:, -2].tolist() == [1, 1, 0, 0]
    assert clause.features[:, -1].tolist() == [0, 0, 1, 1]
    with pytest.raises(DiscourseRLError, match="needs the words"):
        make_segments({"E": p}, SegmentConfig(punctuation="clause"))
    with pytest.raises(DiscourseRLError, match="5 words"):
        make_segments({"E": p}, SegmentConfig(), None, {"E": words[:5]})


def test_clause_cuts_keep_the_oracle_high_with_uninformative_probabilities() -> None:
    c = sample()
    ids = sorted(c.essays)[:60]
    flat = {i: np.full((c.essays[i].n_words, NUM_LABELS), 1 / NUM_LABELS, np.float32) for i in ids}
    words = {i: c.essays[i].words for i in ids}
    cfg = SegmentConfig(punctuation="clause", class_change=False)
    assert oracle_score(make_segments(flat, cfg, ids, words), c).macro_f1 >= 0.95


def test_lower_threshold_never_fewer_segments_and_cap_holds() -> None:
    probs = simulate_word_probs(sample(), 0.5, seed=1, ids=sorted(sample().essays)[:20])
    counts = [
        sum(s.n_segments for s in make_segments(probs, SegmentConfig(start_threshold=t)))
        for t in (0.9, 0.5, 0.2, 0.05)
    ]
    assert counts == sorted(counts) and counts[-1] > counts[0]
    capped = make_segments(probs, SegmentConfig(start_threshold=0.0, max_segments=10))
    assert max(s.n_segments for s in capped) == 10
    for s in capped:  # segments tile the essay exactly
        assert s.word_start[0] == 0 and s.word_end[-1] == s.n_words
        assert np.array_equal(s.word_start[1:], s.word_end[:-1])


def test_features_are_segment_means() -> None:
    probs = simulate_word_probs(sample(), 0.5, seed=2, ids=sorted(sample().essays)[:3])
    segs = make_segments(probs)
    s = segs[1]
    p = probs[s.essay_id]
    assert s.features.shape == (s.n_segments, N_BASE_FEATURES) and s.features.dtype == np.float32
    k = s.n_segments // 2
    a, b = s.word_start[k], s.word_end[k]
    np.testing.assert_allclose(s.features[k, :NUM_LABELS], p[a:b].mean(0), atol=1e-5)
    head = p[a : min(a + 3, b), 1::2].mean(0)
    np.testing.assert_allclose(s.features[k, NUM_LABELS : NUM_LABELS + 7], head, atol=1e-5)
    np.testing.assert_allclose(s.features[k, -4:-2], [a / s.n_words, b / s.n_words], atol=1e-6)


def test_bad_probabilities_are_reported() -> None:
    with pytest.raises(DiscourseRLError, match="E1"):
        make_segments({"E1": np.zeros((5, 3), np.float32)})


def test_actions_to_spans_begins_and_continues() -> None:
    s = seg([0, 3, 6, 9, 12, 15], [3, 6, 9, 12, 15, 20])
    # B-Lead, I-Lead, none, I-Claim (nothing to continue: starts), B-Claim, I-Claim
    cls, start, end = actions_to_spans(s, [1, 2, 0, 6, 5, 6])
    assert cls.tolist() == [0, 2, 2]
    assert start.tolist() == [0, 9, 12]
    assert end.tolist() == [6, 12, 20]
    # A 'continues' of another class than the running span starts a new span.
    cls, start, end = actions_to_spans(s, [1, 6, 6, 0, 0, 0])
    assert cls.tolist() == [0, 2] and start.tolist() == [0, 3] and end.tolist() == [3, 9]


def test_masks_allow_continuing_only_the_running_class() -> None:
    first = allowed_actions(-1)
    assert first[0] and first[1::2].all() and not first[2::2].any()
    after_claim = allowed_actions(5)  # B-Claim
    assert after_claim[6] and after_claim[2::2].sum() == 1
    assert allowed_actions(0)[2::2].sum() == 0
    m = action_masks(np.array([1, 2, 0]))
    assert m.shape == (3, NUM_LABELS) and m[1, 2] and m[2, 2] and not m[0, 2]


def test_gold_actions_on_segments_equal_to_elements_reach_a_perfect_oracle() -> None:
    c = sample()
    ids = sorted(c.essays)[:15]
    segs = []
    for eid in ids:
        _, g_start, g_end = gold_spans(c, eid)
        n = c.essays[eid].n_words
        bounds = np.unique(np.concatenate(([0, n], g_start, g_end)))
        segs.append(EssaySegments(eid, n, bounds[:-1], bounds[1:], np.zeros((bounds.size - 1, 1))))
    assert oracle_score(segs, c).macro_f1 == pytest.approx(1.0)
    for s in segment_gold_actions(segs, c):
        assert s.gold_action is not None
        assert action_masks(s.gold_action)[np.arange(s.n_segments), s.gold_action].all()


def test_gold_action_majority_and_begin_flag() -> None:
    c = sample()
    eid = sorted(c.essays)[0]
    g_cls, g_start, g_end = gold_spans(c, eid)
    a, b = int(g_start[0]), int(g_end[0])
    assert b - a >= 4
    mid = (a + b) // 2
    n = c.essays[eid].n_words
    s = EssaySegments(eid, n, np.array([0, a, mid]), np.array([a, mid, b]), np.zeros((3, 1)))
    if a == 0:
        s = EssaySegments(eid, n, np.array([a, mid]), np.array([mid, b]), np.zeros((2, 1)))
    acts = essay_gold_actions(s, c)
    k = int(g_cls[0])
    assert acts[-2:].tolist() == [1 + 2 * k, 2 + 2 * k]


def test_simulated_probabilities_are_deterministic_and_calibrated() -> None:
    c = sample()
    ids = sorted(c.essays)
    p1 = simulate_word_probs(c, 0.5, seed=3)
    p2 = simulate_word_probs(c, 0.5, seed=3)
    assert all(np.array_equal(p1[i], p2[i]) for i in ids)
    assert all(p1[i].shape == (c.essays[i].n_words, NUM_LABELS) for i in ids)
    np.testing.assert_allclose(p1[ids[0]].sum(1), 1.0, atol=1e-5)
    gt = gold_frame(c, ids)
    naive = metric.score(naive_frame(p1, ids), gt).macro_f1
    assert 0.35 <= naive <= 0.6
    clean = metric.score(naive_frame(simulate_word_probs(c, 0.0, seed=3), ids), gt).macro_f1
    assert clean > 0.95


def test_default_oracle_and_tradeoff() -> None:
    c = sample()
    probs = simulate_word_probs(c, 0.5, seed=4)
    table = tradeoff_table(probs, c, [0.9, SegmentConfig().start_threshold])
    assert table["oracle_macro_f1"].iloc[1] >= 0.95
    assert (table["segments_per_element"] > 1).all()
    assert table["segments_per_essay"].iloc[0] <= table["segments_per_essay"].iloc[1]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    c = sample()
    probs = simulate_word_probs(c, 0.5, seed=5, ids=sorted(c.essays)[:6])
    segs = make_segments(probs)
    with_gold = segment_gold_actions(segs[:3], c) + segs[3:]
    save_segments(tmp_path / "s.npz", with_gold)
    back = load_segments(tmp_path / "s.npz")
    assert [s.essay_id for s in back] == [s.essay_id for s in with_gold]
    for x, y in zip(with_gold, back, strict=True):
        assert np.array_equal(x.word_start, y.word_start)
        assert np.array_equal(x.word_end, y.word_end)
        assert np.array_equal(x.features, y.features)
        assert (x.gold_action is None) == (y.gold_action is None)
        if x.gold_action is not None:
            assert np.array_equal(x.gold_action, y.gold_action)
    with pytest.raises(DiscourseRLError, match="not found"):
        load_segments(tmp_path / "missing.npz")
