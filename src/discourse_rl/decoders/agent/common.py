"""The agent's configuration, padded batches of essays, and labellings under the action mask.

Shapes: B essays, K labellings per essay, S segments (padded), A = 15 actions. A labelling's
mask at segment s depends only on its action at s - 1, so masks follow from the actions alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import numpy.typing as npt
import torch

from discourse_rl.core import rules
from discourse_rl.core.common import torch_threads as torch_threads  # its home is common
from discourse_rl.core.data import Corpus
from discourse_rl.decoders.segments import N_ACTIONS, EssaySegments, action_masks

StepLogits = Callable[[int, torch.Tensor], torch.Tensor]
EssayReward = Literal["f1", "jaccard"]
"""Rewards of one essay alone (`agent.reward.ESSAY_REWARDS`)."""


@dataclass(frozen=True)
class AgentConfig:
    """The attention policy, its behavioural cloning and its PPO fine-tuning."""

    RUNTIME: ClassVar[frozenset[str]] = frozenset({"progress_bar", "torch_threads"})
    """How the trainers run, not what they compute: left out of the step's key."""

    seed: int = 0
    """Seed for weights, essay order and action sampling (same seed, same result on CPU); a
    run sets it from `agent_seeds`, and a run config may not set it."""
    max_essays: int = 0
    """PPO (SB3) learns from a seeded subset of this many training essays (0 = all of them);
    BC and the episode trainer always learn from every training essay."""
    sim_noise: float = 0.5
    """Noise of simulated word probabilities (train-agent --simulate)."""
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
    val_fraction: float = 0.1
    """Share of the training essays kept aside to pick the best BC epoch and PPO checkpoint."""
    bc_epochs: int = 15
    """Passes over the training essays in behavioural cloning."""
    bc_batch_essays: int = 32
    """Essays per cloning batch."""
    bc_lr: float = 1e-3
    """Adam learning rate for cloning."""
    bc_weight_decay: float = 0.01
    """AdamW weight decay for cloning."""
    bc_class_weight: float = 0.0
    """Cloning loss weight per action = frequency ** -this (0 = unweighted, 1 = inverse)."""
    ppo_timesteps: int = 200_000
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
    ppo_lr: float = 3e-5
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
    progress_bar: bool = True
    """Show progress bars."""
    torch_threads: int = 1
    """CPU threads for torch while training (0 = leave torch's setting; tiny models: one thread
    is fastest, above all on a shared machine, where more threads wait on each other)."""

    def __post_init__(self) -> None:
        rules.check_fields(self, _AGENT_RULES)
        if self.d_model % self.n_heads:
            raise rules.ConfigValueError(
                "n_heads", self.n_heads, f"must divide d_model (d_model = {self.d_model})"
            )


_AGENT_RULES = {
    "seed": rules.non_negative,
    "max_essays": rules.non_negative,
    "sim_noise": rules.non_negative,
    "max_segments": rules.positive,
    "d_model": rules.positive,
    "n_heads": rules.positive,
    "n_layers": rules.positive,
    "dim_feedforward": rules.positive,
    "dropout": rules.below_one,
    "val_fraction": rules.below_one,
    "bc_epochs": rules.positive,
    "bc_batch_essays": rules.positive,
    "bc_lr": rules.positive,
    "bc_weight_decay": rules.non_negative,
    "bc_class_weight": rules.non_negative,
    "ppo_timesteps": rules.non_negative,
    "value_warmup_steps": rules.non_negative,
    "value_warmup_lr": rules.positive,
    "n_envs": rules.positive,
    "n_steps": rules.at_least(2),
    "batch_size": rules.at_least(2),
    "n_epochs": rules.positive,
    "ppo_lr": rules.positive,
    "clip_range": rules.positive,
    "gae_lambda": rules.probability,
    "ent_coef": rules.non_negative,
    "vf_coef": rules.non_negative,
    "kl_beta": rules.non_negative,
    "kl_target": rules.non_negative,
    "eval_every": rules.positive,
    "torch_threads": rules.non_negative,
}


def tensorboard_writer(log_dir: str | Path | None) -> Any:
    """A TensorBoard SummaryWriter for `log_dir`, or None without one."""
    if log_dir is None:
        return None
    # tensorboard: only when a log folder is asked for
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


@dataclass(frozen=True)
class Batch:
    features: torch.Tensor
    """(B, S, F) float32, zero beyond each essay's segments."""
    mask: torch.Tensor
    """(B, S) bool, True on real segments."""
    gold: torch.Tensor | None
    """(B, S) int64 gold actions, -100 on padding."""
    action_mask: torch.Tensor | None
    """(B, S, 15) bool masks under the gold history (teacher forcing)."""


