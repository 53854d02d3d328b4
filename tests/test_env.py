"""The segment-labelling environment: API checkers, masks, rewards from the metric."""

from __future__ import annotations

import warnings
from functools import cache

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from discourse_rl.core import metric
from discourse_rl.core.data import load_corpus
from discourse_rl.decoders.agent.env import SegmentLabelEnv
from discourse_rl.decoders.agent.reward import essay_counts, essay_reward, gold_table
from discourse_rl.decoders.segments import (
    EssaySegments,
    actions_to_spans,
    make_segments,
    segment_gold_actions,
    simulate_word_probs,
)


@cache
def data() -> tuple[list[EssaySegments], dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    c = load_corpus()
    ids = sorted(c.essays)[:12]
    segs = segment_gold_actions(make_segments(simulate_word_probs(c, 0.5, 0, ids)), c)
    return segs, gold_table(c, ids)


def make_env(reward: str = "f1") -> SegmentLabelEnv:
    segs, gold = data()
    return SegmentLabelEnv(segs, gold, max_segments=96, reward=reward)


def test_gymnasium_and_sb3_checkers_pass() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # advisory notes (render modes, 2-D obs)
        gym_check_env(make_env())
        sb3_check_env(make_env())


def test_gold_actions_earn_the_essays_own_score() -> None:
    env = make_env()
    segs, gold = data()
    for k, s in enumerate(segs):
        obs, info = env.reset(options={"essay_index": k})
        assert info["essay_id"] == s.essay_id
        assert obs["mask"].sum() == s.n_segments
        assert s.gold_action is not None
        total, steps, done = 0.0, 0, False
        while not done:
            assert env.action_masks()[s.gold_action[steps]]
            obs, r, done, trunc, info = env.step(s.gold_action[steps])
            assert obs["position"] == min(steps + 1, s.n_segments - 1)
            total += r
            steps += 1
        assert steps == s.n_segments and not trunc
        counts = metric.essay_counts(*actions_to_spans(s, s.gold_action), *gold[s.essay_id])
        assert total == pytest.approx(metric.essay_f1(counts))
        assert info["f1"] == pytest.approx(total)
        assert info["jaccard"] == pytest.approx(metric.essay_jaccard(counts))


def test_jaccard_reward_and_rewards_only_at_the_end() -> None:
    env = make_env("jaccard")
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    for _ in range(200):
        a = int(rng.choice(np.flatnonzero(env.action_masks())))
        _, r, done, _, info = env.step(a)
        if done:
            assert r == pytest.approx(info["jaccard"]) and 0.0 <= r <= 1.0
            env.reset()
        else:
            assert r == 0.0


def test_masks_forbid_continuing_another_class() -> None:
    env = make_env()
    env.reset(options={"essay_index": 0})
    m = env.action_masks()
    assert m[0] and m[1::2].all() and not m[2::2].any()
    env.step(5)  # B-Claim
    m = env.action_masks()
    assert m[6] and m[2::2].sum() == 1
    env.step(0)
    assert not env.action_masks()[2::2].any()


def test_unmasked_forbidden_continue_reads_as_begin() -> None:
    env = make_env()
    env.reset(options={"essay_index": 0})
    env.step(6)  # 'continues Claim' at the first segment: nothing to continue
    assert env._actions[0] == 5


def test_every_essay_is_visited_once_per_pass() -> None:
    env = make_env()
    seen = []
    _, info = env.reset(seed=3)
    for _ in range(len(data()[0])):
        seen.append(info["essay_id"])
        done = False
        while not done:
            _, _, done, _, _ = env.step(0)
        _, info = env.reset()
    assert sorted(seen) == sorted(s.essay_id for s in data()[0])


def test_essay_reward_matches_metric_and_rejects_bad_setup() -> None:
    segs, gold = data()
    s = segs[0]
    counts = essay_counts(s, np.zeros(s.n_segments, np.int64), gold[s.essay_id])
    assert essay_reward(counts, "f1") == 0.0 and essay_reward(counts, "jaccard") == 0.0
    with pytest.raises(ValueError, match="reward must be one of"):
        SegmentLabelEnv(segs, gold, max_segments=96, reward="macro")  # needs corpus statistics
    with pytest.raises(ValueError, match="max_segments"):
        SegmentLabelEnv(segs, gold, max_segments=2)
    with pytest.raises(ValueError, match="no gold"):
        SegmentLabelEnv(segs, {}, max_segments=96)
