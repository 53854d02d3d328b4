"""Resuming: the agent stage keeps every trainer a crash did not reach, and reuses only
complete results from the same inputs."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import discourse_rl.run.steps.agent as stage_mod
from discourse_rl.core.data import Corpus, load_corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import Split, heldout_split
from discourse_rl.core.records import AgentResults
from discourse_rl.decoders.agent.episode import EpisodeConfig
from discourse_rl.decoders.segments import simulate_word_probs
from tests.test_stage import SEG, TINY
from tests.tiny import agent_with

CFG = agent_with(TINY, bc={"epochs": 1}, ppo={"timesteps": 256})
EPISODE = EpisodeConfig(passes=1, batch_essays=8, samples=2, eval_every=2, progress_bar=False)
SEEDS = (0, 3)
TRAINERS = {
    # name: (the stage's trainer function, where its seed is among the positional arguments)
    "bc": (stage_mod.train_bc, 1),
    "ppo": (stage_mod.train_ppo, 1),
    "episode": (stage_mod.train_episode, 1),
}


class Crash(Exception):
    pass


def _inputs() -> tuple[Corpus, dict[str, Any]]:
    c = load_corpus()
    ids = sorted(c.essays)[:30]
    return c.subset(ids), simulate_word_probs(c, 0.5, 0, ids)


def _split(corpus: Corpus) -> Split:
    return heldout_split(sorted(corpus.essays), 0.2, 0)


def _spy(monkeypatch: pytest.MonkeyPatch, calls: Counter[tuple[str, int]], crash: str = "") -> None:
    """Count the trainers' calls by (trainer, seed); `crash` ('ppo@3') raises inside one."""

    def wrap(name: str) -> Callable[..., Any]:
        fn, seed_at = TRAINERS[name]

        def spy(*args: Any, **kw: Any) -> Any:
            seed = int(args[seed_at].seed)
            calls[(name, seed)] += 1
            if crash == f"{name}@{seed}":
                raise Crash(crash)
            return fn(*args, **kw)

        return spy

    for name in TRAINERS:
        monkeypatch.setattr(stage_mod, f"train_{name}", wrap(name))


def _scores(result: AgentResults) -> list[dict[str, Any]]:
    return [s.to_json() for s in result.stages]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state: dict[str, torch.Tensor] = blob["state_dict"]
    return state


@pytest.mark.slow
def test_crash_in_second_seed_keeps_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus, probs = _inputs()
    whole = stage_mod.train_agent_stage(
        tmp_path / "whole", corpus, probs, _split(corpus), SEG, CFG, SEEDS, EPISODE
    )

    run = tmp_path / "run"
    lay = RunLayout(run)
    calls: Counter[tuple[str, int]] = Counter()
    _spy(monkeypatch, calls, crash="ppo@3")
    with pytest.raises(Crash):
        stage_mod.train_agent_stage(run, corpus, probs, _split(corpus), SEG, CFG, SEEDS, EPISODE)
    # Seed 0 and seed 3's BC finished and are recorded; the crashed PPO left no record.
    assert lay.trainer_done("episode", 0, 0).is_file() and lay.trainer_done("bc", 1, 3).is_file()
    assert not lay.trainer_done("ppo", 1, 3).exists()
    partial = AgentResults.read(lay.agent_results)
    bc = partial.stage("bc")
    assert bc is not None and bc.seeds == (0,)

    calls.clear()
    _spy(monkeypatch, calls)
    resumed = stage_mod.train_agent_stage(
        run, corpus, probs, _split(corpus), SEG, CFG, SEEDS, EPISODE
    )
    assert calls == Counter({("ppo", 3): 1, ("episode", 3): 1})
    assert _scores(resumed) == _scores(whole)
    assert [r.ppo_env_steps for r in resumed.seeds] == [r.ppo_env_steps for r in whole.seeds]
    for trainer in ("bc", "ppo", "episode"):
        for k, seed in enumerate(SEEDS):
            a = _weights(lay.policy(trainer, k, seed))
            b = _weights(RunLayout(tmp_path / "whole").policy(trainer, k, seed))
            assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_only_complete_records_of_the_same_inputs_are_reused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    corpus, probs = _inputs()
    lay = RunLayout(tmp_path)
    stage_mod.train_agent_stage(tmp_path, corpus, probs, _split(corpus), SEG, CFG, (0,), None)
    calls: Counter[tuple[str, int]] = Counter()
    _spy(monkeypatch, calls)

    # A record whose policy is gone, or whose key is not the inputs', is not a finished trainer.
    lay.policy("ppo").unlink()
    done = lay.trainer_done("bc")
    rec = json.loads(done.read_text())
    done.write_text(json.dumps({**rec, "key": "0" * 16}))
    stage_mod.train_agent_stage(tmp_path, corpus, probs, _split(corpus), SEG, CFG, (0,), None)
    assert calls == Counter({("bc", 0): 1, ("ppo", 0): 1})

    # Other inputs (here another seed list) empty agent/ first: nothing is reused.
    stale = lay.trainer_done("bc")
    calls.clear()
    stage_mod.train_agent_stage(tmp_path, corpus, probs, _split(corpus), SEG, CFG, (1,), None)
    assert calls == Counter({("bc", 1): 1, ("ppo", 1): 1})
    assert json.loads(stale.read_text())["seed"] == 1


