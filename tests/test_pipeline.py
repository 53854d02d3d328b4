"""The main job end to end on a few essays with tiny models: every artefact, resume, predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from discourse_rl.cli import main
from discourse_rl.data import load_corpus, sample_dir
from discourse_rl.pipeline import load_run_config
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


def _config(path: Path, backbone: Path, bc_epochs: int = 2) -> Path:
    path.write_text(
        f"""seed = 0
agent_seeds = [0]

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
max_segments = 64
d_model = 16
n_heads = 2
n_layers = 1
dim_feedforward = 16
bc_epochs = {bc_epochs}
ppo_timesteps = 128
value_warmup_steps = 64
n_envs = 2
n_steps = 32
batch_size = 32
n_epochs = 1
eval_every = 1
progress_bar = false

[episode]
samples = 4
batch_essays = 8
passes = 2.0
eval_every = 1
progress_bar = false
""",
        encoding="utf-8",
    )
    return path


def test_run_writes_every_artefact_resumes_and_predicts(
    tmp_path: Path, tiny_backbone: Path, few_essays: Path
) -> None:
    run = tmp_path / "run"
    config = _config(tmp_path / "tiny.toml", tiny_backbone)
    assert main(["run", "--data", str(few_essays), "--out", str(run), "--config", str(config)]) == 0

    for artefact in (
        "config.toml",
        "stages.json",
        "results.md",
        "f1_per_class.png",
        "segmentation_tradeoff.png",
        "ner/oof.npz",
        "ner/folds.json",
        "ner/metrics.json",
        "decode.json",
        "segments.npz",
        "agent/bc/policy.pt",
        "agent/rl/policy.pt",
        "agent/episode/policy.pt",
        "agent/results.json",
    ):
        assert (run / artefact).is_file(), artefact
    results = (run / "results.md").read_text()
    for row in (
        "| NER naive |",
        "| NER tuned |",
        "| BC |",
        "| RL (PPO) |",
        "| RL (episode",
        "0.42",
    ):
        assert row in results
    assert "seed = 0" in (run / "config.toml").read_text()

    # Unchanged config: everything is reused. A changed agent config re-runs the agent only.
    stamp = (run / "ner" / "oof.npz").stat().st_mtime_ns
    assert main(["run", "--data", str(few_essays), "--out", str(run), "--config", str(config)]) == 0
    state = json.loads((run / "stages.json").read_text())
    _config(config, tiny_backbone, bc_epochs=1)
    assert main(["run", "--data", str(few_essays), "--out", str(run), "--config", str(config)]) == 0
    assert (run / "ner" / "oof.npz").stat().st_mtime_ns == stamp
    assert json.loads((run / "stages.json").read_text())["agent"]["key"] != state["agent"]["key"]

    out = tmp_path / "submission.csv"
    for stage in ("ner-naive", "ner-tuned", "bc", "rl", "episode"):
        args = ["predict", "--model", str(run), "--essays", str(few_essays / "test")]
        assert main([*args, "--out", str(out), "--stage", stage]) == 0
        sub = pd.read_csv(out)
        assert list(sub.columns) == ["id", "class", "predictionstring"]
        assert set(sub["id"]) <= {p.stem for p in (few_essays / "test").glob("*.txt")}
    one = next((few_essays / "test").glob("*.txt"))
    assert main(["predict", "--model", str(run), "--essays", str(one), "--out", str(out)]) == 0
    assert set(pd.read_csv(out)["id"]) <= {one.stem}


def test_shipped_configs_load() -> None:
    """Every config in configs/ names only known fields (a typo would stop a long run late)."""
    folder = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.name for p in folder.glob("*.toml"))
    assert "reference.toml" in names and "demo.toml" in names
    for name in names:
        load_run_config(folder / name)
