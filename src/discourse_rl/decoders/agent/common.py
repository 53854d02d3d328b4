"""Padded batches of essays, and labellings under the action mask.

Shapes: B essays, K labellings per essay, S segments (padded), A = 15 actions. A labelling's
mask at segment s depends only on its action at s - 1, so masks follow from the actions alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from discourse_rl.core.common import torch_threads as torch_threads  # its home is common
from discourse_rl.core.data import Corpus
from discourse_rl.decoders.segments import N_ACTIONS, EssaySegments, action_masks

StepLogits = Callable[[int, torch.Tensor], torch.Tensor]


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
