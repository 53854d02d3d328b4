"""The attention agent: plain module and SB3 wrapper agree, checkpoints, masks, KL term, BC then
PPO beat random."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from sb3_contrib import MaskablePPO
from stable_baselines3.common.utils import obs_as_tensor

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import Corpus, load_corpus
from discourse_rl.decoders.agent import FineTuneInputs, predict_spans, train_bc, train_ppo
from discourse_rl.decoders.agent.common import pad_batch, split_validation
from discourse_rl.decoders.agent.env import SegmentLabelEnv, observation_space
from discourse_rl.decoders.agent.policy import (
    AttentionPolicy,
    PolicyConfig,
    load_policy,
    make_policy,
    masked_greedy,
    predict_actions,
    save_policy,
)
from discourse_rl.decoders.agent.ppo import SB3Policy, make_env, policy_kl
from discourse_rl.decoders.agent.reward import essay_counts, essay_reward, gold_table
from discourse_rl.decoders.segments import (
    EssaySegments,
    SegmentConfig,
    allowed_actions,
    make_segments,
    segment_gold_actions,
    simulate_word_probs,
)
from tests.tiny import agent_with, tiny_agent

TINY = tiny_agent(bc={"epochs": 25, "lr": 3e-3}, ppo={"value_warmup_steps": 256, "lr": 1e-4})
SEG = SegmentConfig(max_segments=64)


@cache
def corpus() -> Corpus:
    return load_corpus()


@cache
def essays() -> list[EssaySegments]:
    c = corpus()
    ids = sorted(c.essays)[:48]
    return segment_gold_actions(make_segments(simulate_word_probs(c, 0.5, 0, ids), SEG), c)


def mean_reward(segs: list[EssaySegments], actions: list[np.ndarray]) -> float:
    gold = gold_table(corpus(), [s.essay_id for s in segs])
    pairs = zip(segs, actions, strict=True)
    counts = [essay_counts(s, a, gold[s.essay_id]) for s, a in pairs]
    return float(np.mean([essay_reward(c, "f1") for c in counts]))


def sb3_face(policy: AttentionPolicy) -> SB3Policy:
    """The SB3 policy PPO trains, around `policy`."""
    space = observation_space(policy.config.max_segments, policy.config.n_features)
    return SB3Policy(space, spaces.Discrete(15), lambda _: 1e-4, net=policy)


def random_actions(segs: list[EssaySegments], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for s in segs:
        prev, acts = -1, []
        for _ in range(s.n_segments):
            prev = int(rng.choice(np.flatnonzero(allowed_actions(prev))))
            acts.append(prev)
        out.append(np.array(acts))
    return out


def test_padding_does_not_change_real_segments() -> None:
    policy = make_policy(TINY, essays()[0].features.shape[1])
    policy.eval()
    s = essays()[0]
    alone = pad_batch([s])
    longest = max(essays()[:5], key=lambda e: e.n_segments)
    padded = pad_batch([s, longest])
    with torch.no_grad():
        la, va = policy.encode(alone.features, alone.mask)
        lp, vp = policy.encode(padded.features, padded.mask)
    n = s.n_segments
    torch.testing.assert_close(la[0, :n], lp[0, :n], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(va[0, :n], vp[0, :n], atol=1e-5, rtol=1e-5)


def test_sb3_wrapper_equals_the_plain_module() -> None:
    segs = essays()[:3]
    policy = make_policy(TINY, segs[0].features.shape[1])
    sb3 = sb3_face(policy)
    sb3.set_training_mode(False)
    env = SegmentLabelEnv(segs, gold_table(corpus(), [s.essay_id for s in segs]), 64)
    obs, _ = env.reset(options={"essay_index": 1})
    b = pad_batch([segs[1]])
    with torch.no_grad():
        logits, values = policy.encode(b.features, b.mask)
        for t in range(3):
            o, _ = sb3.obs_to_tensor(obs)
            dist = sb3.get_distribution(o)
            expected = torch.log_softmax(logits[0, t], -1)
            torch.testing.assert_close(dist.distribution.logits[0], expected, atol=1e-5, rtol=0)
            torch.testing.assert_close(sb3.predict_values(o)[0, 0], values[0, t], atol=1e-5, rtol=0)
            obs, *_ = env.step(0)


def test_sb3_wrapper_adds_no_parameters_and_draws_the_same_weights() -> None:
    config = PolicyConfig.of(TINY.network, essays()[0].features.shape[1])
    torch.manual_seed(3)
    plain = AttentionPolicy(config)
    torch.manual_seed(3)
    sb3 = SB3Policy(
        observation_space(config.max_segments, config.n_features),
        spaces.Discrete(15),
        lambda _: 1e-4,
        config=config,
    )
    # Same parameters, in the same order (gradient clipping sums over them in order).
    assert [p.shape for p in sb3.parameters()] == [p.shape for p in plain.parameters()]
    for a, b in zip(sb3.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
    assert sb3.action_net is sb3.net.action_net and sb3.value_net is sb3.net.value_net


def test_greedy_decoding_respects_masks() -> None:
    logits = np.zeros((4, 15))
    logits[:, 6] = 5.0  # 'continues Claim' everywhere: only allowed after a Claim
    logits[:, 5] = 1.0
    assert masked_greedy(logits).tolist() == [5, 6, 6, 6]


def test_kl_is_zero_for_the_same_policy_and_positive_otherwise() -> None:
    segs = essays()[:4]
    net = make_policy(TINY, segs[0].features.shape[1])
    policy, ref = sb3_face(net), sb3_face(copy.deepcopy(net))
    env = SegmentLabelEnv(segs, gold_table(corpus(), [s.essay_id for s in segs]), 64)
    obs_list, masks = [], []
    obs, _ = env.reset(seed=0)
    for _ in range(20):
        obs_list.append(obs)
        masks.append(env.action_masks())
        obs, _, done, _, _ = env.step(int(np.flatnonzero(env.action_masks())[-1]))
        if done:
            obs, _ = env.reset()
    batch = {k: np.stack([o[k] for o in obs_list]) for k in obs_list[0]}
    obs_t = obs_as_tensor(batch, torch.device("cpu"))
    m = torch.from_numpy(np.stack(masks))
    with torch.no_grad():
        kl = policy_kl(policy, ref, obs_t, m)  # type: ignore[arg-type]
        assert torch.allclose(kl, torch.zeros_like(kl), atol=1e-6)
        policy.action_net.bias.add_(torch.linspace(-2, 2, 15))
        kl = policy_kl(policy, ref, obs_t, m)  # type: ignore[arg-type]
    assert (kl > 1e-4).all() and torch.isfinite(kl).all()


def test_ppo_takes_only_allowed_actions() -> None:
    segs = essays()[:8]
    env = make_env(segs, corpus(), TINY)
    model = MaskablePPO(
        SB3Policy,
        env,
        n_steps=64,
        batch_size=64,
        n_epochs=1,
        policy_kwargs={"config": PolicyConfig.of(TINY.network, segs[0].features.shape[1])},
        seed=0,
        device="cpu",
    )
    model.learn(256)
    buf = model.rollout_buffer
    acts = buf.actions.reshape(-1).astype(int)
    masks = buf.action_masks.reshape(-1, 15) > 0.5
    assert masks[np.arange(acts.size), acts].all()
    assert not masks.all()  # the masks did forbid something


def test_bc_then_ppo_beat_a_random_policy(tmp_path: Path) -> None:
    train, val = split_validation(essays()[:40], 0.2, 0)
    test = essays()[40:]
    bc = train_bc(train, TINY, tmp_path / "bc", val_segs=val, corpus=corpus()).path
    rl = train_ppo(
        FineTuneInputs(train, corpus(), bc, tmp_path / "rl", val, tmp_path / "tb"), TINY
    ).path
    history = json.loads((tmp_path / "rl" / "history.json").read_text())
    assert history["env_steps"] >= TINY.ppo.timesteps + TINY.ppo.value_warmup_steps
    assert history["history"][0]["step"] == 0  # the BC policy scored as the first checkpoint
    random_score = np.mean([mean_reward(test, random_actions(test, k)) for k in range(3)])
    bc_score = mean_reward(test, predict_actions(load_policy(bc), test))
    rl_score = mean_reward(test, predict_actions(load_policy(rl), test))
    assert bc_score > random_score + 0.2
    assert rl_score > random_score + 0.2
    table = predict_spans(rl, test)
    assert set(table.columns) >= {"id", "class", "predictionstring"}
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_same_seed_same_policy(tmp_path: Path) -> None:
    cfg = agent_with(TINY, bc={"epochs": 2})
    segs = essays()[:10]
    a = train_bc(segs, cfg, tmp_path / "a").path
    b = train_bc(segs, cfg, tmp_path / "b").path
    sa, sb = load_policy(a).state_dict(), load_policy(b).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", ["plain", "autoregressive"])
def test_save_load_round_trip(tmp_path: Path, kind: str) -> None:
    segs = essays()[:5]
    policy = make_policy(TINY, segs[0].features.shape[1])
    if kind == "autoregressive":
        policy.add_head()
        assert policy.head is not None
        with torch.no_grad():
            for p in policy.head.parameters():
                p.normal_()  # a head that changes decisions
    save_policy(policy, tmp_path / "p.pt")
    assert [f.name for f in tmp_path.iterdir()] == ["p.pt"]  # no temporary file left behind
    back = load_policy(tmp_path / "p.pt")
    assert back.config == policy.config and back.config.kind == kind
    assert (back.head is None) == (kind == "plain")
    assert not back.training
    state, loaded = policy.state_dict(), back.state_dict()
    assert state.keys() == loaded.keys()
    assert all(torch.equal(state[k], loaded[k]) for k in state)
    assert [a.tolist() for a in predict_actions(policy, segs)] == [
        a.tolist() for a in predict_actions(back, segs)
    ]


def test_load_rejects_missing_foreign_and_old_files(tmp_path: Path) -> None:
    with pytest.raises(DiscourseRLError, match="not found"):
        load_policy(tmp_path / "none.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(DiscourseRLError, match="not a policy file"):
        load_policy(tmp_path / "text.pt")
    # The layout of earlier versions: SB3 parameter names and an "arch" table, no format.
    old = {"state_dict": {}, "n_features": 3, "arch": {"d_model": 16}}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(DiscourseRLError, match=r"older discourse-rl.*re-run"):
        load_policy(tmp_path / "old.pt")
