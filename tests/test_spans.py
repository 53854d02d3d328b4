from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from discourse_rl.core import metric
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASSES, NUM_LABELS
from discourse_rl.decoders import constrained
from discourse_rl.decoders import gbdt as spans
from discourse_rl.decoders.decode import TunedThresholds, decode_all, decode_naive
from discourse_rl.decoders.gbdt.candidates import hit_matrix
from discourse_rl.decoders.gbdt.features import FEATURE_NAMES
from discourse_rl.decoders.gbdt.model import build_candidates
from discourse_rl.decoders.segments import gold_frame, simulate_word_probs

# Small and quick: a few essays, few trees, one thread.
CFG = dataclasses.replace(spans.GbdtConfig(), n_estimators=40, num_threads=1, min_child_samples=5)
NO_LIMITS = constrained.ConstrainedParams((), TunedThresholds((0,) * 7, (0.0,) * 7))


@pytest.fixture(scope="module")
def train_ids(corpus) -> list[str]:  # type: ignore[no-untyped-def]
    return corpus.ids[:30]


@pytest.fixture(scope="module")
def probs(corpus, train_ids):  # type: ignore[no-untyped-def]
    return simulate_word_probs(corpus, noise=0.6, seed=3, ids=[*train_ids, *corpus.ids[30:40]])


@pytest.fixture(scope="module")
def model(corpus, probs, train_ids):  # type: ignore[no-untyped-def]
    return spans.fit(probs, corpus, train_ids, CFG)


def test_one_hot_candidates_cover_every_gold_span(corpus) -> None:  # type: ignore[no-untyped-def]
    ids = corpus.ids[:25]
    onehot = {i: np.eye(NUM_LABELS, dtype=np.float32)[corpus.word_labels(i)] for i in ids}
    table = build_candidates(onehot, corpus.essays, ids, CFG, NO_LIMITS, corpus)
    assert table.recall is not None
    assert all(v == 1.0 for v in table.recall.values()), table.recall
    assert table.features.shape == (table.cls.size, len(FEATURE_NAMES))
    assert np.isfinite(table.features).all()


def test_noisy_candidates_miss_some_spans(corpus, probs, train_ids) -> None:  # type: ignore[no-untyped-def]
    # The recall check above can fail: with a noisy tagger some true spans get no candidate.
    table = build_candidates(probs, corpus.essays, train_ids, CFG, NO_LIMITS, corpus)
    assert table.recall is not None
    # Recount by hand: a true span is found when a candidate of its class and essay covers at
    # least half of it and at least half of the candidate is inside it.
    found = {c: [0, 0] for c in CLASSES}
    for row in corpus.elements[corpus.elements["id"].isin(train_ids)].itertuples():
        k = train_ids.index(row.id)
        same = (table.essay == k) & (table.cls == row.class_idx)
        s, e = table.start[same], table.end[same]
        inter = np.minimum(e, row.word_end) - np.maximum(s, row.word_start)
        longer = np.maximum(e - s, row.word_end - row.word_start)
        found[row.discourse_type][0] += bool(((inter > 0) & (2 * inter >= longer)).any())
        found[row.discourse_type][1] += 1
    expected = {c: hit / n if n else float("nan") for c, (hit, n) in found.items()}
    assert table.recall.keys() == expected.keys()
    assert all(table.recall[c] == pytest.approx(expected[c], nan_ok=True) for c in CLASSES)
    assert min(expected.values()) < 1.0  # the noise made some true span unreachable


@given(
    ps=st.integers(0, 30),
    pl=st.integers(1, 30),
    gs=st.integers(0, 30),
    gl=st.integers(1, 30),
    same=st.booleans(),
)
def test_hit_matrix_is_the_metric_criterion(ps: int, pl: int, gs: int, gl: int, same: bool) -> None:
    one = np.array([2], dtype=np.int64)
    gc = one if same else one + 1
    pred = (one, np.array([ps]), np.array([ps + pl]))
    gold = (gc, np.array([gs]), np.array([gs + gl]))
    counts = metric.essay_counts(*pred, *gold)
    assert bool(hit_matrix(pred, gold)[0, 0]) == bool(counts[:, 0].sum())


def test_gbdt_beats_naive_on_its_training_essays(corpus, probs, model, train_ids) -> None:  # type: ignore[no-untyped-def]
    gt = gold_frame(corpus, train_ids)
    train_probs = {i: probs[i] for i in train_ids}
    pred = model.predict(train_probs, corpus.essays)
    naive = metric.score(decode_all(train_probs, decode_naive), gt).macro_f1
    assert metric.score(pred, gt).macro_f1 >= naive
    assert list(pred.columns) == ["id", "class", "predictionstring", "word_start", "word_end"]
    # Selected spans never overlap within an essay.
    for _, g in pred.groupby("id"):
        g = g.sort_values("word_start")
        assert (g["word_start"].to_numpy()[1:] >= g["word_end"].to_numpy()[:-1]).all()
    assert model.report.n_essays == len(train_ids)
    assert set(model.report.recall) == set(model.thresholds.to_json())


