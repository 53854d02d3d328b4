"""Issue 15: NER folds trained side by side, each in its own single-thread process
(`ner.fold_workers`), and many essays predicted in shares by single-thread processes, both
through the package's one launcher (`discourse_rl.launch.workers`)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from discourse_rl.core import rules
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import Corpus, load_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.launch.workers import Job, child_env, run_jobs
from discourse_rl.ner import NerConfig, train_ner
from discourse_rl.ner.finetune import fold_workers
from discourse_rl.ner.run import inputs_key, keep_or_clear
from tests.tiny import tiny_cfg

CPU = torch.device("cpu")


def _few(corpus: Corpus, n: int = 6) -> Corpus:
    """`n` essays and no test essays (nothing to predict after the folds)."""
    return replace(corpus.subset(sorted(corpus.essays)[:n]), test_essays={})


def test_how_many_folds_train_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    auto = NerConfig(mode="finetune", folds=5)
    assert fold_workers(replace(auto, threads=2), 2, CPU) == 2  # the reference: 2 x 1 thread
    assert fold_workers(replace(auto, threads=2), 5, CPU) == 2
    assert fold_workers(replace(auto, threads=4), 3, CPU) == 3
    assert fold_workers(replace(auto, threads=2), 1, CPU) == 1  # one fold left: in-process
    assert fold_workers(replace(auto, threads=1), 5, CPU) == 1
    assert fold_workers(replace(auto, threads=0), 5, CPU) == 1  # torch's own threads: as today
    assert fold_workers(replace(auto, threads=1, fold_workers=3), 5, CPU) == 3
    assert fold_workers(replace(auto, threads=2, fold_workers=1), 5, CPU) == 1
    assert fold_workers(replace(auto, threads=2), 2, torch.device("cuda", 0)) == 1
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's ranks share each fold instead
    assert fold_workers(replace(auto, threads=2), 2, CPU) == 1
    with pytest.raises(rules.ConfigValueError, match="fold_workers"):
        NerConfig(fold_workers=-1)


def test_children_start_alike_and_return_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    env = child_env(1)
    assert env["OMP_NUM_THREADS"] == "1" and "RANK" not in env
    assert env["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
    got = run_jobs(
        [Job(f"job {n}", os.getenv, (name,)) for n, name in enumerate(["OMP_NUM_THREADS", "RANK"])],
        at_once=2,
        threads=1,
    )
    assert got == ["1", None]


def test_a_failing_child_is_one_line_naming_it(capfd: pytest.CaptureFixture[str]) -> None:
    jobs = [Job("fine", json.loads, ("[1]",)), Job("broken", json.loads, ("{",))]
    with pytest.raises(DiscourseRLError) as err:
        run_jobs(jobs, at_once=1, threads=0)
    line = str(err.value)
    assert line.startswith("broken failed in its own process (exit status 1): JSONDecodeError: ")
    assert "\n" not in line
    # Its traceback reached the log, each line prefixed with the job's name.
    assert "[broken] Traceback (most recent call last):" in capfd.readouterr().err


def test_fold_processes_give_the_same_folds_as_one_process(
    tiny_backbone: str, corpus_small: Corpus, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Two folds trained at once in two single-thread children are bit for bit the folds one
    single-thread process trains one after the other."""
    from safetensors.torch import load_file

    corpus = _few(corpus_small)
    cfg = tiny_cfg(tiny_backbone, mode="finetune", epochs=1.0, lr=1e-3, head_lr=1e-2)
    train_ner(corpus, replace(cfg, threads=1, fold_workers=1), tmp_path / "one", seed=3)
    assert "[fold 0]" not in capfd.readouterr().err
    train_ner(corpus, replace(cfg, threads=2, fold_workers=2), tmp_path / "two", seed=3)
    log = capfd.readouterr().err
    assert "[fold 0]" in log and "[fold 1]" in log  # the folds trained in the children

    one, two = RunLayout(tmp_path / "one"), RunLayout(tmp_path / "two")
    for a, b in zip(one.folds(2), two.folds(2), strict=True):
        pa, pb = load_word_probs(a.oof), load_word_probs(b.oof)
        assert list(pa) == list(pb)
        for i in pa:
            np.testing.assert_array_equal(pa[i], pb[i])
        wa, wb = load_file(str(a.model)), load_file(str(b.model))
        assert wa.keys() == wb.keys()
        for name in wa:
            assert torch.equal(wa[name], wb[name]), name


