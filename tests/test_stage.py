"""The agent stage: typed results on disk, the trainers' folders, no stale policy, predict."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import load_corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import heldout_split, read_split
from discourse_rl.core.records import AgentResults
from discourse_rl.decoders import registry
from discourse_rl.decoders.agent.episode import EpisodeConfig
from discourse_rl.decoders.agent.policy import load_policy
from discourse_rl.decoders.segments import SegmentConfig, make_segments, simulate_word_probs
from discourse_rl.run.steps.agent import train_agent_stage
from tests.tiny import agent_with, tiny_agent

TINY = tiny_agent(bc={"epochs": 2}, ppo={"value_warmup_steps": 0, "kl_target": 1e-4})
SEG = SegmentConfig(max_segments=64)


def test_agent_stage_end_to_end(tmp_path: Path) -> None:
    c = load_corpus()
    ids = sorted(c.essays)[:40]
    probs = simulate_word_probs(c, 0.5, 0, ids)
    lay = RunLayout(tmp_path)
    # A policy an earlier configuration left behind must not survive to be served.
    stale = lay.policy("episode")
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"stale")
    split = heldout_split(ids, 0.2, 0)
    cfg = dataclasses.replace(TINY, max_essays=10)
    result = train_agent_stage(tmp_path, c.subset(ids), probs, split, SEG, cfg, seeds=(0,))

    assert [s.stage for s in result.stages] == ["ner-naive", "ner-tuned", "oracle", "bc", "ppo"]
    # BC learns from every training essay; PPO from its capped subset (plus the validation share).
    n_val = round(0.1 * 32)
    by = {s.stage: s.n_train for s in result.stages}
    assert by == {"ner-naive": 0, "ner-tuned": 32, "oracle": 0, "bc": 32, "ppo": 10 + n_val}
    assert AgentResults.read(lay.agent_results) == result
    assert not lay.trainer_dir("episode").exists()
    assert lay.policy("ppo").is_file() and lay.segments.is_file()
    assert not (lay.agent / "rl").exists() and not (lay.agent / "results.md").exists()
    ppo = result.stage("ppo")
    assert ppo is not None and ppo.seeds == (0,) and ppo.macro_f1.values == (ppo.macro_f1.mean,)
    assert 0.0 <= ppo.essay_jaccard.mean <= 1.0
    oracle = result.stage("oracle")
    assert oracle is not None and oracle.essay_f1.mean > 0.9 and oracle.seeds == ()
    assert (result.n_train, result.n_heldout) == (32, 8) == (len(split.train), len(split.heldout))
    assert result.heldout == split.describe() and result.heldout.candidates == len(ids)
    assert read_split(lay.split) == split
    history = json.loads(lay.history("ppo").read_text())
    assert history["final_beta"] != TINY.ppo.kl_beta  # the adaptive beta moved towards its target
    (record,) = result.seeds
    assert record.ppo_env_steps == history["env_steps"] and record.episode_seconds is None

    few = {i: probs[i] for i in ids[:3]}
    spans = registry.get("bc").load(tmp_path).predict(few, {i: c.essays[i] for i in few})
    assert set(spans) == set(few) and all(spans.values())  # the cloned policy labels every essay
    with pytest.raises(DiscourseRLError, match="now called 'ppo'"):
        registry.get("rl")
    with pytest.raises(DiscourseRLError, match="expected one of"):
        registry.get("ner")
    with pytest.raises(DiscourseRLError, match="no episode policy"):
        registry.get("episode").load(tmp_path)


def test_second_seed_and_autoregressive_episode_policy(tmp_path: Path) -> None:
    c = load_corpus()
    ids = sorted(c.essays)[:30]
    probs = simulate_word_probs(c, 0.5, 0, ids)
    cfg = agent_with(TINY, bc={"epochs": 1}, ppo={"timesteps": 256})
    episode = EpisodeConfig(
        autoregressive=True, passes=1, batch_essays=8, samples=2, eval_every=2, progress_bar=False
    )
    rich = dataclasses.replace(SEG, rich_features=True)
    split = heldout_split(ids, 0.2, 1)
    result = train_agent_stage(tmp_path, c.subset(ids), probs, split, rich, cfg, (0, 3), episode)
    lay = RunLayout(tmp_path)
    # The autoregressive policy is saved where prediction looks, and keeps its head.
    assert load_policy(lay.policy("episode")).head is not None
    few = ids[:3]
    words = {i: c.essays[i].words for i in few}
    with pytest.raises(DiscourseRLError, match="rich_features needs"):
        make_segments({i: probs[i] for i in few}, rich, None, words)
    episode_policy = registry.get("episode").load(tmp_path)
    spans = episode_policy.predict({i: probs[i] for i in few}, {i: c.essays[i] for i in few})
    assert set(spans) == set(few)
    ep = result.stage("episode")
    assert ep is not None and ep.seeds == (0, 3)
    assert all(r.episode_seconds is not None for r in result.seeds)
    assert lay.policy("ppo", 1, 3).is_file() and lay.policy("ppo", 1, 3).parts[-3] == "seed3"
    bc = result.stage("bc")
    assert bc is not None and bc.seeds == (0, 3) and len(bc.macro_f1.values) == 2
    assert bc.macro_f1.sd is not None
    assert [r.seed for r in result.seeds] == [0, 3]
