"""The main job end to end on a few essays with tiny models: every artefact, resume, predict."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import pytest

from discourse_rl.app.cli import main
from discourse_rl.app.labeller import offered_stages
from discourse_rl.core import artefacts
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASSES, load_corpus, load_word_probs, sample_dir
from discourse_rl.core.layout import FORMAT_VERSION, RunLayout
from discourse_rl.core.protocol import read_split
from discourse_rl.core.records import AgentResults, SpansResults
from discourse_rl.decoders import registry
from discourse_rl.decoders.decode import fit_tuned, load_thresholds
from discourse_rl.run.config import load_run_config, write_run_config
from discourse_rl.run.heldout import heldout_table
from discourse_rl.run.one_step import train_ner
from discourse_rl.run.pipeline import run_pipeline
from tests.tiny import save_tiny_bert

N_ESSAYS = 30


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), 16, 1, 512)


@pytest.fixture(scope="module")
def few_essays(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kaggle-layout folder with the first essays of the sample (and its test essays)."""
    src = sample_dir()
    dst = tmp_path_factory.mktemp("data")
    ids = sorted(load_corpus().essays)[:N_ESSAYS]
    (dst / "train").mkdir()
    for i in ids:
        shutil.copy(src / "train" / f"{i}.txt", dst / "train" / f"{i}.txt")
    train = pd.read_csv(src / "train.csv", dtype=str, keep_default_na=False)
    train[train["id"].isin(ids)].to_csv(dst / "train.csv", index=False)
    shutil.copytree(src / "test", dst / "test")
    return dst


class QuickRun(NamedTuple):
    """A tiny run to make: the data folder, its settings and the run folder (not made yet)."""

    data: Path
    config: Path
    run: Path


@pytest.fixture
def quick_run(tmp_path: Path, tiny_backbone: Path, few_essays: Path) -> QuickRun:
    """`few_essays`, tmp/tiny.toml (one cloning epoch, no episode trainer) and tmp/run."""
    config = _config(tmp_path / "tiny.toml", tiny_backbone, bc_epochs=1, episode_trainer=False)
    return QuickRun(few_essays, config, tmp_path / "run")


def _config(path: Path, backbone: Path, bc_epochs: int = 2, episode_trainer: bool = True) -> Path:
    path.write_text(
        f"""seed = 0
agent_seeds = [0]
episode_trainer = {str(episode_trainer).lower()}

[ner]
backbone = "{backbone}"
folds = 2
epochs = 1.0
head_hidden = 8
batch_size = 8
bf16 = false

[segments]
max_segments = 64

[agent]
progress_bar = false

[agent.network]
max_segments = 64
d_model = 16
n_heads = 2
n_layers = 1
dim_feedforward = 16

[agent.bc]
epochs = {bc_epochs}

[agent.ppo]
timesteps = 128
value_warmup_steps = 64
n_envs = 2
n_steps = 32
batch_size = 32
n_epochs = 1
eval_every = 1

[episode]
samples = 4
batch_essays = 8
passes = 2.0
eval_every = 1
progress_bar = false

[gbdt]
n_estimators = 10
min_child_samples = 5
num_threads = 1
threshold_folds = 2
""",
        encoding="utf-8",
    )
    return path


def _trained_by_default() -> tuple[str, ...]:
    """The stages a config without `[decoders.*]` tables trains (agent-gbdt and combine are off
    by default: tests/test_agent_gbdt_and_combine_run.py)."""
    return tuple(n for n in registry.names() if n not in ("agent-gbdt", "combine"))


