"""The attention policy: a small transformer encoder over an essay's segments.

One module, two faces. From plain PyTorch, `AttentionPolicy.encode(features, mask)` returns every
segment's action logits and value in one pass (cloning and fast decoding use it). For
stable-baselines3, the same module is a `MaskableActorCriticPolicy`: the features extractor runs
the encoder and picks the output row of the segment being labelled, and the policy's own
`action_net` / `value_net` heads (shared with `encode`) turn it into logits and a value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from gymnasium import spaces
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from discourse_rl import metric
from discourse_rl.agent.common import AgentConfig, pad_batch
from discourse_rl.common import DiscourseRLError, atomic_save
from discourse_rl.data import Corpus
from discourse_rl.env import observation_space
from discourse_rl.segments import (
    N_ACTIONS,
    EssaySegments,
    allowed_actions,
    gold_frame,
    spans_frame,
)

IntArray = npt.NDArray[np.int64]


class SegmentEncoder(nn.Module):
    """Segment features plus a learned position embedding, through masked self-attention."""

    def __init__(
        self,
        n_features: int,
        max_segments: int,
        d_model: int,
        n_heads: int,
        n_layers: int,
        dim_feedforward: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.inp = nn.Sequential(nn.Linear(n_features, d_model), nn.LayerNorm(d_model))
        self.pos = nn.Embedding(max_segments, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, dim_feedforward, dropout, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S, F) features, (B, S) bool mask -> (B, S, d_model)."""
        idx = torch.arange(features.shape[1], device=features.device)
        h = self.inp(features) + self.pos(idx)[None]
        h = self.layers(h, src_key_padding_mask=~mask)
        out: torch.Tensor = self.norm(h)
        return out


class SegmentExtractor(BaseFeaturesExtractor):
    """SB3 features extractor: the encoder's output at the observation's current segment."""

    def __init__(
        self,
        observation_space: spaces.Dict,
        d_model: int = 64,
        n_heads: int = 4,
        n_layers: int = 2,
        dim_feedforward: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(observation_space, features_dim=d_model)
        max_segments, n_features = observation_space["features"].shape  # type: ignore[misc]
        self.encoder = SegmentEncoder(
            n_features, max_segments, d_model, n_heads, n_layers, dim_feedforward, dropout
        )

    def forward(self, observations: dict[str, torch.Tensor]) -> torch.Tensor:  # type: ignore[override]
        mask = observations["mask"] > 0.5
        # SB3 hands a Discrete observation over one-hot encoded.
        pos = observations["position"].flatten(1).argmax(1)
        # Attention needs only the longest essay in the batch, not the full padding.
        n = int(max(int(mask.sum(1).max()), int(pos.max()) + 1))
        h = self.encoder(observations["features"][:, :n], mask[:, :n])
        out: torch.Tensor = h[torch.arange(h.shape[0], device=h.device), pos]
        return out


class AttentionPolicy(MaskableActorCriticPolicy):
    """MaskablePPO policy over segment observations; `encode` is its one-pass face."""

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        lr_schedule: Any,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("net_arch", [])
        kwargs.setdefault("ortho_init", False)
        kwargs.setdefault("features_extractor_class", SegmentExtractor)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    @property
    def encoder(self) -> SegmentEncoder:
        enc = self.features_extractor.encoder
        assert isinstance(enc, SegmentEncoder)
        return enc

    def encode(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-segment action logits (B, S, 15) and values (B, S) in one pass."""
        h = self.encoder(features, mask)
        return self.action_net(h), self.value_net(h).squeeze(-1)


def arch_kwargs(cfg: AgentConfig, dropout: float) -> dict[str, Any]:
    return {
        "features_extractor_kwargs": {
            "d_model": cfg.d_model,
            "n_heads": cfg.n_heads,
            "n_layers": cfg.n_layers,
            "dim_feedforward": cfg.dim_feedforward,
            "dropout": dropout,
        }
    }


def make_policy(cfg: AgentConfig, n_features: int, dropout: float = 0.0) -> AttentionPolicy:
    torch.manual_seed(cfg.seed)
    return AttentionPolicy(
        observation_space(cfg.max_segments, n_features),
        spaces.Discrete(N_ACTIONS),
        lambda _: cfg.ppo_lr,
        **arch_kwargs(cfg, dropout),
    )


def set_dropout(module: nn.Module, p: float) -> None:
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        elif isinstance(m, nn.MultiheadAttention):
            m.dropout = p


# ---------------------------------------------------------------------------------------------
# Saving


def save_policy(policy: AttentionPolicy, path: str | Path, cfg: AgentConfig) -> None:
    n_features = policy.observation_space["features"].shape[1]  # type: ignore[index]
    blob = {
        "state_dict": policy.state_dict(),
        "n_features": int(n_features),
        "arch": {
            f: getattr(cfg, f)
            for f in ("max_segments", "d_model", "n_heads", "n_layers", "dim_feedforward")
        },
    }
    atomic_save(path, lambda tmp: torch.save(blob, tmp))


def load_policy(path: str | Path) -> AttentionPolicy:
    """A saved policy, in eval mode, without dropout."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DiscourseRLError(f"{path}: policy not found") from None
    except (RuntimeError, OSError, ValueError) as exc:
        raise DiscourseRLError(f"{path}: not a policy file ({exc})") from None
    cfg = AgentConfig(**blob["arch"])
    policy = make_policy(cfg, int(blob["n_features"]))
    policy.load_state_dict(blob["state_dict"])
    policy.set_training_mode(False)
    return policy


# ---------------------------------------------------------------------------------------------
# Decoding


def masked_greedy(logits: npt.NDArray[np.floating]) -> IntArray:
    """Most probable allowed action per segment, in order (the mask depends on the previous)."""
    out = np.zeros(logits.shape[0], dtype=np.int64)
    prev = -1
    for i, row in enumerate(logits):
        prev = int(np.argmax(np.where(allowed_actions(prev), row, -np.inf)))
        out[i] = prev
    return out


@torch.no_grad()
def segment_logits(
    policy: AttentionPolicy, segs: Sequence[EssaySegments], batch: int = 64
) -> list[npt.NDArray[np.float32]]:
    was_training = policy.training
    policy.set_training_mode(False)
    out: list[npt.NDArray[np.float32]] = []
    for k in range(0, len(segs), batch):
        chunk = segs[k : k + batch]
        b = pad_batch(chunk)
        logits, _ = policy.encode(b.features, b.mask)
        out += [logits[i, : s.n_segments].numpy() for i, s in enumerate(chunk)]
    policy.set_training_mode(was_training)
    return out


def predict_actions(policy: AttentionPolicy, segs: Sequence[EssaySegments]) -> list[IntArray]:
    """Deterministic actions: the same as stepping the environment with argmax actions."""
    return [masked_greedy(lg) for lg in segment_logits(policy, segs)]


def score_policy(
    policy: AttentionPolicy, segs: Sequence[EssaySegments], corpus: Corpus
) -> metric.Score:
    """Macro F1 of the policy's deterministic labelling of `segs` against the true elements."""
    pred = spans_frame(segs, predict_actions(policy, segs))
    return metric.score(pred, gold_frame(corpus, [s.essay_id for s in segs]))
