"""gbdt's additions: extra candidates, rich features, rules after selection."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASS_INDEX, CLASSES, Essay
from discourse_rl.decoders import constrained
from discourse_rl.decoders import gbdt as spans
from discourse_rl.decoders.decode import TunedThresholds
from discourse_rl.decoders.gbdt.candidates import CandidateSettings, essay_candidates
from discourse_rl.decoders.gbdt.candidates_plus import (
    _best_windows,
    _merges,
    clause_starts,
    extend_candidates,
)
from discourse_rl.decoders.gbdt.features import FEATURE_NAMES, Layout
from discourse_rl.decoders.gbdt.features_plus import N_PLUS, PLUS_NAMES, plus_features
from discourse_rl.decoders.gbdt.model import build_candidates
from discourse_rl.decoders.gbdt.postprocess import RuleSettings, _Span, apply_rules, essay_rules
from discourse_rl.decoders.segments import simulate_word_probs

CFG = dataclasses.replace(spans.GbdtConfig(), n_estimators=30, num_threads=1, min_child_samples=5)
PLUS = dict(
    sentence_ends=3,
    clause_ends=2,
    class_start_threshold=0.05,
    subspan_shares=(0.65,),
    sentence_splits=True,
    merge_naive=3,
)
NO_LIMITS = constrained.ConstrainedParams((), TunedThresholds((0,) * 7, (0.0,) * 7))
EMPTY = (np.zeros(0, np.int64),) * 3


def _flat(n: int, cls: int = 2) -> np.ndarray:
    """A tagger that sees one span of `cls` over the whole essay (B at word 0)."""
    p = np.zeros((n, 15), np.float32)
    p[:, 2 + 2 * cls] = 1.0
    p[0, 2 + 2 * cls] = 0.0
    p[0, 1 + 2 * cls] = 1.0
    return p


def test_off_settings_change_nothing() -> None:
    p = _flat(12)
    base = essay_candidates(p, EMPTY, CandidateSettings(0.15, 4, 0.05, 3, 1))
    z = np.zeros(12, np.bool_)
    out = extend_candidates(base, p, EMPTY, EMPTY, np.array([0]), z, z, z, spans.GbdtConfig())
    assert out is base


def test_sentence_starts_find_an_element_the_tagger_merged() -> None:
    # The tagger sees one Claim over words 0-11; a true span is words 6-11 (a second sentence).
    p = _flat(12)
    naive = (np.array([2]), np.array([0]), np.array([12]))
    base = essay_candidates(p, naive, CandidateSettings(0.15, 4, 0.05, 3, 0))
    assert not ((base.start == 6) & (base.end == 12)).any()
    sent = np.zeros(12, np.bool_)
    sent[[0, 6]] = True
    para = np.zeros(12, np.bool_)
    para[0] = True
    z = np.zeros(12, np.bool_)
    out = extend_candidates(
        base, p, naive, naive, np.array([0]), sent, para, z, spans.GbdtConfig(sentence_ends=2)
    )
    hit = (out.start == 6) & (out.end == 12) & (out.cls == 2)
    assert hit.sum() == 1
    # The base candidates are all still there, and the naive flag is kept.
    assert out.size > base.size
    assert out.naive[(out.start == 0) & (out.end == 12) & (out.cls == 2)].all()


def test_best_window_sits_on_the_strongest_words() -> None:
    n = 20
    p = np.zeros((n, 15))
    p[:, 0] = 1.0
    p[10:17, 0] = 0.0
    p[10:17, 4] = 1.0  # Position (class 1) on words 10-16
    cum = np.vstack([np.zeros((1, 7)), np.cumsum(p[:, 1::2] + p[:, 2::2], 0)])
    best, prefix, suffix = _best_windows(
        (np.array([1]), np.array([5]), np.array([20])), 0.5, cum, n
    )
    w = round(0.5 * 15)
    assert (best[1][0], best[2][0]) == (10, 10 + w) or best[1][0] >= 10 - (w - 7)
    assert cum[best[2][0], 1] - cum[best[1][0], 1] == 7  # the window covers all 7 strong words
    assert (prefix[1][0], prefix[2][0]) == (5, 5 + w)
    assert (suffix[1][0], suffix[2][0]) == (20 - w, 20)


def test_merges_join_neighbours_within_the_gap() -> None:
    naive = (np.array([0, 5, 5]), np.array([0, 10, 30]), np.array([8, 20, 40]))
    out = _merges(naive, 3, 2)
    spans_ = {
        (int(c), int(s), int(e)) for cs, ss, es in out for c, s, e in zip(cs, ss, es, strict=True)
    }
    # 0-8 and 10-20 are 2 words apart: merged, once per class of the parts; 20-30 is too far.
    assert spans_ == {(0, 0, 20), (5, 0, 20)}


def test_clause_starts() -> None:
    e = Essay.from_text("x", "First, we go; then: done. Yes")
    assert clause_starts(e).tolist() == [False, True, False, True, True, False]


@pytest.fixture(scope="module")
def probs(corpus):  # type: ignore[no-untyped-def]
    return simulate_word_probs(corpus, noise=0.6, seed=3, ids=corpus.ids[:30])


def test_extra_candidates_raise_recall(corpus, probs) -> None:  # type: ignore[no-untyped-def]
    ids = corpus.ids[:20]
    base = build_candidates(probs, corpus.essays, ids, CFG, NO_LIMITS, corpus)
    cfg = dataclasses.replace(CFG, **PLUS)
    more = build_candidates(probs, corpus.essays, ids, cfg, NO_LIMITS, corpus)
    assert base.recall is not None and more.recall is not None
    assert more.cls.size > base.cls.size
    for c, v in base.recall.items():
        assert more.recall[c] >= v or np.isnan(v), c
    assert np.nanmean(list(more.recall.values())) > np.nanmean(list(base.recall.values()))


def test_rich_features_shape_and_values(corpus, probs) -> None:  # type: ignore[no-untyped-def]
    ids = corpus.ids[:6]
    cfg = dataclasses.replace(CFG, rich_features=True)
    table = build_candidates(probs, corpus.essays, ids, cfg, NO_LIMITS, corpus)
    assert table.features.shape == (table.cls.size, len(FEATURE_NAMES) + N_PLUS)
    assert np.isfinite(table.features).all()
    assert len(set(cfg.feature_names())) == len(cfg.feature_names())
    # Hand-checked values on a tiny essay: one Claim over words 2-5 of 8, one paragraph.
    p = np.zeros((8, 15), np.float32)
    p[:, 0] = 1.0
    p[2:6, 0] = 0.0
    p[2, 5] = 1.0
    p[3:6, 6] = 1.0
    cand = essay_candidates(p, EMPTY, CandidateSettings(0.15, 2, 0.05, 1, 0))
    para = np.zeros(8, np.bool_)
    para[0] = True
    f = plus_features(p, cand, Layout(para, para.copy()))
    k = int(np.flatnonzero((cand.start == 2) & (cand.end == 6) & (cand.cls == 2))[0])
    row = dict(zip(PLUS_NAMES, f[k].tolist(), strict=True))
    assert row["b_mean"] == pytest.approx(0.25)
    assert row["i_min"] == 0.0 and row["i_max"] == 1.0
    assert row["p_q50"] == 1.0 and row["p_std"] == 0.0
    assert row["argmax_first_is_class"] == 1.0 and row["argmax_after_is_class"] == 0.0
    assert row["first_paragraph"] == 1.0 and row["whole_paragraph"] == 0.0
    assert row["share_of_paragraph"] == pytest.approx(0.5)


def test_fit_predict_save_load_with_everything_on(corpus, probs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = dataclasses.replace(CFG, rich_features=True, **PLUS)
    train, held = corpus.ids[:24], corpus.ids[24:30]
    model = spans.fit(probs, corpus, train, cfg)
    held_probs = {i: probs[i] for i in held}
    pred = model.predict(held_probs, corpus.essays)
    assert len(pred) > 0
    model.save(tmp_path / "m")
    again = spans.SpanModel.load(tmp_path / "m").predict(held_probs, corpus.essays)
    assert pred.equals(again)
    table = build_candidates(held_probs, corpus.essays, held, cfg, model.limits)
    # With no rule on, apply_rules is predict_table.
    rows, score = model.kept_rows(table)
    unique = frozenset(int(u) for u in model.limits.unique_classes)
    same = apply_rules(rows, score, table, unique, corpus.essays, RuleSettings())
    assert same.reset_index(drop=True).equals(pred.reset_index(drop=True))
    # The config's switches turn them on in predict itself, and the saved model keeps them.
    switched = dataclasses.replace(cfg, one_per_essay=True, repair_gap=1)
    ruled_model = dataclasses.replace(model, cfg=switched)
    ruled = ruled_model.predict(held_probs, corpus.essays)
    want = apply_rules(rows, score, table, unique, None, RuleSettings.of(switched))
    assert ruled.reset_index(drop=True).equals(want.reset_index(drop=True))
    per_essay = ruled[ruled["class"].isin([CLASSES[u] for u in unique])].groupby(["id", "class"])
    assert (per_essay.size() == 1).all()
    ruled_model.save(tmp_path / "r")
    assert spans.SpanModel.load(tmp_path / "r").predict(held_probs, corpus.essays).equals(ruled)


def test_rules_one_per_essay_repair_short_evidence() -> None:
    lead, ev = CLASS_INDEX["Lead"], CLASS_INDEX["Evidence"]
    spans_ = [_Span(lead, 0, 5, 0.4), _Span(lead, 6, 9, 0.9), _Span(ev, 10, 20, 0.5)]
    out = essay_rules(spans_, frozenset({lead}), None, RuleSettings(one_per_essay=True))
    assert [(s.start, s.end) for s in out] == [(6, 9), (10, 20)]
    spans_ = [_Span(ev, 10, 20, 0.5), _Span(ev, 21, 30, 0.7), _Span(ev, 40, 50, 0.1)]
    out = essay_rules(spans_, frozenset(), None, RuleSettings(repair_gap=1))
    assert [(s.start, s.end, s.score) for s in out] == [(10, 30, 0.7), (40, 50, 0.1)]
    sent = np.zeros(60, np.bool_)
    sent[[0, 12, 33]] = True
    spans_ = [_Span(lead, 0, 10, 0.5), _Span(ev, 35, 40, 0.5)]
    out = essay_rules(spans_, frozenset(), sent, RuleSettings(short_evidence=8))
    assert [(s.start, s.end) for s in out] == [(0, 10), (33, 40)]
    # Not past the span before it.
    spans_ = [_Span(lead, 0, 34, 0.5), _Span(ev, 35, 40, 0.5)]
    out = essay_rules(spans_, frozenset(), sent, RuleSettings(short_evidence=8))
    assert out[1].start == 35


def test_subset_table_and_inner_folds(corpus, probs) -> None:  # type: ignore[no-untyped-def]
    from discourse_rl.decoders.gbdt.gbdt import training_table
    from discourse_rl.decoders.gbdt.search import inner_score, subset_table

    data = training_table(probs, corpus, corpus.ids[:20], CFG)
    part = subset_table(data.table, np.array([3, 1]))
    assert part.ids == [data.ids[1], data.ids[3]]
    assert set(part.essay.tolist()) == {0, 1}
    assert part.cls.size == int(np.isin(data.table.essay, [1, 3]).sum())
    value = inner_score(data, corpus, CFG, folds=2)
    assert 0.0 <= value <= 1.0
    assert value == inner_score(data, corpus, CFG, folds=2)  # seeded, deterministic


def test_search_runs_when_optuna_is_installed(corpus, probs) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("optuna")
    from discourse_rl.decoders.gbdt.gbdt import training_table
    from discourse_rl.decoders.gbdt.search import search

    data = training_table(probs, corpus, corpus.ids[:16], CFG)
    space = {"num_leaves": ("intlog", 4, 16), "lambda_l2": ("log", 1e-3, 1.0)}
    best, history = search(data, corpus, CFG, 2, 2, space=space, log=lambda _: None)
    assert set(best) == set(space) and len(history) == 2
    assert history[0]["num_leaves"] == 16  # the base (31) clipped into the range


def test_rare_classes_get_sentence_candidates_below_the_top_classes() -> None:
    # Words 0-9: mostly Claim, Evidence, Position; Rebuttal (class 4) only 0.03 on average.
    n = 10
    p = np.zeros((n, 15), np.float32)
    p[:, 6] = 0.5  # I-Claim
    p[:, 12] = 0.3  # I-Evidence
    p[:, 4] = 0.17  # I-Position
    p[:, 10] = 0.03  # I-Rebuttal
    sent = np.zeros(n, np.bool_)
    sent[[0, 5]] = True
    z = np.zeros(n, np.bool_)
    base = essay_candidates(p, EMPTY, CandidateSettings(0.15, 2, 0.05, 3, 0))
    rebuttal = CLASS_INDEX["Rebuttal"]
    for rare, expected in ((0.0, False), (0.02, True)):
        out = extend_candidates(
            base,
            p,
            EMPTY,
            EMPTY,
            np.array([0]),
            sent,
            sent,
            z,
            spans.GbdtConfig(sentence_ends=2, rare_min_prob=rare),
        )
        assert bool(((out.cls == rebuttal) & (out.start == 5) & (out.end == 10)).any()) is expected


def test_rule_switches_key_only_when_on() -> None:
    from discourse_rl.core import rules
    from discourse_rl.decoders.gbdt.model import GbdtConfig

    off = rules.keyed(GbdtConfig())
    assert not {"one_per_essay", "repair_gap", "short_evidence"} & set(off)
    assert rules.plain(GbdtConfig()).keys() == off.keys()
    on = rules.keyed(GbdtConfig(repair_gap=0, short_evidence=8))
    assert on == {**off, "repair_gap": 0, "short_evidence": 8}


def test_short_evidence_needs_the_essays() -> None:
    # Refused before the table is read: no table needed.
    with pytest.raises(DiscourseRLError, match="short_evidence needs the essays"):
        apply_rules(
            np.zeros(0, np.int64),
            np.zeros(0),
            None,  # type: ignore[arg-type]
            frozenset(),
            None,
            RuleSettings(short_evidence=8),
        )
