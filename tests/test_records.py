"""Typed run records: JSON round trips, readers of what other stages write, format checks."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASSES
from discourse_rl.core.layout import FORMAT_VERSION, RunLayout
from discourse_rl.core.records import (
    AgentResults,
    HeldOutEssays,
    HeldOutScore,
    NerMetrics,
    SeedRecord,
    StageRecord,
    StageScores,
    Stat,
    TradeoffRow,
    TrainedPolicy,
    read_stages,
    write_stages,
)
from discourse_rl.run.runformat import RunFormat, check_format


def _score(macro: float) -> HeldOutScore:
    per = {c: macro + k / 100 for k, c in enumerate(CLASSES)}
    per["Rebuttal"] = math.nan  # a class without true spans on these essays
    return HeldOutScore(macro, per, macro + 0.05, macro - 0.1)


def results() -> AgentResults:
    n_train, n_test = 240, 60
    ner = StageScores.combine("ner-naive", [_score(0.18)], (), n_train, n_test)
    bc = StageScores.combine("bc", [_score(0.16), _score(0.2)], (0, 1), n_train, n_test)
    return AgentResults(
        n_train,
        n_test,
        HeldOutEssays(0, 3, "ner", 0, 300),
        (ner, bc),
        (SeedRecord(0, 1.5, 20.25, 4096, 60.1, 9.5), SeedRecord(1, 1.25, 19.0, 4096, 61.0)),
        (TradeoffRow("clause", 0.3, 41.5, 3.25, 0.97),),
        41.5,
        0.75,
    )


def test_agent_results_round_trip_through_json(tmp_path: Path) -> None:
    r = results()
    path = tmp_path / "results.json"
    r.write(path)
    text = path.read_text()

    def no_constant(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    json.loads(text, parse_constant=no_constant)  # NaN is written as null, not NaN
    back = AgentResults.read(path)
    assert back.to_json() == r.to_json()
    assert back.seeds == r.seeds and back.tradeoff == r.tradeoff and back.heldout == r.heldout
    bc = back.stage("bc")
    assert bc is not None and bc.seeds == (0, 1) and bc.macro_f1.values == (0.16, 0.2)
    assert bc.macro_f1.mean == pytest.approx(0.18) and bc.macro_f1.sd == pytest.approx(0.0283, 1e-2)
    assert math.isnan(bc.per_class["Rebuttal"].mean)
    ner = back.stage("ner-naive")
    assert ner is not None and ner.macro_f1.sd is None and ner.seeds == ()
    assert back.stage("ppo") is None
    assert json.loads(text)["stages"]["bc"]["n_heldout"] == 60


def test_stat_matches_numpy() -> None:
    s = Stat.of([0.5, 0.25, 0.125])
    assert s.mean == pytest.approx(0.2916666) and s.sd == pytest.approx(0.1909407, 1e-5)
    assert Stat.from_json(s.to_json()) == s
    assert Stat.of([0.5]).sd is None


def test_old_results_file_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "agent" / "results.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"summary": {"rl": {}}, "runs": []}))
    with pytest.raises(DiscourseRLError, match=r"older discourse-rl \(format 1"):
        AgentResults.read(path)
    path.write_text(json.dumps({"stages": {}}))
    with pytest.raises(DiscourseRLError, match="unreadable agent results"):
        AgentResults.read(path)


def test_ner_metrics_reader(tmp_path: Path) -> None:
    """The schema the NER stage writes (decode.report_to_json plus seconds and essays)."""
    per = {c: {"f1": 0.5, "tp": 1, "fp": 1, "fn": 1} for c in CLASSES}
    per["Rebuttal"]["f1"] = None
    score = {"macro_f1": 0.5, "per_class": per}
    path = tmp_path / "metrics.json"
    path.write_text(
        json.dumps(
            {
                "naive": score,
                "public_thresholds": score,
                "tuned": score,
                "tuned_cross_fitted": {**score, "macro_f1": 0.25},
                "thresholds": {},
                "seconds": 43.5,
                "essays": 300,
            }
        )
    )
    m = NerMetrics.read(path)
    assert m.naive.macro_f1 == 0.5 and m.tuned_cross_fitted is not None
    assert m.tuned_cross_fitted.macro_f1 == 0.25 and math.isnan(m.naive.per_class["Rebuttal"])
    assert (m.essays, m.seconds) == (300, 43.5)
    path.write_text(json.dumps({"tuned": score}))
    with pytest.raises(DiscourseRLError, match="unreadable NER metrics"):
        NerMetrics.read(path)


def test_trained_policy_from_summary(tmp_path: Path) -> None:
    summary = {"seconds": 3.5, "env_steps": 100, "history": [{"step": 0, "val_macro_f1": 0.1}]}
    (tmp_path / "history.json").write_text(json.dumps(summary))
    t = TrainedPolicy.read("ppo", tmp_path / "policy.pt", tmp_path / "history.json")
    assert t.trainer == "ppo" and t.path == tmp_path / "policy.pt" and t.seconds == 3.5
    assert t.stats == {"env_steps": 100} and t.history == ({"step": 0, "val_macro_f1": 0.1},)


def test_stage_records_round_trip(tmp_path: Path) -> None:
    stages = {"ner": StageRecord("abc", 1.5, "/data", "/c.toml", 300), "agent": StageRecord("d", 2)}
    write_stages(tmp_path / "stages.json", stages)
    assert read_stages(tmp_path / "stages.json") == stages
    assert read_stages(tmp_path / "missing.json") == {}


def test_format_checks(tmp_path: Path) -> None:
    lay = RunLayout(tmp_path / "run")
    assert check_format(lay.root) is None  # nothing there yet: a fresh --out
    lay.root.mkdir()
    assert check_format(lay.root) is None
    lay.ner.mkdir()  # an empty ner/ is no trained run yet
    assert check_format(lay.root) is None
    lay.legacy_ppo.mkdir(parents=True)  # format 1's PPO folder, agent/rl
    with pytest.raises(DiscourseRLError, match=r"older discourse-rl \(format 1.*re-run"):
        check_format(lay.root)
    lay.legacy_ppo.rmdir()
    lay.stages.write_text("{}")  # a run without format.json: format 1
    with pytest.raises(DiscourseRLError, match=r"older discourse-rl \(format 1.*re-run"):
        check_format(lay.root)
    RunFormat.current().write(lay.format)
    fmt = check_format(lay.root)
    assert fmt is not None and fmt.format == FORMAT_VERSION and fmt.torch
    lay.format.write_text(json.dumps({"format": FORMAT_VERSION + 1}))
    with pytest.raises(DiscourseRLError, match="newer discourse-rl"):
        check_format(lay.root)
