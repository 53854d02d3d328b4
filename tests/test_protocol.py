"""The split protocol, the gbdt step's typed results, the merged held-out table, and the
segments' rich features."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASSES, load_corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import heldout_split, read_split, write_split
from discourse_rl.core.records import (
    AgentResults,
    HeldOutEssays,
    HeldOutScore,
    SpansResults,
    StageScores,
)
from discourse_rl.decoders.segments import (
    N_BASE_FEATURES,
    N_RICH_FEATURES,
    SegmentConfig,
    make_segments,
    paragraph_starts,
    simulate_word_probs,
)
from discourse_rl.run.heldout import heldout_table

IDS = [f"E{i:03d}" for i in range(50)]


def test_split_is_seeded_deterministic_and_disjoint(tmp_path: Path) -> None:
    a = heldout_split(IDS, 0.2, 0)
    assert a == heldout_split(list(reversed(IDS)), 0.2, 0)  # only the set of ids matters
    assert len(a.heldout) == 10 and len(a.train) == 40
    assert not set(a.train) & set(a.heldout) and set(a.train) | set(a.heldout) == set(IDS)
    assert list(a.train) == sorted(a.train) and list(a.heldout) == sorted(a.heldout)
    assert heldout_split(IDS, 0.2, 1).heldout != a.heldout
    write_split(tmp_path / "split.json", a)
    assert read_split(tmp_path / "split.json") == a
    d = a.describe()
    assert d.folds_from == "split" and d.candidates == 50 and d.share == 0.2
    assert d.describe() == "a seeded 20% (seed 0) of the 50 essays with out-of-fold probabilities"
    for share in (0.0, 1.0, 0.001):
        with pytest.raises(DiscourseRLError, match="heldout_share"):
            heldout_split(IDS, share, 0)


def _row(name: str, macro: float, seeds: tuple[int, ...] = ()) -> StageScores:
    per = {c: macro for c in CLASSES}
    scores = [HeldOutScore(macro, per, macro, macro) for _ in seeds or (0,)]
    return StageScores.combine(name, scores, seeds, 40, 10)


def test_spans_results_round_trip_and_merge_with_the_agent_table(tmp_path: Path) -> None:
    held = heldout_split(IDS, 0.2, 0).describe()
    recall = {c: 0.9 for c in CLASSES} | {"Rebuttal": math.nan}
    spans = SpansResults(
        40,
        10,
        held,
        (_row("ner-naive", 0.2), _row("ner-tuned", 0.3), _row("gbdt", 0.4, (0, 1))),
        ("Lead",),
        recall,
        recall,
        120.0,
        0.1,
        4000,
        1.5,
        (2.0, 2.5),
    )
    lay = RunLayout(tmp_path)
    lay.gbdt_dir.mkdir()
    spans.write(lay.gbdt_results)
    back = SpansResults.read(lay.gbdt_results)
    assert back.to_json() == spans.to_json() and math.isnan(back.recall_train["Rebuttal"])
    agent = AgentResults(40, 10, held, (_row("ner-naive", 0.25), _row("bc", 0.35, (0,))))
    lay.agent.mkdir()
    agent.write(lay.agent_results)
    table = heldout_table(tmp_path)
    assert [r.stage for r in table.rows] == ["ner-naive", "ner-tuned", "gbdt", "bc"]
    assert table.stage("ner-naive").macro_f1.mean == 0.2  # type: ignore[union-attr]
    # An agent table on other essays (e.g. simulated probabilities) is not mixed with the spans.
    other = HeldOutEssays.split(0.2, 0, 50, simulated=True)
    AgentResults(40, 10, other, agent.stages).write(lay.agent_results)
    assert [r.stage for r in heldout_table(tmp_path).rows] == ["ner-naive", "bc"]


def test_rich_segment_features_are_finite_and_appended() -> None:
    c = load_corpus()
    ids = sorted(c.essays)[:5]
    probs = simulate_word_probs(c, 0.5, 0, ids)
    words = {i: c.essays[i].words for i in ids}
    plain = make_segments(probs, SegmentConfig(), ids, words)
    cfg = SegmentConfig(rich_features=True)
    with pytest.raises(DiscourseRLError, match="rich_features needs"):
        make_segments(probs, cfg, ids, words)
    rich = make_segments(probs, cfg, ids, words, paragraph_starts(c.essays, ids))
    for p, r in zip(plain, rich, strict=True):
        n_plain = N_BASE_FEATURES  # the punctuation flags included
        assert r.features.shape == (p.n_segments, n_plain + N_RICH_FEATURES)
        assert np.array_equal(r.features[:, :n_plain], p.features)
        assert np.isfinite(r.features).all()
        lo, hi = r.features[:, n_plain : n_plain + 8], r.features[:, n_plain + 8 : n_plain + 16]
        assert (lo <= hi).all() and (lo >= 0).all() and (hi <= 1 + 1e-6).all()
        assert (
            r.features[0, n_plain + 16 + len(CLASSES) + 3] == 1.0
        )  # the first segment opens a paragraph


def test_deployed_ner_tuned_is_the_training_essays_fit(tmp_path: Path) -> None:
    lay = RunLayout(tmp_path)
    lay.decode.write_text("{}", encoding="utf-8")
    assert lay.tuned == lay.decode  # an NER-only run: the one fit there is
    lay.gbdt_dir.mkdir()
    lay.gbdt_tuned.write_text("{}", encoding="utf-8")
    assert lay.tuned == lay.gbdt_tuned
