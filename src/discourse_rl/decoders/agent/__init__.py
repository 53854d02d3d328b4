"""The attention agent over segments: policy, behavioural cloning, PPO and episode-level RL."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from discourse_rl.decoders.agent.bc import train_bc
from discourse_rl.decoders.agent.common import AgentConfig, FineTuneInputs
from discourse_rl.decoders.agent.policy import AttentionPolicy, load_policy, predict_actions
from discourse_rl.decoders.segments import EssaySegments, spans_frame

if TYPE_CHECKING:
    from discourse_rl.decoders.agent.ppo import train_ppo

__all__ = [
    "AgentConfig",
    "AttentionPolicy",
    "FineTuneInputs",
    "load_policy",
    "predict_spans",
    "train_bc",
    "train_ppo",
]


def __getattr__(name: str) -> Any:
    # PPO imports the environment, which imports agent.reward (and so this package): loading
    # it on first use keeps `import discourse_rl.decoders.agent.env` free of an import cycle.
    if name == "train_ppo":
        from discourse_rl.decoders.agent.ppo import train_ppo

        return train_ppo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def predict_spans(policy_path: str | Path, segs: Sequence[EssaySegments]) -> pd.DataFrame:
    """Submission table (id, class, predictionstring, word_start, word_end) of a saved policy of
    either kind (an autoregressive one decodes with its previous-label head)."""
    return spans_frame(segs, predict_actions(load_policy(policy_path), segs))
