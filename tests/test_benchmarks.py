"""Benchmarks and studies stay runnable: they import (a renamed API breaks here, not months later
in someone's measurement), and a benchmark's `--json` is one line of results."""

from __future__ import annotations

import importlib
import json
import pkgutil
from pathlib import Path

import pytest

import benchmarks
import experiments
from benchmarks import metric as metric_benchmark
from discourse_rl.core.data import sample_dir

MODULES = [
    f"{package.__name__}.{info.name}"
    for package in (benchmarks, experiments)
    for info in pkgutil.iter_modules(package.__path__)
]


@pytest.mark.parametrize("name", MODULES)
def test_every_benchmark_and_study_imports_and_has_a_command(name: str) -> None:
    module = importlib.import_module(name)
    assert module.__doc__, name
    if hasattr(module, "main"):  # a runnable one says how to run it
        assert f"python -m {name}" in module.__doc__, name


def test_metric_benchmark_prints_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    metric_benchmark.main(["--data", str(sample_dir()), "--json"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    result = json.loads(out)
    assert result["essays"] == 300 and result["true_spans"] > 0
    assert result["identical_without_them"] is True
    assert 0 < result["macro_f1"] < 1


def test_missing_data_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        metric_benchmark.main(["--data", str(tmp_path), "--json"])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        captured.err
        == f"error: {tmp_path / 'train.csv'}: not found (pass --data, a Kaggle-layout folder)\n"
    )


def test_ner_speed_background_measures_side_by_side_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The rows under load must be measured as the stage uses the cores: two single-thread
    # processes at once, their rates summed; a broken child must fail the benchmark.
    from benchmarks import ner_speed
    from tests.tiny import save_tiny_bert

    backbone = save_tiny_bert(tmp_path / "bert", hidden=32, layers=2, max_positions=64)
    args = ["--backbone", str(backbone), "--batch", "2", "--seq", "32", "--steps", "1"]
    args += ["--processes", "2"]
    ner_speed.main([*args, "--freeze-layers", "1", "--background", "nice19", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["processes"] == 2 and result["background_kind"] == "nice19"
    for row in ("idle", "background"):
        assert result[row]["train_tokens_per_s"] > 0 and result[row]["infer_tokens_per_s"] > 0
    with pytest.raises(SystemExit):
        ner_speed.main([*args, "--background", "nice19", "--backbone", str(tmp_path / "none")])