def pad_batch(segs: Sequence[EssaySegments], with_gold: bool = False) -> Batch:
    """Pad essays to the longest one in the batch."""
    n = max(s.n_segments for s in segs)
    n_feat = segs[0].features.shape[1]
    feats = np.zeros((len(segs), n, n_feat), np.float32)
    mask = np.zeros((len(segs), n), np.bool_)
    gold = np.full((len(segs), n), -100, np.int64)
    amask = np.ones((len(segs), n, N_ACTIONS), np.bool_)
    for i, s in enumerate(segs):
        feats[i, : s.n_segments] = s.features
        mask[i, : s.n_segments] = True
        if with_gold:
            if s.gold_action is None:
                raise ValueError(f"{s.essay_id}: no gold actions to clone")
            gold[i, : s.n_segments] = s.gold_action
            amask[i, : s.n_segments] = action_masks(s.gold_action)
    return Batch(
        torch.from_numpy(feats),
        torch.from_numpy(mask),
        torch.from_numpy(gold) if with_gold else None,
        torch.from_numpy(amask) if with_gold else None,
    )


def batches(
    segs: Sequence[EssaySegments], size: int = 64
) -> Iterator[tuple[Sequence[EssaySegments], Batch]]:
    """(essays, padded batch) in order, `size` essays at a time (no gold)."""
    for k in range(0, len(segs), size):
        chunk = segs[k : k + size]
        yield chunk, pad_batch(chunk)


def unpad(rows: torch.Tensor, chunk: Sequence[EssaySegments]) -> list[npt.NDArray[Any]]:
    """Each essay's own segments of a padded (B, S, ...) tensor, as numpy arrays."""
    return [rows[i, : s.n_segments].numpy() for i, s in enumerate(chunk)]


def split_validation(
    segs: Sequence[EssaySegments], fraction: float, seed: int
) -> tuple[list[EssaySegments], list[EssaySegments]]:
    """(train, validation) by a seeded shuffle; validation is empty when fraction is 0."""
    order = np.random.default_rng(seed).permutation(len(segs))
    n_val = round(len(segs) * fraction) if fraction > 0 else 0
    n_val = min(n_val, len(segs) - 1)
    val = sorted(order[:n_val].tolist())
    train = sorted(order[n_val:].tolist())
    return [segs[i] for i in train], [segs[i] for i in val]


@dataclass(frozen=True)
class FineTuneInputs:
    """What PPO and the episode trainer both start from: each fine-tunes a BC policy on the
    training essays and keeps its best checkpoint on the validation essays."""

    train_segs: Sequence[EssaySegments]
    """The essays trained on."""
    corpus: Corpus
    """Their gold spans (the reward) and the validation essays'."""
    bc_path: Path
    """The BC policy fine-tuned (also the frozen reference of the KL penalty)."""
    out_dir: Path
    """Where the trainer writes its checkpoints, config and history."""
    val_segs: Sequence[EssaySegments] = ()
    """Essays scored at each evaluation; the best checkpoint is kept (none: the last one)."""
    tb_dir: Path | None = None
    """TensorBoard log folder (None: no log)."""


# ---------------------------------------------------------------------------------------------
# Labellings under the action mask


def masks_after(prev: torch.Tensor) -> torch.Tensor:
    """(..., A) allowed actions after actions `prev` (-1 = first segment): 'none', any
    'begins k', and 'continues k' only right after a class-k action (as `allowed_actions`)."""
    base = torch.ones(N_ACTIONS, dtype=torch.bool)
    base[2::2] = False
    out = base.expand(*prev.shape, N_ACTIONS).clone()
    cont = (2 + 2 * torch.div(prev - 1, 2, rounding_mode="floor")).clamp(min=2).unsqueeze(-1)
    out.scatter_(-1, cont, (prev > 0).unsqueeze(-1))
    return out


def labelling_masks(actions: torch.Tensor) -> torch.Tensor:
    """(..., S, A) masks each segment had given the labelling `actions` (..., S)."""
    prev = torch.cat([torch.full_like(actions[..., :1], -1), actions[..., :-1]], dim=-1)
    return masks_after(prev)


@torch.no_grad()
def sample_labellings(
    logits: torch.Tensor,
    mask: torch.Tensor,
    k: int,
    gen: torch.Generator | None,
    step_logits: StepLogits | None = None,
) -> torch.Tensor:
    """(B, K, S) labellings drawn from (B, S, A) logits under the action mask; 0 on padding.

    Gumbel-max sampling, segment by segment because of the mask; `gen` None gives the greedy
    labelling (K copies). `step_logits(s, prev)` -> (B, K, A) adds logits that depend on the
    previous actions `prev` (B, K) (the autoregressive head).
    """
    b, s, _ = logits.shape
    if gen is None:
        noise = torch.zeros(b, k, s, N_ACTIONS)
    else:
        u = torch.rand(b, k, s, N_ACTIONS, generator=gen).clamp_(1e-12, 1.0 - 1e-7)
        noise = -torch.log(-torch.log(u))
    out = torch.zeros(b, k, s, dtype=torch.int64)
    prev = torch.full((b, k), -1, dtype=torch.int64)
    lg = logits.detach().float()
    for t in range(s):
        scores = lg[:, None, t] + noise[:, :, t]
        if step_logits is not None:
            scores = scores + step_logits(t, prev).detach()
        a = scores.masked_fill(~masks_after(prev), -torch.inf).argmax(-1)
        a = torch.where(mask[:, t, None], a, 0)
        out[:, :, t] = a
        prev = a
    return out
