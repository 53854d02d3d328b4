"""The episode-level loss of whole sampled labellings.

Shapes: B essays, K labellings per essay, S segments (padded), A = 15 actions. A labelling's
masks follow from its actions alone (`common.labelling_masks`), so the log-probability of a
sampled labelling is one gather over the logits of one pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from discourse_rl.decoders.agent.reward import kl_to_reference

# Finite, so masked entries give exp() == 0 and no inf * 0 in the backward pass.
MASKED = -1e9


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
    kl_seg = kl_to_reference(logp_all, logq, amask, p)
    ent_seg = -torch.where(amask, p * logp_all, 0.0).sum(-1)
    kl = (kl_seg * live).sum(-1).mean()
    entropy = (ent_seg * live).sum(-1).mean()
    loss = pg + kl_beta * kl - ent_coef * entropy
    return LossParts(loss, logp, kl, entropy)
