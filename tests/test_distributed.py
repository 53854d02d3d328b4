"""Several processes: `torchrun --nproc_per_node 2 -m discourse_rl train-ner` on the CPU (gloo)
with a tiny fine-tuned BERT on a few essays, against one process; `predict --shard I/N`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from discourse_rl.core.common import WRITE_TRACE, DiscourseRLError
from discourse_rl.core.data import load_corpus, load_word_probs, sample_dir
from discourse_rl.core.layout import RunLayout
from discourse_rl.launch import distributed
from discourse_rl.launch.workers import child_env
from discourse_rl.ner import NerPredictor
from discourse_rl.run.one_step import train_ner

SKIP = ("checkpoints", "tensorboard", "tb")
"""Folders written by libraries (the Trainer's checkpoints, TensorBoard), not by the stage."""


def _data(root: Path, n_train: int = 8, n_test: int = 2) -> Path:
    """A Kaggle-layout folder with the sample's first essays."""
    sample = sample_dir()
    ids = sorted(p.stem for p in (sample / "train").glob("*.txt"))[:n_train]
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for i in ids:
        (root / "train" / f"{i}.txt").write_bytes((sample / "train" / f"{i}.txt").read_bytes())
    for p in sorted((sample / "test").glob("*.txt"))[:n_test]:
        (root / "test" / p.name).write_bytes(p.read_bytes())
    train = pd.read_csv(sample / "train.csv", dtype=str, keep_default_na=False)
    train[train["id"].isin(ids)].to_csv(root / "train.csv", index=False)
    return root


def _config(path: Path, backbone: str) -> Path:
    path.write_text(
        "seed = 0\nsure_only = false\n\n[ner]\n"
        f'backbone = "{backbone}"\nmode = "finetune"\nfolds = 2\nwindow = 64\noverlap = 16\n'
        "epochs = 2.0\nbatch_size = 2\nlr = 0.002\nhead_lr = 0.01\nbf16 = false\n"
        "save_every = 1000\nthreads = 1\n",
        encoding="utf-8",
    )
    return path


def _artefacts(run: Path) -> set[str]:
    return {
        str(p.relative_to(run))
        for p in run.rglob("*")
        if p.is_file() and not any(part in SKIP for part in p.relative_to(run).parts)
    }


def _held_out_nll(run: Path, data: Path) -> float:
    """Mean negative log-probability of the true label over the out-of-fold words."""
    corpus = load_corpus(data)
    oof = load_word_probs(RunLayout(run).oof)
    nll = [
        -np.log(np.maximum(p[np.arange(len(p)), corpus.word_labels(i)], 1e-6))
        for i, p in oof.items()
    ]
    return float(np.concatenate(nll).mean())


def test_torchrun_two_processes_train_ner(tiny_backbone: str, tmp_path: Path) -> None:
    data = _data(tmp_path / "data")
    config = _config(tmp_path / "tiny.toml", tiny_backbone)
    # The environment the package gives its own children: one thread each, this import path.
    env = {**child_env(1), "CUDA_VISIBLE_DEVICES": ""}
    args = ["-m", "discourse_rl", "train-ner", "--data", str(data), "--config", str(config)]
    one = tmp_path / "one"
    train_ner(one, data, config, log=lambda _: None)

    two = tmp_path / "two"
    trace = tmp_path / "writes.txt"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*launch, *args, "--out", str(two)],
        env={**env, WRITE_TRACE: str(trace)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    # Every file of the stage is written once, by the main process, and completely.
    writes = [line.split(" ", 1) for line in trace.read_text().splitlines()]
    assert {rank for rank, _ in writes} == {"0"}
    counts = Counter(path for _, path in writes)
    assert counts and max(counts.values()) == 1, counts.most_common(3)
    assert _artefacts(two) == _artefacts(one)
    for name in ("oof.npz", "fold0/oof.npz", "fold1/oof.npz", "test.npz"):
        assert set(load_word_probs(two / "ner" / name)) == set(load_word_probs(one / "ner" / name))
    metrics = json.loads(RunLayout(two).ner_metrics.read_text())
    assert metrics["essays"] == 8

    # Data-parallel training sees the windows in another order, two at a time per process, so
    # its numbers differ from one process's by design: both must learn about as much.
    uniform = float(np.log(15))
    nll_one, nll_two = _held_out_nll(one, data), _held_out_nll(two, data)
    print(f"held-out NLL: one process {nll_one:.3f}, two {nll_two:.3f}, uniform {uniform:.3f}")
    assert nll_one < 0.8 * uniform and nll_two < 0.8 * uniform
    assert abs(nll_one - nll_two) < 0.1 * uniform  # seen: 1.594 and 1.583

    # The test essays were predicted in two shares and gathered: the same as one process
    # predicting them all with the saved models (float16 on disk).
    essays = load_corpus(data).test_essays
    again = NerPredictor.load(two).predict(essays)
    saved = load_word_probs(RunLayout(two).test_probs)
    for i, p in again.items():
        np.testing.assert_allclose(saved[i], p, atol=2e-3)


def test_shards_cover_everything_in_order() -> None:
    items = list(range(11))
    parts = [distributed.shard(items, i, 3) for i in range(3)]
    assert [x for p in parts for x in p] == items and [len(p) for p in parts] == [3, 4, 4]
    with pytest.raises(ValueError):
        distributed.shard(items, 3, 3)


def test_frozen_mode_under_several_processes_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, corpus_small: object
) -> None:
    from discourse_rl.ner import NerConfig, train_ner

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(DiscourseRLError, match=r"ner.mode = 'frozen'.*one process"):
        train_ner(corpus_small, NerConfig(), tmp_path)  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.tiny_run import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("model"))


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_predict_shards_combine_into_the_unsharded_output(
    tiny_run: Path, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from discourse_rl.app.cli import main

    run = tiny_run
    essays = sample_dir() / "test"
    base = ["predict", "--model", str(run), "--essays", str(essays), "--format", fmt]
    whole, out = tmp_path / f"whole.{fmt}", tmp_path / f"sharded.{fmt}"
    assert main([*base, "--out", str(whole), "--stage", "ner-naive"]) == 0
    for i in (2, 0, 1):  # in any order: the share that finds every part combines them
        assert main([*base, "--out", str(out), "--stage", "ner-naive", "--shard", f"{i}/3"]) == 0
        assert out.exists() == (i == 1)
    assert out.read_bytes() == whole.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        [out.name, whole.name]
    )
    assert "combined 3 parts" in capsys.readouterr().out
    assert main([*base, "--out", str(out), "--shard", "3/3"]) == 2


def test_torchrun_predict_shares_the_essays_and_combines(tiny_run: Path, tmp_path: Path) -> None:
    """Under a launcher each process labels its share; process 0 writes what one process would."""
    from discourse_rl.app.cli import main

    essays = sample_dir() / "test"
    args = ["predict", "--model", str(tiny_run), "--essays", str(essays), "--stage", "ner-naive"]
    assert main([*args, "--out", str(tmp_path / "one.csv")]) == 0
    env = child_env(1)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run(
        [*launch, "-m", "discourse_rl", *args, "--out", str(tmp_path / "two.csv")],
        env={**env, "CUDA_VISIBLE_DEVICES": ""},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "two.csv"]
