"""The attention agent over segments: policy, behavioural cloning, PPO with a KL penalty."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from discourse_rl.agent.bc import train_bc
from discourse_rl.agent.common import AgentConfig
from discourse_rl.agent.policy import AttentionPolicy, load_policy, predict_actions
from discourse_rl.agent.ppo import train_ppo
from discourse_rl.segments import EssaySegments, spans_frame

__all__ = [
    "AgentConfig",
    "AttentionPolicy",
    "load_policy",
    "predict_spans",
    "train_bc",
    "train_ppo",
]


def predict_spans(policy_path: str | Path, segs: Sequence[EssaySegments]) -> pd.DataFrame:
    """Submission table (id, class, predictionstring, word_start, word_end) of a saved policy."""
    return spans_frame(segs, predict_actions(load_policy(policy_path), segs))
