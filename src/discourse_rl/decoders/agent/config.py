"""The agent's settings: `[agent]` (general and runtime settings) and its parts `[agent.network]`
(the policy's architecture), `[agent.bc]` (behavioural cloning) and `[agent.ppo]` (PPO).

The agent step's key hashes these settings under their old flat names (`FLAT_NAMES`), the
names of the single table they once were, so that splitting the table retrains nothing; a
config file may still give them flat (`[agent] bc_epochs = 5`), `run.config` converts them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import ClassVar, Literal

from discourse_rl.core import rules

EssayReward = Literal["f1", "jaccard"]
"""Rewards of one essay alone (`agent.reward.ESSAY_REWARDS`)."""


@dataclass(frozen=True)
class NetworkConfig:
    """The attention policy's architecture (`[agent.network]`)."""

    max_segments: int = 96
    """Padded segment rows per observation; must be at least the segments' max_segments."""
    d_model: int = 64
    """Width of the segment encoder."""
    n_heads: int = 4
    """Attention heads per layer."""
    n_layers: int = 2
    """Transformer encoder layers."""
    dim_feedforward: int = 128
    """Hidden width of each layer's feed-forward block."""
    dropout: float = 0.1
    """Dropout while cloning (PPO runs without it, so its probability ratios stay exact)."""

    def __post_init__(self) -> None:
        rules.check_fields(
            self,
            {
                "max_segments": rules.positive,
                "d_model": rules.positive,
                "n_heads": rules.positive,
                "n_layers": rules.positive,
                "dim_feedforward": rules.positive,
                "dropout": rules.below_one,
            },
        )
        if self.d_model % self.n_heads:
            raise rules.ConfigValueError(
                "n_heads", self.n_heads, f"must divide d_model (d_model = {self.d_model})"
            )


@dataclass(frozen=True)
class BcConfig:
    """Behavioural cloning of the gold actions (`[agent.bc]`)."""

    epochs: int = 15
    """Passes over the training essays in behavioural cloning."""
    batch_essays: int = 32
    """Essays per cloning batch."""
    lr: float = 1e-3
    """Adam learning rate for cloning."""
    weight_decay: float = 0.01
    """AdamW weight decay for cloning."""
    class_weight: float = 0.0
    """Cloning loss weight per action = frequency ** -this (0 = unweighted, 1 = inverse)."""

    def __post_init__(self) -> None:
        rules.check_fields(
            self,
            {
                "epochs": rules.positive,
                "batch_essays": rules.positive,
                "lr": rules.positive,
                "weight_decay": rules.non_negative,
                "class_weight": rules.non_negative,
            },
        )


@dataclass(frozen=True)
class PpoConfig:
    """PPO fine-tuning of the cloned policy (`[agent.ppo]`)."""

    timesteps: int = 200_000
    """Environment steps of PPO after the value warm-up."""
    value_warmup_steps: int = 20_000
    """Steps of PPO that train only the value head first (cloning leaves it untrained)."""
    value_warmup_lr: float = 1e-3
    """Learning rate of the value warm-up."""
    n_envs: int = 8
    """Environments stepped together (one batched policy forward per step)."""
    n_steps: int = 256
    """Steps per environment per rollout."""
    batch_size: int = 256
    """PPO minibatch size."""
    n_epochs: int = 4
    """PPO passes over each rollout."""
    lr: float = 3e-5
    """PPO Adam learning rate."""
    clip_range: float = 0.2
    """PPO ratio clipping."""
    gae_lambda: float = 0.95
    """GAE lambda (gamma is fixed at 1: the reward is the essay's score at its end)."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    kl_beta: float = 0.02
    """Initial weight of the per-step KL penalty to the frozen BC policy."""
    kl_target: float = 0.0
    """Target KL per step for the adaptive beta; 0 keeps beta fixed."""
    reward: EssayReward = "f1"
    """Essay reward: 'f1' (the metric's F-score) or 'jaccard' (the seed's TP/(TP+FP+FN))."""
    eval_every: int = 5
    """Rollouts between held-out evaluations and checkpoints."""

    def __post_init__(self) -> None:
        rules.check_fields(
            self,
            {
                "timesteps": rules.non_negative,
                "value_warmup_steps": rules.non_negative,
                "value_warmup_lr": rules.positive,
                "n_envs": rules.positive,
                "n_steps": rules.at_least(2),
                "batch_size": rules.at_least(2),
                "n_epochs": rules.positive,
                "lr": rules.positive,
                "clip_range": rules.positive,
                "gae_lambda": rules.probability,
                "ent_coef": rules.non_negative,
                "vf_coef": rules.non_negative,
                "kl_beta": rules.non_negative,
                "kl_target": rules.non_negative,
                "eval_every": rules.positive,
            },
        )


def _flat_names() -> dict[str, tuple[str, str]]:
    """Old flat name -> (part, name in it): every field of the parts; BC's names had the
    prefix `bc_`, PPO's `timesteps` and `lr` the prefix `ppo_`."""
    out: dict[str, tuple[str, str]] = {}
    for f in fields(NetworkConfig):
        out[f.name] = ("network", f.name)
    for f in fields(BcConfig):
        out[f"bc_{f.name}"] = ("bc", f.name)
    for f in fields(PpoConfig):
        out[f"ppo_{f.name}" if f.name in ("timesteps", "lr") else f.name] = ("ppo", f.name)
    return out


@dataclass(frozen=True)
class AgentConfig:
    """The attention policy, its behavioural cloning and its PPO fine-tuning (`[agent]`)."""

    RUNTIME: ClassVar[frozenset[str]] = frozenset({"progress_bar", "torch_threads"})
    """How the trainers run, not what they compute: left out of the step's key."""
    FLAT_NAMES: ClassVar[Mapping[str, tuple[str, str]]] = _flat_names()
    """The parts' settings by their names in the flat `[agent]` table they once were (old
    name -> (part, name)): config files may still use them, and keys hash under them."""

    seed: int = 0
    """Seed for weights, essay order and action sampling (same seed, same result on CPU); a
    run sets it from `agent_seeds`, and a run config may not set it."""
    max_essays: int = 0
    """PPO (SB3) learns from a seeded subset of this many training essays (0 = all of them);
    BC and the episode trainer always learn from every training essay."""
    sim_noise: float = 0.5
    """Noise of simulated word probabilities (train-agent --simulate)."""
    val_fraction: float = 0.1
    """Share of the training essays kept aside to pick the best BC epoch and PPO checkpoint."""
    progress_bar: bool = True
    """Show progress bars."""
    torch_threads: int = 1
    """CPU threads for torch while training (0 = leave torch's setting; tiny models: one thread
    is fastest, above all on a shared machine, where more threads wait on each other)."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    """The policy's architecture (`[agent.network]`)."""
    bc: BcConfig = field(default_factory=BcConfig)
    """Behavioural cloning (`[agent.bc]`)."""
    ppo: PpoConfig = field(default_factory=PpoConfig)
    """PPO fine-tuning (`[agent.ppo]`)."""

    def __post_init__(self) -> None:
        rules.check_fields(
            self,
            {
                "seed": rules.non_negative,
                "max_essays": rules.non_negative,
                "sim_noise": rules.non_negative,
                "val_fraction": rules.below_one,
                "torch_threads": rules.non_negative,
            },
        )