def test_a_stage_that_fails_leaves_no_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stage's record goes before it runs: outputs an interrupted run half made (results.json
    after one seed of three) are never reused as the finished stage."""
    import discourse_rl.run.one_step as one_step
    from discourse_rl.core.records import StageRecord, read_stages, write_stages
    from discourse_rl.run.runformat import RunFormat

    lay = RunLayout(tmp_path)
    RunFormat.current().write(lay.format)
    write_stages(lay.stages, {"ner": StageRecord("n", 1.0), "agent": StageRecord("a", 1.0)})

    def crash(*args: Any, **kw: Any) -> Any:
        assert "agent" not in read_stages(lay.stages)
        raise Crash("agent")

    monkeypatch.setattr(one_step, "run_agent_step", crash)
    with pytest.raises(Crash):
        one_step.train_agent(tmp_path, simulate=True, max_essays=10, log=lambda _: None)
    assert set(read_stages(lay.stages)) == {"ner"}


@pytest.mark.slow
def test_finetune_fold_resumes_from_its_last_complete_checkpoint(
    tiny_backbone: str, corpus_small: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fine-tune mode: a fold interrupted after a checkpoint resumes from it (a half-saved newer
    checkpoint is removed, not loaded) and ends where an uninterrupted run ends."""
    from transformers import Trainer

    from discourse_rl.core.data import load_word_probs
    from discourse_rl.ner import train_ner
    from tests.tiny import tiny_cfg

    corpus = corpus_small.subset(sorted(corpus_small.essays)[:4])
    cfg = tiny_cfg(tiny_backbone, mode="finetune", epochs=2.0, save_every=2, lr=1e-3, bf16=False)
    real_step = Trainer.training_step
    steps = {"n": 0, "crash_at": 0}

    def step(self: Any, *args: Any, **kw: Any) -> Any:
        steps["n"] += 1
        if steps["n"] == steps["crash_at"]:
            raise Crash(f"step {steps['n']}")
        return real_step(self, *args, **kw)

    monkeypatch.setattr(Trainer, "training_step", step)
    whole = load_word_probs(train_ner(corpus, cfg, tmp_path / "whole", seed=0).oof_path)
    whole_steps = steps["n"]

    steps.update(n=0, crash_at=4)
    with pytest.raises(Crash):
        train_ner(corpus, cfg, tmp_path / "run", seed=0)
    fold = RunLayout(tmp_path / "run").fold(0)
    assert [p.name for p in fold.checkpoints.glob("checkpoint-*")] == ["checkpoint-2"]
    half = fold.checkpoints / "checkpoint-3"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"half")

    steps.update(n=0, crash_at=0)
    resumed = load_word_probs(train_ner(corpus, cfg, tmp_path / "run", seed=0).oof_path)
    assert not half.exists()
    assert steps["n"] == whole_steps - 2  # fold 0's first two steps came from checkpoint-2
    assert resumed.keys() == whole.keys()
    for i, p in whole.items():
        np.testing.assert_allclose(resumed[i], p, atol=2e-3)


def test_leftovers_of_killed_writes_are_removed(tmp_path: Path) -> None:
    from discourse_rl.core.common import (
        atomic_dir,
        atomic_write_text,
        remove_temporaries,
        temp_name,
    )

    keep = [tmp_path / "a.json", tmp_path / ".hidden", tmp_path / "sub" / ".x.deadbeef.npz"]
    for p in keep:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("keep")
    left = [tmp_path / temp_name("a.json"), tmp_path / "sub" / temp_name("oof.npz", ".npz")]
    for p in left:
        p.write_text("half")
    (tmp_path / temp_name("encoder")).mkdir()
    (tmp_path / "sub" / temp_name("encoder") / "config.json").parent.mkdir()
    assert remove_temporaries(tmp_path) == 4
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(keep)

    # A folder written atomically: the old one stays whole when the writer fails.
    target = tmp_path / "encoder"
    with atomic_dir(target) as tmp:
        atomic_write_text(tmp / "config.json", "1")
    with pytest.raises(Crash), atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("2")
        raise Crash("mid-save")
    assert (target / "config.json").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".encoder")] == []


def test_ner_outputs_of_other_inputs_are_cleared(tmp_path: Path) -> None:
    from discourse_rl.ner.run import keep_or_clear

    lay = RunLayout(tmp_path)
    keep_or_clear(lay, "k1")
    fold = lay.fold(0)
    fold.root.mkdir(parents=True)
    fold.done.write_text("{}")
    lay.ner_cache.mkdir()
    keep_or_clear(lay, "k1")
    assert fold.done.is_file()
    keep_or_clear(lay, "k2")
    assert not fold.root.exists() and lay.ner_cache.is_dir()
