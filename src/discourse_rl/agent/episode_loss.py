"""Sampling whole labellings under the action mask, and the episode-level loss.

Shapes: B essays, K labellings per essay, S segments (padded), A = 15 actions. A labelling's
mask at segment s depends only on its action at s - 1, so masks follow from the actions alone
and the log-probability of a sampled labelling is one gather over the logits of one pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from discourse_rl.segments import N_ACTIONS

# Finite, so masked entries give exp() == 0 and no inf * 0 in the backward pass.
MASKED = -1e9
StepLogits = Callable[[int, torch.Tensor], torch.Tensor]


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


@dataclass(frozen=True)
class LossParts:
    loss: torch.Tensor
    logp: torch.Tensor
    """(B, K) summed log-probability of each sampled labelling."""
    kl: torch.Tensor
    """Mean over labellings of the summed per-segment KL to the reference policy."""
    entropy: torch.Tensor
    """Mean over labellings of the summed per-segment entropy."""


def episode_loss(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    actions: torch.Tensor,
    amask: torch.Tensor,
    seg_mask: torch.Tensor,
    adv: torch.Tensor,
    *,
    kl_beta: float,
    ent_coef: float = 0.0,
    clip_range: float | None = None,
    old_logp: torch.Tensor | None = None,
) -> LossParts:
    """Policy-gradient loss of K labellings per essay, plus beta * KL - ent_coef * entropy.

    logits (B, K or 1, S, A) of the policy, ref_logits (B, 1, S, A) of the frozen reference,
    actions (B, K, S), amask (B, K, S, A), seg_mask (B, S), adv (B, K) (no gradient). Without
    `clip_range`: -mean(adv * log pi(labelling)). With it: PPO's clipped surrogate on the ratio
    pi / pi_old of whole labellings (`old_logp` (B, K); None = the current policy, ratio 1).
    """
    logp_all = torch.log_softmax(logits.masked_fill(~amask, MASKED), -1)
    live = seg_mask[:, None, :].to(logits.dtype)
    logp = (logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1) * live).sum(-1)
    adv = adv.detach()
    if clip_range is None:
        pg = -(adv * logp).mean()
    else:
        old = logp.detach() if old_logp is None else old_logp
        ratio = torch.exp(logp - old)
        clipped = ratio.clamp(1 - clip_range, 1 + clip_range)
        pg = -torch.minimum(ratio * adv, clipped * adv).mean()
    p = logp_all.exp()
    logq = torch.log_softmax(ref_logits.detach().masked_fill(~amask, MASKED), -1)
    kl_seg = torch.where(amask, p * (logp_all - logq), 0.0).sum(-1)
    ent_seg = -torch.where(amask, p * logp_all, 0.0).sum(-1)
    kl = (kl_seg * live).sum(-1).mean()
    entropy = (ent_seg * live).sum(-1).mean()
    loss = pg + kl_beta * kl - ent_coef * entropy
    return LossParts(loss, logp, kl, entropy)
