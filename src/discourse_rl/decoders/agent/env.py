"""A gymnasium environment: label one essay's segments in order, scored by the metric at the end.

Observation (a Dict): the essay's segment features padded to `max_segments` rows, a mask of the
real rows, and the index of the segment to label now. The agent never sees its own earlier
actions: each decision rests on the segments alone, so one forward pass over an essay gives every
segment's action distribution (what the policy's `encode` relies on); the earlier actions only
shape the action mask ('continues k' is allowed right after a class-k segment).

Reward: 0 per step, then the essay's reward from `agent.reward` (its F-score, or with
reward="jaccard" the seed's TP / (TP + FP + FN)); the final info carries every essay reward.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import numpy.typing as npt
from gymnasium import spaces

from discourse_rl.core.arrays import IntArray, Spans
from discourse_rl.decoders.agent.reward import ESSAY_REWARDS, essay_counts, gold_table
from discourse_rl.decoders.segments import N_ACTIONS, EssaySegments, allowed_actions

# gold_table and Spans are the environment's answer key; importable from here for its users.
__all__ = ["SegmentLabelEnv", "Spans", "gold_table", "observation_space"]

Obs = dict[str, Any]
# Features are probabilities, shares and embeddings: far inside this bound.
FEATURE_BOUND = 100.0


def observation_space(max_segments: int, n_features: int) -> spaces.Dict:
    return spaces.Dict(
        {
            "features": spaces.Box(
                -FEATURE_BOUND, FEATURE_BOUND, (max_segments, n_features), np.float32
            ),
            "mask": spaces.MultiBinary(max_segments),
            "position": spaces.Discrete(max_segments),
        }
    )


class SegmentLabelEnv(gym.Env[Obs, np.int64]):
    """One episode = one essay; essays are visited in a reshuffled order, pass after pass."""

    def __init__(
        self,
        essays: Sequence[EssaySegments],
        gold: Mapping[str, Spans],
        max_segments: int,
        reward: str = "f1",
    ) -> None:
        if not essays:
            raise ValueError("SegmentLabelEnv needs at least one essay")
        if reward not in ESSAY_REWARDS:
            raise ValueError(f"reward must be one of {tuple(ESSAY_REWARDS)}, got {reward!r}")
        too_long = [s.essay_id for s in essays if s.n_segments > max_segments]
        if too_long:
            raise ValueError(f"{too_long[0]}: more than max_segments={max_segments} segments")
        missing = [s.essay_id for s in essays if s.essay_id not in gold]
        if missing:
            raise ValueError(f"{missing[0]}: no gold spans")
        self.essays = list(essays)
        self.gold = gold
        self.max_segments = max_segments
        self.reward_kind = reward
        self.n_features = int(self.essays[0].features.shape[1])
        self.observation_space = observation_space(max_segments, self.n_features)  # type: ignore[assignment]
        self.action_space = spaces.Discrete(N_ACTIONS)
        self._order: IntArray = np.zeros(0, dtype=np.int64)
        self._next = 0
        self._seg = self.essays[0]
        self._t = 0
        self._actions: IntArray = np.zeros(0, dtype=np.int64)
        self._features = np.zeros((max_segments, self.n_features), np.float32)
        self._mask = np.zeros(max_segments, np.int8)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Obs, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._order = np.zeros(0, dtype=np.int64)
        if options and "essay_index" in options:
            idx = int(options["essay_index"])
        else:
            if self._next >= self._order.size:
                self._order = self.np_random.permutation(len(self.essays)).astype(np.int64)
                self._next = 0
            idx = int(self._order[self._next])
            self._next += 1
        seg = self._seg = self.essays[idx]
        self._t = 0
        self._actions = np.zeros(seg.n_segments, dtype=np.int64)
        self._features = np.zeros((self.max_segments, self.n_features), np.float32)
        self._features[: seg.n_segments] = seg.features
        self._mask = np.zeros(self.max_segments, np.int8)
        self._mask[: seg.n_segments] = 1
        return self._obs(), {"essay_id": seg.essay_id}

    def _obs(self) -> Obs:
        pos = min(self._t, self._seg.n_segments - 1)
        # Fresh arrays each step: callers may keep (and modify) what they were given.
        return {
            "features": self._features.copy(),
            "mask": self._mask.copy(),
            "position": np.int64(pos),
        }

    def action_masks(self) -> npt.NDArray[np.bool_]:
        prev = int(self._actions[self._t - 1]) if self._t > 0 else -1
        return allowed_actions(prev)

    def step(self, action: np.int64 | int) -> tuple[Obs, float, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a < N_ACTIONS:
            raise ValueError(f"action {a} outside 0..{N_ACTIONS - 1}")
        if self._t >= self._seg.n_segments:
            raise RuntimeError("step() after the episode ended; call reset()")
        # A forbidden 'continues k' (only possible without masking) reads as 'begins k'.
        if not self.action_masks()[a]:
            a -= 1
        self._actions[self._t] = a
        self._t += 1
        if self._t < self._seg.n_segments:
            return self._obs(), 0.0, False, False, {}
        counts = essay_counts(self._seg, self._actions, self.gold[self._seg.essay_id])
        scores = {kind: fn(counts) for kind, fn in ESSAY_REWARDS.items()}
        info = {"essay_id": self._seg.essay_id, **scores}
        return self._obs(), scores[self.reward_kind], True, False, info
