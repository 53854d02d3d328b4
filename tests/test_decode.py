from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import NUM_LABELS, load_corpus
from discourse_rl.core.metric import score
from discourse_rl.decoders.decode import (
    DecodeConfig,
    TunedThresholds,
    decode_all,
    decode_naive,
    decode_tuned,
    evaluate_decoding,
    fit_tuned,
    load_thresholds,
    save_thresholds,
    span_probs,
)


def one_hot(labels: np.ndarray, confidence: float = 1.0) -> np.ndarray:
    probs = np.full((labels.size, NUM_LABELS), (1 - confidence) / (NUM_LABELS - 1), np.float32)
    probs[np.arange(labels.size), labels] = confidence
    return probs


@pytest.fixture(scope="module")
def corpus():  # type: ignore[no-untyped-def]
    c = load_corpus()
    return c.subset(sorted(c.essays)[:60])


def test_naive_round_trip_from_true_labels(corpus) -> None:  # type: ignore[no-untyped-def]
    probs = {i: one_hot(corpus.word_labels(i)) for i in corpus.essays}
    table = decode_all(probs, decode_naive)
    assert list(table.columns[:3]) == ["id", "class", "predictionstring"]
    result = score(table, corpus.elements)
    assert result.macro_f1 == pytest.approx(1.0)


def test_naive_reads_b_and_i_tags() -> None:
    labels = np.array([0, 1, 2, 2, 0, 4, 3, 4, 6])  # O B-Lead I I O I-Pos B-Pos I-Pos I-Claim
    cls, start, end = decode_naive(one_hot(labels))
    assert cls.tolist() == [0, 1, 1, 2]
    assert start.tolist() == [1, 5, 6, 8]
    assert end.tolist() == [4, 6, 8, 9]


def test_span_probs_and_tuned_filters() -> None:
    labels = np.array([1, 2, 2, 2, 0, 3, 4, 0])
    probs = one_hot(labels, 0.9)
    probs[5:7] = one_hot(labels[5:7], 0.4)
    spans = decode_naive(probs)
    np.testing.assert_allclose(
        span_probs(probs, spans), [0.9 + 0.1 / 14, 0.4 + 0.6 / 14], atol=1e-5
    )
    keep_all = TunedThresholds((0,) * 7, (0.0,) * 7)
    assert decode_tuned(probs, keep_all)[0].tolist() == [0, 1]
    long_only = TunedThresholds((3,) * 7, (0.0,) * 7)
    assert decode_tuned(probs, long_only)[0].tolist() == [0]
    sure_only = TunedThresholds((0,) * 7, (0.5,) * 7)
    assert decode_tuned(probs, sure_only)[0].tolist() == [0]


def test_fit_removes_junk_spans_and_beats_naive(corpus) -> None:  # type: ignore[no-untyped-def]
    """True spans with confident probabilities plus short, unsure junk spans in the gaps and
    inside Evidence: the fit must find minima that drop the junk and keep the true spans."""
    rng = np.random.default_rng(0)
    probs = {}
    for i in corpus.essays:
        labels = corpus.word_labels(i).astype(np.int64)
        p = one_hot(labels, 0.9)
        for s in rng.choice(labels.size - 2, size=3, replace=False):
            junk = np.zeros(NUM_LABELS, np.float32)
            junk[1 + 2 * 2] = 0.45  # B-Claim, unsure
            junk[0] = 0.30
            p[s : s + 2] = junk
        probs[i] = p
    folds = {i: k % 2 for k, i in enumerate(corpus.essays)}
    report = evaluate_decoding(probs, corpus, folds, DecodeConfig(max_min_words=4))
    assert report.tuned.macro_f1 > report.naive.macro_f1
    assert report.tuned_cross_fitted.macro_f1 > report.naive.macro_f1
    th = fit_tuned(probs, corpus, DecodeConfig(max_min_words=4))
    assert th.min_prob[2] > 0.45 or th.min_words[2] > 2
    kept = decode_all(probs, lambda p: decode_tuned(p, th))
    assert score(kept, corpus.elements).macro_f1 == pytest.approx(report.tuned.macro_f1)
    frozen = fit_tuned(probs, corpus, DecodeConfig(fit=False))
    assert frozen == TunedThresholds(DecodeConfig().min_words, DecodeConfig().min_prob)


def test_thresholds_file_round_trip(tmp_path: Path) -> None:
    th = TunedThresholds((1, 2, 3, 4, 5, 6, 7), (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7))
    save_thresholds(tmp_path / "d.json", th)
    assert load_thresholds(tmp_path / "d.json") == th
    (tmp_path / "bad.json").write_text('{"Lead": {}}')
    with pytest.raises(DiscourseRLError, match=r"bad\.json"):
        load_thresholds(tmp_path / "bad.json")
    with pytest.raises(DiscourseRLError, match="not found"):
        load_thresholds(tmp_path / "missing.json")
    with pytest.raises(DiscourseRLError):
        TunedThresholds((1,), (0.5,))
