from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from discourse_rl.app.cli import main
from discourse_rl.core.data import CLASSES, load_corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.records import StageRecord, write_stages
from discourse_rl.run.runformat import RunFormat


def test_score_prints_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gt = load_corpus().elements
    gt_path, pred_path = tmp_path / "gt.csv", tmp_path / "pred.csv"
    gt[["id", "discourse_type", "predictionstring"]].to_csv(gt_path, index=False)
    pred = gt.rename(columns={"discourse_type": "class"})
    pred = pred[pred["class"] != "Lead"][["id", "class", "predictionstring"]]
    pred.to_csv(pred_path, index=False)

    assert main(["score", "--pred", str(pred_path), "--gt", str(gt_path)]) == 0
    table = capsys.readouterr().out
    assert "Lead" in table and "macro F1" in table and f"{6 / 7:.4f}" in table

    assert main(["score", "--pred", str(pred_path), "--gt", str(gt_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["macro_f1"] == pytest.approx(6 / 7)
    assert result["per_class"]["Lead"] == {"f1": 0.0, "tp": 0, "fp": 0, "fn": 176}


def test_score_bad_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "pred.csv"
    pd.DataFrame({"id": ["a"], "predictionstring": ["1"]}).to_csv(bad, index=False)
    assert main(["score", "--pred", str(bad), "--gt", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: missing column(s) class" in err


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys, discourse_rl.app.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "try:\n    c.main(['info', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'pandas', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_predict_stage_rl_points_to_ppo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["predict", "--model", str(tmp_path), "--essays", str(tmp_path), "--out", "x.csv"]
    assert main([*args, "--stage", "rl"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "now called 'ppo'" in err and "--stage ppo" in err
    assert main(["label", str(tmp_path / "essay.txt"), "--stage", "rl"]) == 2
    assert "now called 'ppo'" in capsys.readouterr().err


def _ner_only_run(run: Path) -> None:
    """What the NER stage leaves: its config, metrics, thresholds and records (no models)."""
    lay = RunLayout(run)
    lay.ner.mkdir(parents=True)
    RunFormat.current().write(lay.format)
    lay.ner_config.write_text("seed = 0\n")
    lay.decode.write_text("{}")
    per = {c: {"f1": 0.25, "tp": 1, "fp": 1, "fn": 1} for c in CLASSES}
    score = {"macro_f1": 0.25, "per_class": per}
    metrics = {"naive": score, "tuned_cross_fitted": {**score, "macro_f1": 0.5}, "essays": 300}
    lay.ner_metrics.write_text(json.dumps(metrics))
    write_stages(lay.stages, {"ner": StageRecord("k", 43.0, "/data", "/demo.toml", 300)})


def test_info_on_a_run_with_only_the_ner_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ner_only_run(tmp_path / "run")
    assert main(["info", "--model", str(tmp_path / "run"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in rows] == ["ner-naive", "ner-tuned"]
    assert [r["macro_f1"] for r in rows] == [0.25, 0.5]
    keys = {"stage", "macro_f1", "sd", "seeds", "n_heldout", "n_train", "heldout", "seconds"}
    assert all(keys <= set(r) for r in rows)
    assert rows[0]["n_heldout"] == 300 and rows[0]["sd"] is None and rows[0]["seeds"] == []
    assert rows[0]["data"] == "/data" and rows[0]["config"] == "/demo.toml"
    assert rows[0]["seconds"] == 43.0 and "out of fold" in rows[0]["heldout"]
    assert main(["info", "--model", str(tmp_path / "run")]) == 0
    text = capsys.readouterr().out
    assert "ner-tuned" in text and "predict's default stage: ner-tuned" in text
    # An exported model names the stage it was exported for: that one, not the best, is the default.
    (tmp_path / "run" / "export.json").write_text(json.dumps({"stage": "ner-naive"}))
    assert main(["info", "--model", str(tmp_path / "run")]) == 0
    assert "predict's default stage: ner-naive" in capsys.readouterr().out


def test_info_on_a_folder_without_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--model", str(tmp_path / "nothing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["info", "--model", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_python_m_runs_the_command(tmp_path: Path) -> None:
    """`python -m discourse_rl` is the `discourse-rl` command: same help, same exit codes, same
    one-line errors."""
    run = [sys.executable, "-m", "discourse_rl"]
    version = subprocess.run([*run, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("discourse-rl ")
    helped = subprocess.run([*run, "train-ner", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--config" in helped.stdout
    missing = tmp_path / "nope.csv"
    bad = subprocess.run(
        [*run, "score", "--pred", str(missing), "--gt", str(missing)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("discourse-rl: error: ")
    assert bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


@pytest.mark.parametrize("command", ["run", "train-ner", "train-agent"])
def test_training_help_gives_measured_times(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Durations come from measurements (the demo run's steps, the reference's ner step), not
    from estimates beside each example; `info` shows a run's own recorded wall times."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Times measured on 2 CPU cores" in text
    assert "the demo run 7 min 21 s (ner 93 s, gbdt 25 s, agent 303 s)" in text
    assert "`discourse-rl info --model RUN` shows each step's recorded wall time" in text
    assert "a line every 30 s in a log file" in text
