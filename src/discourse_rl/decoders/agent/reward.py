"""The agent's rewards and its KL penalty to the frozen BC policy (the one home of the KL).

The rewards themselves live in `core.rewards` (the tagger's RL phase uses them too) and are
re-exported here. Every reward starts from `metric.essay_counts` (TP, FP, FN per class of one
essay's labelling against its true spans), so the agent is rewarded by the metric it is scored
with:

- "f1": the essay's F-score (`metric.essay_f1`), the default of the step-wise environment;
- "jaccard": the seed's per-essay score TP / (TP + FP + FN) (`metric.essay_jaccard`);
- "macro": the essay's first-order contribution to the corpus macro F1 (`MacroReward`). It needs
  running class statistics over many labellings, so only the episode trainer offers it.

PPO (per step, `agent.ppo`) and the episode trainer (per labelling, `agent.episode_loss`) hold the
policy near the frozen BC policy with the same exact KL over the allowed actions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch

from discourse_rl.core import metric
from discourse_rl.core.arrays import IntArray, Spans
from discourse_rl.core.data import CLASSES
from discourse_rl.core.rewards import (  # the metric's rewards, re-exported for the agent
    ESSAY_REWARDS as ESSAY_REWARDS,
)
from discourse_rl.core.rewards import REWARDS as REWARDS
from discourse_rl.core.rewards import MacroReward as MacroReward
from discourse_rl.core.rewards import essay_reward as essay_reward
from discourse_rl.core.rewards import gold_table as gold_table
from discourse_rl.core.rewards import rewards as rewards
from discourse_rl.decoders.segments import EssaySegments, actions_to_spans


def essay_counts(seg: EssaySegments, actions: npt.ArrayLike, gold: Spans) -> IntArray:
    """(7, 3) TP/FP/FN per class of one essay's segment actions."""
    return metric.essay_counts(*actions_to_spans(seg, actions), *gold)


def labelling_counts(
    segs: Sequence[EssaySegments], actions: IntArray, gold: Mapping[str, Spans]
) -> IntArray:
    """(B, K, 7, 3) TP/FP/FN of K labellings (B, K, S) of each of B essays (padding ignored)."""
    out = np.zeros((*actions.shape[:2], len(CLASSES), 3), np.int64)
    for i, seg in enumerate(segs):
        for k in range(actions.shape[1]):
            out[i, k] = essay_counts(seg, actions[i, k, : seg.n_segments], gold[seg.essay_id])
    return out


def kl_to_reference(
    logp: torch.Tensor,
    logq: torch.Tensor,
    allowed: torch.Tensor,
    p: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(policy || reference) per row over the allowed actions.

    `logp`, `logq` (..., A) are normalised log-probabilities under the same mask `allowed`
    (masked entries very negative but finite); `p` is exp(logp) where the caller has it already
    (sharing it keeps the autograd graph, and so the gradients, exactly as they were).
    """
    if p is None:
        p = logp.exp()
    return torch.where(allowed, p * (logp - logq), 0.0).sum(-1)
