from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from discourse_rl.cli import main
from discourse_rl.data import load_corpus


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
        "import sys, discourse_rl.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'transformers', 'pandas') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout
