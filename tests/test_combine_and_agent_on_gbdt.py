"""The combining stage (per class, the best member by inner cross-fitting) and the agent's
inputs from gbdt (cross-fitted scores, re-cut segments, gbdt's labelling as actions)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import pytest

from discourse_rl.decoders import gbdt as spans
from discourse_rl.decoders.agent.on_gbdt import (
    N_GBDT_FEATURES,
    cross_fit_gbdt,
    gbdt_segment_features,
    gbdt_segments,
    spans_actions,
    view_of,
    with_actions,
)
from discourse_rl.decoders.gbdt.combine import choose, combine_frames, fit_combined
from discourse_rl.decoders.gbdt.gbdt import training_table
from discourse_rl.decoders.gbdt.model import build_candidates
from discourse_rl.decoders.segments import (
    SegmentConfig,
    essay_gold_actions,
    gold_frame,
    make_segments,
    paragraph_starts,
    simulate_word_probs,
    spans_frame,
)

CFG = dataclasses.replace(spans.GbdtConfig(), n_estimators=20, num_threads=1, min_child_samples=5)
SEG = SegmentConfig(start_threshold=0.3, punctuation="clause", rich_features=True)


@pytest.fixture(scope="module")
def probs(corpus):  # type: ignore[no-untyped-def]
    return simulate_word_probs(corpus, noise=0.6, seed=3, ids=corpus.ids[:24])


def _only(frame: pd.DataFrame, cls: str) -> pd.DataFrame:
    return frame[frame["class"] == cls].reset_index(drop=True)


def test_choose_takes_each_class_from_its_best_member(corpus) -> None:  # type: ignore[no-untyped-def]
    ids = corpus.ids[:10]
    gt = gold_frame(corpus, ids).rename(columns={"discourse_type": "class"})
    a = _only(gt, "Claim")  # perfect on Claim, nothing else
    b = gt[gt["class"] != "Claim"].reset_index(drop=True)  # perfect on the rest
    choice = choose({"a": a, "b": b}, gold_frame(corpus, ids))
    assert choice.member["Claim"] == "a"
    assert choice.member["Evidence"] == "b"
    both = combine_frames({"a": a, "b": b}, choice)
    assert len(both) == len(gt)


def test_fit_combined_uses_only_training_essays(corpus) -> None:  # type: ignore[no-untyped-def]
    seen: list[list[str]] = []
    gt = gold_frame(corpus, corpus.ids).rename(columns={"discourse_type": "class"})

    def oracle(cls: str):  # type: ignore[no-untyped-def]
        def fit(ids: Sequence[str]):  # type: ignore[no-untyped-def]
            seen.append(list(ids))
            return lambda pred: _only(gt[gt["id"].isin(pred)], cls)

        return fit

    train = corpus.ids[:12]
    choice, predict = fit_combined(
        {"lead": oracle("Lead"), "claim": oracle("Claim")}, train, corpus, folds=3
    )
    assert choice.member["Lead"] == "lead" and choice.member["Claim"] == "claim"
    assert all(set(s) <= set(train) for s in seen)
    out = predict(corpus.ids[12:16])
    assert set(out["class"]) <= {"Lead", "Claim"}
    assert set(out["id"]) <= set(corpus.ids[12:16])


def test_spans_actions_is_the_gold_rule(corpus, probs) -> None:  # type: ignore[no-untyped-def]
    ids = corpus.ids[:5]
    words = {i: corpus.essays[i].words for i in ids}
    segs = make_segments(probs, SEG, ids, words, paragraph_starts(corpus.essays, ids))
    for s in segs:
        el = corpus.essay_elements(s.essay_id)
        gold = tuple(el[c].to_numpy(np.int64) for c in ("class_idx", "word_start", "word_end"))
        got = spans_actions(s.word_start, s.word_end, gold)  # type: ignore[arg-type]
        assert np.array_equal(got, essay_gold_actions(s, corpus))


def test_segment_features_cover_start_end_and_action() -> None:
    ws, we = np.array([0, 4, 8]), np.array([4, 8, 12])
    cand = (np.array([2, 5]), np.array([4, 0]), np.array([12, 12]), np.array([0.7, 0.4]))
    labelled = (np.array([2]), np.array([4]), np.array([12]))
    f = gbdt_segment_features(ws, we, cand, labelled)  # type: ignore[arg-type]
    assert f.shape == (3, N_GBDT_FEATURES)
    cover, start, end, action = f[:, :7], f[:, 7:14], f[:, 14:21], f[:, 21:]
    assert cover[0].tolist() == [0, 0, 0, 0, 0, pytest.approx(0.4), 0]
    assert cover[1, 2] == pytest.approx(0.7) and cover[2, 2] == pytest.approx(0.7)
    assert start[1, 2] == pytest.approx(0.7) and start[2, 2] == 0.0
    assert end[2, 2] == pytest.approx(0.7) and end[1, 2] == 0.0
    assert action.argmax(1).tolist() == [0, 1 + 2 * 2, 2 + 2 * 2]


def test_agent_inputs_reproduce_gbdt(corpus, probs) -> None:  # type: ignore[no-untyped-def]
    train, held = corpus.ids[:18], corpus.ids[18:24]
    data = training_table(probs, corpus, train, CFG)
    model = spans.fit(probs, corpus, train, CFG)
    htab = build_candidates({i: probs[i] for i in held}, corpus.essays, held, CFG, data.limits)
    view = view_of(model, htab)
    oof = cross_fit_gbdt(data, corpus, CFG, folds=2)
    assert set(oof.spans["id"]) <= set(train)
    assert oof.score.shape == (data.table.cls.size,)
    assert not np.allclose(oof.score, view_of(model, data.table).score)  # out of fold differs
    ids = [*train, *held]
    words = {i: corpus.essays[i].words for i in ids}
    paras = paragraph_starts(corpus.essays, ids)
    segs = gbdt_segments(probs, held, SEG, words, paras, view)
    base = make_segments(probs, SEG, held, words, paras)
    assert segs[0].features.shape[1] == base[0].features.shape[1] + N_GBDT_FEATURES
    # Cut at every edge of gbdt's spans, so copying gbdt's labelling gives its spans exactly.
    copied = with_actions(segs, view)
    frame = spans_frame(copied, [s.gold_action for s in copied])  # type: ignore[misc]
    key = ["id", "class", "word_start", "word_end"]
    a = frame[key].sort_values(key).reset_index(drop=True)
    b = view.spans[key].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