@pytest.mark.slow
def test_run_writes_every_artefact_resumes_and_predicts(
    tmp_path: Path, tiny_backbone: Path, few_essays: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    lay = RunLayout(run)
    config = _config(tmp_path / "tiny.toml", tiny_backbone)
    data_args = ["--data", str(few_essays), "--out", str(run)]
    assert main(["run", "--data", str(few_essays), "--out", str(run), "--config", str(config)]) == 0

    for artefact in (
        lay.config,
        lay.format,
        lay.stages,
        lay.report,
        lay.plot("f1_per_class"),
        lay.plot("segmentation_tradeoff"),
        lay.oof,
        lay.ner_folds,
        lay.ner_metrics,
        lay.decode,
        lay.segments,
        lay.policy("bc"),
        lay.policy("ppo"),
        lay.policy("episode"),
        lay.agent_results,
        lay.split,
        lay.gbdt_results,
        lay.gbdt_tuned,
        lay.constrained,
        lay.gbdt / "params.json",
    ):
        assert artefact.is_file(), artefact
    assert not (lay.agent / "rl").exists()
    table = heldout_table(run)
    assert [s.stage for s in table.rows] == [
        "ner-naive",
        "ner-tuned",
        "ner-constrained",
        "gbdt",
        "oracle",
        "bc",
        "ppo",
        "episode",
    ]
    # One held-out set for every row, NER rows included: the split's, disjoint from training.
    split = read_split(lay.split)
    assert len(split.heldout) == 6 and len(split.train) == N_ESSAYS - 6
    assert not set(split.heldout) & set(split.train)
    # Deployed ner-tuned is the training essays' fit, not the NER stage's fit on every essay.
    probs = load_word_probs(lay.oof)
    train_fit = fit_tuned(
        {i: probs[i] for i in split.train}, load_corpus(few_essays).subset(split.train)
    )
    assert lay.tuned == lay.gbdt_tuned and load_thresholds(lay.tuned) == train_fit
    spans, results = SpansResults.read(lay.gbdt_results), AgentResults.read(lay.agent_results)
    assert spans.heldout == results.heldout and spans.n_train == results.n_train == 24
    assert all(s.n_heldout == 6 for s in table.rows)
    assert spans.stage("gbdt").seeds == (0,)  # type: ignore[union-attr]
    assert set(spans.recall_heldout) == set(CLASSES)
    # The report shows each row's held-out macro F1 as the results files hold it.
    report = lay.report.read_text()
    for s in table.rows:
        assert f"| {s.stage} | {s.macro_f1.mean:.3f} |" in report
    assert "(6: a seeded 20% (seed 0) of the 30 essays" in report
    assert "Candidate recall" in report
    # RUN/config.toml is the resolved config and loads back as the same config.
    assert "seed = 0" in lay.config.read_text()
    assert load_run_config(lay.config) == load_run_config(config)
    fmt = json.loads(lay.format.read_text())
    assert fmt["format"] == FORMAT_VERSION and fmt["torch"] and fmt["transformers"]

    # info: every stage with its held-out score, as a stable JSON list.
    capsys.readouterr()
    assert main(["info", "--model", str(run), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in rows] == list(_trained_by_default())
    for r in rows:
        scores = table.stage(r["stage"])
        assert scores is not None
        assert r["macro_f1"] == scores.macro_f1.mean and r["n_heldout"] == 6
        assert r["n_train"] == scores.n_train and r["data"] == str(few_essays.resolve())
        assert r["config"] == str(config.resolve()) and r["seconds"] > 0
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["ner-naive"]["n_train"] == 0 and by_stage["gbdt"]["n_train"] == 24
    assert by_stage["bc"]["seeds"] == [0] and by_stage["gbdt"]["seeds"] == [0]
    assert by_stage["ner-naive"]["seeds"] == []
    assert by_stage["gbdt"]["model"] == "gbdt/gbdt"
    assert main(["info", "--model", str(run)]) == 0
    text = capsys.readouterr().out
    assert "a seeded 20%" in text and "predict's default stage:" in text

    # Unchanged config: everything is reused. A changed agent config re-runs the agent only.
    stamps = [p.stat().st_mtime_ns for p in (lay.oof, lay.gbdt_results)]
    summary = run_pipeline(few_essays, run, config, log=lambda _: None)
    assert summary.ran == () and summary.reused == ("ner", "gbdt", "agent")
    # Other runtime settings (threads, worker processes, progress bars, checkpoint cadence,
    # batch sizes of inference) change how steps run, not what they compute: all reused.
    runtime = tmp_path / "runtime.toml"
    runtime.write_text(
        config.read_text()
        .replace("[ner]\n", "[ner]\nthreads = 2\nfold_workers = 1\nencode_tokens = 4096\n")
        .replace("[agent]\n", "[agent]\ntorch_threads = 2\n")
        .replace("progress_bar = false", "progress_bar = true")
    )
    assert load_run_config(runtime) != load_run_config(config)
    summary = run_pipeline(few_essays, run, runtime, log=lambda _: None)
    assert summary.ran == () and summary.reused == ("ner", "gbdt", "agent")
    state = json.loads(lay.stages.read_text())
    _config(config, tiny_backbone, bc_epochs=1)
    summary = run_pipeline(few_essays, run, config, log=lambda _: None)
    assert summary.ran == ("agent",)
    assert [p.stat().st_mtime_ns for p in (lay.oof, lay.gbdt_results)] == stamps
    assert json.loads(lay.stages.read_text())["agent"]["key"] != state["agent"]["key"]

    _damage_is_one_line_and_rebuilt(run, [*data_args, "--config", str(config)], capsys)

    out = tmp_path / "submission.csv"
    test_ids = {p.stem for p in (few_essays / "test").glob("*.txt")}
    for stage in _trained_by_default():
        args = ["predict", "--model", str(run), "--essays", str(few_essays / "test")]
        assert main([*args, "--out", str(out), "--stage", stage]) == 0
        sub = pd.read_csv(out)
        assert list(sub.columns) == ["id", "class", "predictionstring"]
        assert set(sub["id"]) <= test_ids
        jsonl = tmp_path / "labels.jsonl"
        assert main([*args, "--out", str(jsonl), "--stage", stage, "--format", "jsonl"]) == 0
        lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
        assert sorted(r["id"] for r in lines) == sorted(test_ids)
        assert {r["stage"] for r in lines} == {stage}
        spans = {(r["id"], e["type"], e["word_start"]) for r in lines for e in r["elements"]}
        assert spans == {
            (i, c, int(p.split()[0])) for i, c, p in sub.itertuples(index=False, name=None)
        }
    # The naive decoding labels every word, so its csv cannot be empty.
    args = ["predict", "--model", str(run), "--essays", str(few_essays / "test")]
    assert main([*args, "--out", str(out), "--stage", "ner-naive"]) == 0
    assert set(pd.read_csv(out)["id"]) == test_ids
    one = next((few_essays / "test").glob("*.txt"))
    assert main(["predict", "--model", str(run), "--essays", str(one), "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["id"]) <= {one.stem}
    one_args = ["predict", "--model", str(run), "--essays", str(one), "--format", "jsonl"]
    assert main([*one_args, "--out", str(jsonl)]) == 0
    assert [json.loads(x)["id"] for x in jsonl.read_text().splitlines()] == [one.stem]

    # train-agent follows the config (no episode trainer here): no stale episode policy is left
    # to predict with, and `run` with that config finds the run up to date.
    off = _config(tmp_path / "off.toml", tiny_backbone, bc_epochs=1, episode_trainer=False)
    args = ["train-agent", "--run", str(run), "--data", str(few_essays), "--config", str(off)]
    assert main(args) == 0
    assert not lay.trainer_dir("episode").exists()
    assert AgentResults.read(lay.agent_results).stage("episode") is None
    # Its manifest describes the files it left, and nothing else.
    listed = json.loads(lay.manifest("agent").read_text())["files"]
    assert "agent/bc/policy.pt" in listed and not any("episode" in k for k in listed)
    assert artefacts.damaged(lay, "agent") == []
    capsys.readouterr()
    args = ["predict", "--model", str(run), "--essays", str(one), "--out", str(out)]
    assert main([*args, "--stage", "episode"]) == 2
    assert "stage 'episode' not trained in this run" in capsys.readouterr().err
    assert load_run_config(lay.config) == load_run_config(off)
    summary = run_pipeline(few_essays, run, off, log=lambda _: None)
    assert summary.ran == ()

    # train-ner: the later stages' results were made from other word probabilities, so they are
    # no longer offered; `run` then rebuilds those stages only.
    train_ner(run, few_essays, off, log=lambda _: None)
    assert not lay.agent_results.exists() and not lay.gbdt_results.exists()
    assert offered_stages(run) == ("ner-naive", "ner-tuned")
    assert {"gbdt", "agent"}.isdisjoint(json.loads(lay.stages.read_text()))
    assert run_pipeline(few_essays, run, off, log=lambda _: None).ran == ("gbdt", "agent")
    assert {"bc", "gbdt"} <= set(offered_stages(run)) and lay.agent_results.is_file()


def _error_lines(err: str) -> int:
    """Lines on stderr, each one of the command's (no library's progress bar in between)."""
    lines = err.splitlines()
    assert all(line.startswith("discourse-rl:") for line in lines), err
    return len(lines)


def _damage_is_one_line_and_rebuilt(
    run: Path, run_args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated policy or fold model: `predict` says which file and how to rebuild it in one
    line; `run` re-runs the stage that wrote it (and only that one); reused stages computed by
    other library versions get a warning."""
    lay = RunLayout(run)
    assert lay.manifest("ner").is_file() and lay.manifest("agent").is_file()
    essay = str(sample_dir() / "test")
    predict = ["predict", "--model", str(run), "--essays", essay, "--out", str(run / "x.csv")]
    policy = lay.policy("bc")
    policy.write_bytes(policy.read_bytes()[:100])
    capsys.readouterr()
    assert main([*predict, "--stage", "bc"]) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == 1 and "Traceback" not in err, err
    assert f"{policy}: damaged: 100 bytes, " in err
    assert f"rebuild it with `discourse-rl run --out {run} --data " in err

    # Stages computed with other versions: a warning, and nothing recomputed for it.
    stages = json.loads(lay.stages.read_text())
    stages["ner"]["versions"]["torch"] = "0.0.1"
    lay.stages.write_text(json.dumps(stages))
    summary = run_pipeline(run_args[1], run, run_args[-1], log=lambda _: None)
    assert summary.ran == ("agent",)
    assert "[ner] reused outputs were computed with torch 0.0.1 -> " in capsys.readouterr().err
    assert main([*predict, "--stage", "bc"]) == 0

    head = lay.fold(1).head
    head.write_bytes(b"")
    capsys.readouterr()
    assert main([*predict, "--stage", "ner-naive"]) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == 1 and f"{head}: damaged: 0 bytes" in err, err
    # With no manifests (a run from before them), the loader's own check still gives one line.
    lay.manifests.rename(run / "old-manifests")
    assert main([*predict, "--stage", "ner-naive"]) == 2
    err = capsys.readouterr().err
    assert _error_lines(err) == 1 and "Traceback" not in err, err
    assert f"{head}: damaged or not a safetensors file" in err
    (run / "old-manifests").rename(lay.manifests)
    summary = run_pipeline(run_args[1], run, run_args[-1], log=lambda _: None)
    assert summary.ran == ("ner", "gbdt", "agent") and head.stat().st_size > 0
    assert main([*predict, "--stage", "ner-naive"]) == 0


def test_older_run_folder_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old"
    (old / "agent" / "rl").mkdir(parents=True)
    (old / "stages.json").write_text("{}")
    capsys.readouterr()
    for argv in (
        ["info", "--model", str(old)],
        ["predict", "--model", str(old), "--essays", str(sample_dir() / "test"), "--out", "x.csv"],
        ["run", "--out", str(old)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "older discourse-rl (format 1" in err, argv
        assert "re-run `discourse-rl run" in err


def test_run_config_checks_stop_before_any_work(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[segments]\nmax_segments = 120\n\n[agent.network]\nmax_segments = 96\n")
    with pytest.raises(
        DiscourseRLError,
        match=r"bad.toml: \[segments\] max_segments = 120: "
        r"exceeds \[agent.network\] max_segments \(96\)",
    ):
        run_pipeline(None, tmp_path / "run", bad)
    assert not (tmp_path / "run").exists()
    for table in ("agent", "episode"):
        bad.write_text(f"agent_seeds = [1, 2]\n\n[{table}]\nseed = 3\n")
        with pytest.raises(
            DiscourseRLError, match=rf"bad.toml: {table}.seed is set by the run from agent_seeds"
        ):
            load_run_config(bad)


def test_run_config_file_round_trips(tmp_path: Path) -> None:
    cfg = load_run_config(None)
    cfg = dataclasses.replace(cfg, agent_seeds=(3, 4))
    write_run_config(tmp_path, cfg)
    assert load_run_config(RunLayout(tmp_path).config) == cfg


def test_shipped_configs_load() -> None:
    """Every config in configs/ names only known fields (a typo would stop a long run late)."""
    folder = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.name for p in folder.glob("*.toml"))
    assert "reference.toml" in names and "demo.toml" in names
    for name in names:
        load_run_config(folder / name)
