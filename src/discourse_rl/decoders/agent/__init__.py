"""The attention agent over segments: policy, behavioural cloning, PPO and episode-level RL.

`decoder` registers its trainers' policies (bc, ppo, episode); `config` the settings
(`[agent]` and its parts), `policy` is the network, `bc`,
`ppo` and `episode` the trainers, `env` PPO's environment, `reward` the per-essay rewards."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from discourse_rl.decoders.agent.bc import train_bc
    from discourse_rl.decoders.agent.common import FineTuneInputs
    from discourse_rl.decoders.agent.config import AgentConfig
    from discourse_rl.decoders.agent.policy import AttentionPolicy, load_policy
    from discourse_rl.decoders.agent.ppo import train_ppo
    from discourse_rl.decoders.segments import EssaySegments

__all__ = [
    "AgentConfig",
    "AttentionPolicy",
    "FineTuneInputs",
    "load_policy",
    "predict_spans",
    "train_bc",
    "train_ppo",
]

_HOMES = {
    "train_bc": "bc",
    "AgentConfig": "config",
    "FineTuneInputs": "common",
    "AttentionPolicy": "policy",
    "load_policy": "policy",
    "train_ppo": "ppo",
}


def __getattr__(name: str) -> Any:
    # torch (and stable-baselines3 for PPO) load with these: `decoder` is imported without them.
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def predict_spans(policy_path: str | Path, segs: Sequence[EssaySegments]) -> pd.DataFrame:
    """Submission table (id, class, predictionstring, word_start, word_end) of a saved policy of
    either kind (an autoregressive one decodes with its previous-label head)."""
    # torch: the policy
    from discourse_rl.decoders.agent.policy import load_policy, predict_actions
    from discourse_rl.decoders.segments import spans_frame

    return spans_frame(segs, predict_actions(load_policy(policy_path), segs))