def test_a_failing_fold_child_stops_the_stage_with_one_line(
    tiny_backbone: str, corpus_small: Corpus, tmp_path: Path
) -> None:
    """A fold whose Trainer checkpoint cannot be resumed: the stage ends with one line naming
    the fold and the child's error, not a child's traceback."""
    corpus = _few(corpus_small, 4)
    cfg = tiny_cfg(tiny_backbone, mode="finetune", threads=2, epochs=1.0)
    keep_or_clear(RunLayout(tmp_path), inputs_key(corpus, cfg, 0))  # the folds are this run's
    for fold in RunLayout(tmp_path).folds(2):
        broken = fold.checkpoints / "checkpoint-1"
        broken.mkdir(parents=True)
        (broken / "trainer_state.json").write_text("{}")  # parses, so it is taken as complete
    with pytest.raises(DiscourseRLError) as err:
        train_ner(corpus, cfg, tmp_path, seed=0)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(("fold 0 failed in its own process", "fold 1 failed in its own process"))
    assert "checkpoint-1" in line, line


def test_prediction_shared_by_processes_is_one_processs_in_order(
    tiny_backbone: str,
    corpus_small: Corpus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Essays dealt to two single-thread children, in groups as one process forms them: the
    same probabilities, bit for bit, as one single-thread process, in the order given."""
    from discourse_rl.ner import NerPredictor, inference
    from discourse_rl.ner import predict as predict_module

    corpus = _few(corpus_small, 4)
    cfg = tiny_cfg(tiny_backbone, mode="finetune", epochs=1.0, threads=1)
    train_ner(corpus, cfg, tmp_path, seed=0)
    # Small groups and pieces, so that 8 essays make several groups and a long essay is cut
    # into pieces that may land in different shares.
    monkeypatch.setattr(inference, "GROUP_WORDS", 1000)
    monkeypatch.setattr(inference, "PIECE_WORDS", 400)
    every = corpus_small.essays
    essays = {i: every[i] for i in sorted(every, reverse=True)}  # not in id order
    assert max(e.n_words for e in essays.values()) > 400
    launched: list[int] = []

    def counted(jobs: list[Job], at_once: int, threads: int) -> list[object]:
        launched.append(len(jobs))
        assert threads == 1
        return run_jobs(jobs, at_once, threads)

    monkeypatch.setattr(predict_module, "run_jobs", counted)

    one = NerPredictor.load(tmp_path, threads=1).predict(essays)
    shared = NerPredictor.load(tmp_path, threads=2)
    assert shared._processes(8) == 2 and shared._processes(7) == 1  # automatic: 4 groups each
    assert not launched
    two = NerPredictor.load(tmp_path, threads=2, workers=2).predict(essays)
    assert launched == [2]
    assert list(two) == list(one) == list(essays)
    for i in one:
        np.testing.assert_array_equal(one[i], two[i])

    # The children predict with the parent's settings, not only the run's: here the windows.
    def spread(p: NerPredictor) -> NerPredictor:
        return replace(p, cfg=replace(p.cfg, predict_windows="spread"))

    one_spread = spread(NerPredictor.load(tmp_path, threads=1)).predict(essays)
    two_spread = spread(NerPredictor.load(tmp_path, threads=2, workers=2)).predict(essays)
    assert launched == [2, 2]
    for i in one:
        np.testing.assert_array_equal(one_spread[i], two_spread[i])
    assert any(not np.array_equal(one[i], one_spread[i]) for i in one)
