"""The gbdt step was called `spans` (RUN/spans/, manifests/spans.json, its record under "spans"
in RUN/stages.json, the switch `spans_stage`). A run folder written then still loads (`info`,
`predict`, `label`, `export`) and `run` reuses it without retraining; the step writes under its
new name when it next runs. The old name lives in one place, `layout.RENAMED_STEPS`."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from discourse_rl.app.cli import main
from discourse_rl.app.labeller import Labeller, offered_stages
from discourse_rl.core import artefacts
from discourse_rl.core.layout import RENAMED_STEPS, RunLayout, step_name
from discourse_rl.core.records import StageRecord, read_stages, write_stages
from discourse_rl.run import lock
from discourse_rl.run.config import RunConfig, load_run_config
from discourse_rl.run.pipeline import run_pipeline
from tests.test_pipeline import (  # noqa: F401  (fixtures)
    QuickRun,
    few_essays,
    quick_run,
    tiny_backbone,
)
from tests.tiny import assert_refused

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

SPANS_KEYS_BEFORE = {
    # name: the "spans" step's key and legacy key at commit 097cf29 (data key "0123456789abcdef").
    "demo": ("b4513b475ae48870", "81dd3170471818b6"),
    "reference": ("ac40e284d43f3117", "6c13c29cb4601028"),
    "defaults": ("7592d324f575db50", "87b06a8142d470be"),
}


def to_old_layout(run: Path) -> None:
    """Rewrite a run folder as the code before the rename wrote it: RUN/spans/, the manifest
    manifests/spans.json listing spans/... paths, the record under "spans", `spans_stage`."""
    lay = RunLayout(run)
    (run / "gbdt").rename(run / "spans")
    blob = json.loads((lay.manifests / "gbdt.json").read_text())
    blob["stage"] = "spans"
    blob["files"] = {
        "spans/" + k.removeprefix("gbdt/") if k.startswith("gbdt/") else k: v
        for k, v in blob["files"].items()
    }
    (lay.manifests / "spans.json").write_text(json.dumps(blob, indent=2) + "\n")
    (lay.manifests / "gbdt.json").unlink()
    stages = json.loads(lay.stages.read_text())
    lay.stages.write_text(
        json.dumps({"spans" if k == "gbdt" else k: v for k, v in stages.items()}, indent=2)
    )
    sizes = run / "sizes.json"
    if sizes.is_file():
        old = json.loads(sizes.read_text())
        sizes.write_text(json.dumps({"spans" if k == "gbdt" else k: v for k, v in old.items()}))
    lay.config.write_text(lay.config.read_text().replace("gbdt_stage = ", "spans_stage = "))


def test_the_old_name_lives_in_one_map() -> None:
    assert RENAMED_STEPS == {"spans": "gbdt"}
    assert step_name("spans") == "gbdt" and step_name("agent") == "agent"


def test_an_old_layout_is_found_under_the_new_name(tmp_path: Path) -> None:
    lay = RunLayout(tmp_path)
    assert lay.gbdt_dir == tmp_path / "gbdt"  # nothing there: the new name
    assert lay.manifest("gbdt") == tmp_path / "manifests" / "gbdt.json"
    (tmp_path / "spans" / "gbdt").mkdir(parents=True)
    (tmp_path / "spans" / "results.json").write_text("{}")
    lay.manifests.mkdir()
    (lay.manifests / "spans.json").write_text(
        json.dumps({"format": 1, "stage": "spans", "files": {}})
    )
    assert lay.gbdt_dir == tmp_path / "spans" and lay.gbdt == tmp_path / "spans" / "gbdt"
    assert lay.gbdt_results == tmp_path / "spans" / "results.json"
    assert lay.manifest("gbdt") == lay.manifests / "spans.json"
    artefacts.record(lay, "gbdt")
    assert artefacts.damaged(lay, "gbdt") == []
    assert "spans/results.json" in json.loads(lay.manifest("gbdt").read_text())["files"]
    lock.check_complete(tmp_path, ["gbdt"])
    rec = StageRecord("k", 1.0)
    write_stages(lay.stages, {"ner": rec, "spans": rec})
    assert list(read_stages(lay.stages)) == ["ner", "gbdt"]
    # Both names recorded (cannot happen, but): the new one wins.
    write_stages(lay.stages, {"spans": StageRecord("old", 1.0), "gbdt": rec})
    assert read_stages(lay.stages) == {"gbdt": rec}
    # The new folder, once there, is the step's.
    (tmp_path / "gbdt").mkdir()
    assert lay.gbdt_dir == tmp_path / "gbdt"


def test_spans_stage_still_loads(tmp_path: Path) -> None:
    old = tmp_path / "old.toml"
    old.write_text("spans_stage = false\n")
    assert load_run_config(old) == RunConfig(gbdt_stage=False)
    both, text = tmp_path / "both.toml", "spans_stage = false\ngbdt_stage = false\n"
    assert_refused(both, text, load_run_config, "spans_stage and gbdt_stage are the same setting")


@pytest.mark.parametrize("name", sorted(SPANS_KEYS_BEFORE))
def test_the_gbdt_steps_key_is_the_spans_steps(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from discourse_rl.run import pipeline

    monkeypatch.setattr(pipeline, "data_key", lambda corpus: "0123456789abcdef")
    cfg = RunConfig() if name == "defaults" else load_run_config(CONFIGS / f"{name}.toml")
    keys = pipeline.stage_keys(None, cfg)  # type: ignore[arg-type]
    legacy = pipeline.stage_keys(None, cfg, legacy=True)  # type: ignore[arg-type]
    assert "spans" not in keys
    assert (keys["gbdt"], legacy["gbdt"]) == SPANS_KEYS_BEFORE[name]


@pytest.mark.slow
def test_a_run_folder_of_the_old_layout_loads_and_is_reused(
    tmp_path: Path,
    quick_run: QuickRun,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, config, run = quick_run
    quiet = {"log": lambda _: None}
    assert run_pipeline(data, run, config, **quiet).ran == ("ner", "gbdt", "agent")
    essays = data / "test"
    out = tmp_path / "new.csv"
    for stage in ("gbdt", "ner-constrained", "ner-tuned"):
        args = ["predict", "--model", str(run), "--essays", str(essays), "--stage", stage]
        assert main([*args, "--out", str(tmp_path / f"{stage}.csv")]) == 0
    capsys.readouterr()
    assert main(["info", "--model", str(run), "--json"]) == 0
    info_before = json.loads(capsys.readouterr().out)

    to_old_layout(run)
    lay = RunLayout(run)
    assert not (run / "gbdt").exists() and (run / "spans" / "gbdt" / "params.json").is_file()

    # info: the same rows, gbdt's model where the old layout has it.
    assert main(["info", "--model", str(run), "--json"]) == 0
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["gbdt"]["model"] == "spans/gbdt"
    for before in info_before:
        now = rows[before["stage"]]
        assert {k: v for k, v in now.items() if k != "model"} == {
            k: v for k, v in before.items() if k != "model"
        }
    assert {"gbdt", "ner-constrained", "ner-tuned"} <= set(offered_stages(run))
    # predict and label: the same labels as before the rewrite.
    for stage in ("gbdt", "ner-constrained", "ner-tuned"):
        args = ["predict", "--model", str(run), "--essays", str(essays), "--stage", stage]
        assert main([*args, "--out", str(out)]) == 0
        assert pd.read_csv(out).equals(pd.read_csv(tmp_path / f"{stage}.csv")), stage
    essay = next(essays.glob("*.txt"))
    assert main(["label", str(essay), "--model", str(run), "--stage", "gbdt", "--json"]) == 0
    # export: the .zip carries the old paths and labels as the folder does.
    model = tmp_path / "model.zip"
    assert main(["export", "--model", str(run), "--out", str(model), "--stage", "gbdt"]) == 0
    assert "spans/gbdt/params.json" in zipfile.ZipFile(model).namelist()
    text = essay.read_text()
    assert Labeller.load(model, "gbdt").label(text) == Labeller.load(run, "gbdt").label(text)

    # run: every step reused, nothing retrained, the old folder kept as it is.
    summary = run_pipeline(data, run, config, **quiet)
    assert summary.ran == () and summary.reused == ("ner", "gbdt", "agent")
    assert not (run / "gbdt").exists() and (lay.manifests / "spans.json").is_file()
    assert artefacts.damaged(lay, "gbdt") == []

    # A changed [gbdt] re-runs the step, which now writes under its new name.
    config.write_text(config.read_text().replace("n_estimators = 10", "n_estimators = 11"))
    summary = run_pipeline(data, run, config, **quiet)
    assert summary.ran == ("gbdt",)
    assert not (run / "spans").exists() and (run / "gbdt" / "gbdt" / "params.json").is_file()
    assert not (lay.manifests / "spans.json").exists()
    listed = json.loads((lay.manifests / "gbdt.json").read_text())["files"]
    assert listed and all(k.startswith("gbdt/") for k in listed)
    assert set(json.loads(lay.stages.read_text())) == {"ner", "gbdt", "agent"}