def test_save_load_round_trip(corpus, probs, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    held = {i: probs[i] for i in corpus.ids[30:40]}
    model.save(tmp_path / "spans")
    model.save(tmp_path / "spans")  # over an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["spans"]
    back = spans.SpanModel.load(tmp_path / "spans")
    assert back.thresholds == model.thresholds and back.limits == model.limits
    assert back.cfg == model.cfg
    pd.testing.assert_frame_equal(
        back.predict(held, corpus.essays), model.predict(held, corpus.essays)
    )


def test_same_seed_same_result(corpus, probs, model, train_ids) -> None:  # type: ignore[no-untyped-def]
    again = spans.fit(probs, corpus, train_ids, CFG)
    assert again.thresholds == model.thresholds
    assert [b.model_to_string() for b in again.boosters.values()] == [
        b.model_to_string() for b in model.boosters.values()
    ]


def test_per_class_models(corpus, probs, train_ids) -> None:  # type: ignore[no-untyped-def]
    cfg = dataclasses.replace(CFG, per_class=True, threshold_folds=0)
    m = spans.fit(probs, corpus, train_ids, cfg)
    assert set(m.boosters) <= set(range(7)) and len(m.boosters) >= 5
    table = build_candidates(probs, corpus.essays, train_ids, m.cfg, m.limits)
    pred = m.predict({i: probs[i] for i in train_ids}, corpus.essays)
    # Each prediction is one of its essay's candidates, meets its class's minimum length, and
    # no two of an essay overlap; every class with a booster of its own is predicted.
    offered = {
        (table.ids[e], CLASSES[c], s, t)
        for e, c, s, t in zip(table.essay, table.cls, table.start, table.end, strict=True)
    }
    rows = list(zip(pred["id"], pred["class"], pred["word_start"], pred["word_end"], strict=True))
    assert set(rows) <= offered and len(set(rows)) == len(rows)
    min_words = dict(zip(CLASSES, m.thresholds.min_words, strict=True))
    assert all(t - s >= min_words[c] for _, c, s, t in rows)
    for _, essay in pred.groupby("id"):
        ranges = sorted(zip(essay["word_start"], essay["word_end"], strict=True))
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    assert set(pred["class"]) == {CLASSES[c] for c in m.boosters}


def test_bad_inputs_are_clear_errors(corpus, probs, model, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    eid = corpus.ids[0]
    with pytest.raises(DiscourseRLError, match="probabilities"):
        model.predict({eid: probs[eid][:-1]}, corpus.essays)
    with pytest.raises(DiscourseRLError, match="no text"):
        model.predict({"nope": probs[eid]}, corpus.essays)
    with pytest.raises(DiscourseRLError, match="not a gbdt model folder"):
        spans.SpanModel.load(tmp_path / "missing")
    with pytest.raises(DiscourseRLError, match="no training essay"):
        spans.fit(probs, corpus, ["nope"], CFG)


def test_negative_subsampling_keeps_every_hit(corpus, probs, model, train_ids) -> None:  # type: ignore[no-untyped-def]
    cfg = dataclasses.replace(CFG, negative_share=0.3)
    data = spans.gbdt.training_table(probs, corpus, train_ids, cfg)
    hit = data.table.hit
    assert hit is not None
    rows = spans.gbdt._training_rows(hit, cfg)
    assert rows[hit].all() and 0.2 < rows[~hit].mean() < 0.4
    a, b = (spans.gbdt.fit_table(data, corpus, cfg) for _ in range(2))
    assert a.report.n_train_rows == int(rows.sum()) < model.report.n_train_rows
    assert model.report.n_train_rows == model.report.n_candidates
    assert [x.model_to_string() for x in a.boosters.values()] == [
        x.model_to_string() for x in b.boosters.values()
    ]
    # The table built once gives what fit() gives from scratch.
    direct = spans.fit(probs, corpus, train_ids, cfg)
    assert direct.thresholds == a.thresholds


def test_paragraph_breaks_make_paragraph_candidates(corpus, probs) -> None:  # type: ignore[no-untyped-def]
    from discourse_rl.decoders.gbdt.candidates import essay_candidates
    from discourse_rl.decoders.gbdt.features import essay_layout

    eid = corpus.ids[0]
    p = probs[eid]
    breaks = np.flatnonzero(essay_layout(corpus.essays[eid]).paragraph)
    vit = constrained.constrained_spans(p, ())
    plain = essay_candidates(p, vit, CFG.candidates())
    with_breaks = essay_candidates(p, vit, CFG.candidates(), breaks)
    ends = np.append(breaks[1:], p.shape[0])

    def paragraphs(c) -> int:  # type: ignore[no-untyped-def]
        pairs = set(zip(c.start.tolist(), c.end.tolist(), strict=True))
        return sum((s, e) in pairs for s, e in zip(breaks.tolist(), ends.tolist(), strict=True))

    # Whole paragraphs the tagger's boundaries alone did not offer become candidates.
    assert len(breaks) > 2 and paragraphs(with_breaks) > paragraphs(plain)
    assert with_breaks.size >= plain.size
