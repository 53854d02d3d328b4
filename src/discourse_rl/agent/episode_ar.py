"""The autoregressive variant: each segment's decision also sees the previous segment's label.

A small head adds logits computed from the segment's encoding and the label just given to the
segment before it. Its last layer starts at zero, so training starts exactly at the BC policy.
Sampling stays one encoder pass per essay; only this head runs segment by segment, and a
sampled labelling's log-probability is still one pass (teacher-forced on its own actions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from discourse_rl.agent.common import AgentConfig, pad_batch
from discourse_rl.agent.episode_loss import StepLogits, sample_labellings
from discourse_rl.agent.policy import AttentionPolicy, make_policy
from discourse_rl.common import DiscourseRLError, atomic_save
from discourse_rl.segments import N_ACTIONS, EssaySegments

IntArray = npt.NDArray[np.int64]
ARCH_FIELDS = ("max_segments", "d_model", "n_heads", "n_layers", "dim_feedforward")


class PrevLabelHead(nn.Module):
    """Extra logits from (segment encoding, previous label); zero at initialisation."""

    def __init__(self, d_model: int, hidden: int = 64) -> None:
        super().__init__()
        self.d_model = d_model
        self.prev = nn.Embedding(N_ACTIONS + 1, d_model)  # index 0: before the first segment
        self.mlp = nn.Sequential(
            nn.Linear(2 * d_model, hidden), nn.Tanh(), nn.Linear(hidden, N_ACTIONS)
        )
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, h: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """(..., d) encodings and (...) previous actions (-1 = none yet) -> (..., A)."""
        out: torch.Tensor = self.mlp(torch.cat([h, self.prev(prev + 1)], dim=-1))
        return out

    def teacher_forced(self, h: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """(B, K, S, A) extra logits of labellings `actions` (B, K, S) over encodings (B, S, d)."""
        prev = torch.cat([torch.full_like(actions[..., :1], -1), actions[..., :-1]], dim=-1)
        out: torch.Tensor = self(h[:, None].expand(-1, actions.shape[1], -1, -1), prev)
        return out

    def step_fn(self, h: torch.Tensor) -> StepLogits:
        def step(t: int, prev: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self(h[:, None, t].expand(-1, prev.shape[1], -1), prev)
            return out

        return step


def greedy_ar(
    head: PrevLabelHead, h: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor
) -> IntArray:
    """(B, S) greedy labelling with the head's logits added segment by segment."""
    out: IntArray = sample_labellings(logits, mask, 1, None, head.step_fn(h))[:, 0].numpy()
    return out


def save_ar(policy: AttentionPolicy, head: PrevLabelHead, path: Path, arch: AgentConfig) -> None:
    n_features = policy.observation_space["features"].shape[1]  # type: ignore[index]
    blob = {
        "state_dict": policy.state_dict(),
        "n_features": int(n_features),
        "arch": {f: getattr(arch, f) for f in ARCH_FIELDS},
        "head": head.state_dict(),
    }
    atomic_save(path, lambda tmp: torch.save(blob, tmp))


def load_ar(path: str | Path) -> tuple[AttentionPolicy, PrevLabelHead]:
    """A policy and head saved by the autoregressive trainer, in eval mode."""
    path = Path(path)
    try:
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DiscourseRLError(f"{path}: policy not found") from None
    except (RuntimeError, OSError, ValueError) as exc:
        raise DiscourseRLError(f"{path}: not a policy file ({exc})") from None
    if "head" not in blob:
        raise DiscourseRLError(f"{path}: not an autoregressive policy (no head)")
    policy = make_policy(AgentConfig(**blob["arch"]), int(blob["n_features"]))
    policy.load_state_dict(blob["state_dict"])
    policy.set_training_mode(False)
    head = PrevLabelHead(int(blob["arch"]["d_model"]))
    head.load_state_dict(blob["head"])
    head.eval()
    return policy, head


@torch.no_grad()
def predict_actions_ar(path: str | Path, segs: Sequence[EssaySegments]) -> list[IntArray]:
    """Greedy labellings of `segs` by a saved autoregressive policy."""
    policy, head = load_ar(path)
    out: list[IntArray] = []
    for k in range(0, len(segs), 64):
        chunk = segs[k : k + 64]
        b = pad_batch(chunk)
        h = policy.encoder(b.features, b.mask)
        g = greedy_ar(head, h, policy.action_net(h), b.mask)
        out += [g[i, : s.n_segments] for i, s in enumerate(chunk)]
    return out
