from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASS_INDEX, NUM_LABELS, labels_to_spans
from discourse_rl.decoders import constrained as cd
from discourse_rl.decoders.decode import TunedThresholds, decode_naive
from discourse_rl.decoders.segments import simulate_word_probs

NO_MINIMA = TunedThresholds((0,) * 7, (0.0,) * 7)
LEAD, POSITION, CONCLUDING = (CLASS_INDEX[c] for c in ("Lead", "Position", "Concluding Statement"))


def _probs(seed: int, n: int, concentration: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(NUM_LABELS, concentration), size=n).astype(np.float32)


def _log_score(probs: np.ndarray, labels: np.ndarray) -> float:
    logp = np.log(np.maximum(probs.astype(np.float64), 1e-12))
    return float(logp[np.arange(len(labels)), labels].sum())


def test_valid_labels_rules() -> None:
    b_lead, i_lead, b_claim = 1 + 2 * LEAD, 2 + 2 * LEAD, 1 + 2 * CLASS_INDEX["Claim"]
    assert cd.valid_labels([b_lead, i_lead, 0, b_claim, b_claim + 1])
    assert not cd.valid_labels([i_lead])  # I- cannot open the essay
    assert not cd.valid_labels([0, i_lead])  # nor follow O
    assert not cd.valid_labels([b_claim, i_lead])  # nor another class
    assert cd.valid_labels([b_lead, 0, b_lead])
    assert not cd.valid_labels([b_lead, 0, b_lead], unique=[LEAD])


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 400),
    unique=st.sets(st.integers(0, 6), max_size=3),
    concentration=st.sampled_from([0.05, 0.3, 1.0]),
)
def test_viterbi_never_emits_an_invalid_sequence(
    seed: int, n: int, unique: set[int], concentration: float
) -> None:
    labels = cd.viterbi(_probs(seed, n, concentration), sorted(unique))
    assert labels.shape == (n,)
    assert cd.valid_labels(labels, unique)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 3),
    unique=st.sets(st.integers(0, 6), max_size=3),
)
def test_viterbi_equals_brute_force(seed: int, n: int, unique: set[int]) -> None:
    probs = _probs(seed, n)
    best = max(
        _log_score(probs, np.array(seq))
        for seq in itertools.product(range(NUM_LABELS), repeat=n)
        if cd.valid_labels(seq, unique)
    )
    labels = cd.viterbi(probs, sorted(unique))
    assert _log_score(probs, labels) == pytest.approx(best, abs=1e-9)


def test_brute_force_on_a_longer_essay_with_few_labels() -> None:
    # Four words whose mass sits on O, B-Lead and I-Lead: the argmax has two Leads.
    probs = np.full((4, NUM_LABELS), 1e-4, dtype=np.float32)
    b, i = 1 + 2 * LEAD, 2 + 2 * LEAD
    probs[:, [0, b, i]] = [[0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.15, 0.7, 0.15], [0.3, 0.1, 0.6]]
    assert labels_to_spans(probs.argmax(1))[0].tolist() == [LEAD, LEAD]
    best = max(
        (_log_score(probs, np.array(seq)), seq)
        for seq in itertools.product([0, b, i], repeat=4)
        if cd.valid_labels(seq, [LEAD])
    )
    labels = cd.viterbi(probs, [LEAD])
    assert tuple(labels.tolist()) == best[1]
    assert labels_to_spans(labels)[0].tolist() == [LEAD]


def test_argmax_is_kept_when_it_is_valid(corpus) -> None:  # type: ignore[no-untyped-def]
    probs = simulate_word_probs(corpus, noise=0.5, ids=corpus.ids[:5])
    for p in probs.values():
        arg = p.argmax(1)
        if cd.valid_labels(arg):
            assert np.array_equal(cd.viterbi(p), arg)


def test_gold_one_hot_decodes_to_gold_spans(corpus) -> None:  # type: ignore[no-untyped-def]
    unique = (LEAD, POSITION, CONCLUDING)
    params = cd.ConstrainedParams(unique, NO_MINIMA)
    checked = 0
    for eid in corpus.ids[:40]:
        labels = corpus.word_labels(eid).astype(np.int64)
        if not cd.valid_labels(labels, unique):
            continue
        probs = np.eye(NUM_LABELS, dtype=np.float32)[labels]
        got = cd.decode_constrained(probs, params)
        want = labels_to_spans(labels)
        assert all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
        checked += 1
    assert checked >= 30


def test_fit_learns_the_limits_and_they_hold(corpus) -> None:  # type: ignore[no-untyped-def]
    ids = corpus.ids[:60]
    probs = simulate_word_probs(corpus, noise=0.7, seed=1, ids=ids)
    params = cd.fit_constrained(probs, corpus, ids)
    assert LEAD in params.unique_classes
    assert len(params.unique_classes) <= cd.ConstrainedConfig().max_unique
    extra_naive = 0
    for p in probs.values():
        cls, start, end = cd.decode_constrained(p, params)
        assert np.all(end > start)
        assert np.all(np.diff(start) > 0) and np.all(start[1:] >= end[:-1])
        counts = np.bincount(cls, minlength=7)
        assert all(counts[c] <= 1 for c in params.unique_classes)
        naive = np.bincount(decode_naive(p)[0], minlength=7)
        extra_naive += sum(int(naive[c] > 1) for c in params.unique_classes)
    assert extra_naive > 0  # the noise made naive decoding break a limit: the test can fail


def test_params_round_trip_through_json(corpus) -> None:  # type: ignore[no-untyped-def]
    ids = corpus.ids[:20]
    probs = simulate_word_probs(corpus, ids=ids)
    params = cd.fit_constrained(probs, corpus, ids, cd.ConstrainedConfig(fit=False))
    back = cd.ConstrainedParams.from_json(json.loads(json.dumps(params.to_json())), "x")
    assert back == params
    with pytest.raises(DiscourseRLError, match="unknown class"):
        cd.ConstrainedParams.from_json({"unique_classes": ["Nope"], "thresholds": {}}, "x")


def test_bad_shape_is_a_clear_error() -> None:
    with pytest.raises(DiscourseRLError, match=r"\(n_words, 15\)"):
        cd.viterbi(np.zeros((3, 4), np.float32))
