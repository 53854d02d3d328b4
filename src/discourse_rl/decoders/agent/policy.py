"""The attention policy: a small transformer encoder over an essay's segments, and its heads.

`AttentionPolicy` is a plain `nn.Module`: `encode(features, mask)` returns every segment's action
logits and value in one pass (the agent never sees its own earlier actions, so one pass serves a
whole essay). The "autoregressive" kind adds `PrevLabelHead`, whose logits also see the label
given to the segment before; decoding then runs that head segment by segment. BC and the episode
trainer train this module directly; PPO wraps it for stable-baselines3 (`agent.ppo`).

A checkpoint holds the policy's `PolicyConfig` beside its weights, so `load_policy` rebuilds any
saved policy, of either kind, from the file alone.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from discourse_rl.core import artefacts, metric
from discourse_rl.core.arrays import IntArray
from discourse_rl.core.common import DiscourseRLError, atomic_open, atomic_save
from discourse_rl.core.data import Corpus
from discourse_rl.decoders.agent.common import (
    StepLogits,
    batches,
    sample_labellings,
    unpad,
)
from discourse_rl.decoders.agent.config import AgentConfig, NetworkConfig
from discourse_rl.decoders.segments import (
    N_ACTIONS,
    EssaySegments,
    allowed_actions,
    gold_frame,
    spans_frame,
)

KINDS = ("plain", "autoregressive")
CHECKPOINT_FORMAT = 2
"""Version of the checkpoint layout; 1 (no config, SB3 parameter names) is no longer read."""


@dataclass(frozen=True)
class PolicyConfig:
    """The architecture of a policy, all its checkpoint needs to rebuild it: the features per
    segment, `NetworkConfig`'s fields of the same names, and the policy's kind."""

    n_features: int
    max_segments: int
    d_model: int
    n_heads: int
    n_layers: int
    dim_feedforward: int
    kind: str = "plain"
    """'plain' or 'autoregressive' (with the previous-label head)."""
    head_hidden: int = 64
    """Hidden width of the previous-label head."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @classmethod
    def of(cls, net: NetworkConfig, n_features: int) -> PolicyConfig:
        """The plain policy an agent's `[agent.network]` describes."""
        arch = (net.max_segments, net.d_model, net.n_heads, net.n_layers, net.dim_feedforward)
        return cls(n_features, *arch)


class SegmentEncoder(nn.Module):
    """Segment features plus a learned position embedding, through masked self-attention."""

    def __init__(self, config: PolicyConfig, dropout: float) -> None:
        super().__init__()
        d_model = config.d_model
        self.inp = nn.Sequential(nn.Linear(config.n_features, d_model), nn.LayerNorm(d_model))
        self.pos = nn.Embedding(config.max_segments, d_model)
        layer = nn.TransformerEncoderLayer(
            d_model,
            config.n_heads,
            config.dim_feedforward,
            dropout,
            batch_first=True,
            norm_first=True,
        )
        self.layers = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S, F) features, (B, S) bool mask -> (B, S, d_model)."""
        idx = torch.arange(features.shape[1], device=features.device)
        h = self.inp(features) + self.pos(idx)[None]
        h = self.layers(h, src_key_padding_mask=~mask)
        out: torch.Tensor = self.norm(h)
        return out


class PrevLabelHead(nn.Module):
    """Extra logits from (segment encoding, previous label); zero at initialisation, so a policy
    that gains the head starts exactly where it was."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
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


class AttentionPolicy(nn.Module):
    """Segment encoder, action and value heads, and (autoregressive kind) the previous-label head.

    Parameters are created in the order encoder, action head, value head: the order the SB3 policy
    of earlier versions drew them in, so the same seed gives the same initial weights.
    """

    head: PrevLabelHead | None

    def __init__(self, config: PolicyConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.encoder = SegmentEncoder(config, dropout)
        self.action_net = nn.Linear(config.d_model, N_ACTIONS)
        self.value_net = nn.Linear(config.d_model, 1)
        self.head = None
        if config.kind == "autoregressive":
            self.add_head()

    def add_head(self) -> None:
        """Make this an autoregressive policy (its new head adds nothing yet)."""
        self.head = PrevLabelHead(self.config.d_model, self.config.head_hidden)
        self.config = dataclasses.replace(self.config, kind="autoregressive")

    def hidden_and_logits(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encodings (B, S, d) and per-segment action logits (B, S, 15), without the head."""
        h = self.encoder(features, mask)
        return h, self.action_net(h)

    def encode(
        self, features: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-segment action logits (B, S, 15), without the head, and values (B, S)."""
        h = self.encoder(features, mask)
        return self.action_net(h), self.value_net(h).squeeze(-1)

    def labellings(
        self,
        h: torch.Tensor,
        logits: torch.Tensor,
        mask: torch.Tensor,
        k: int,
        gen: torch.Generator | None,
    ) -> torch.Tensor:
        """(B, K, S) labellings sampled under the mask, with the head if any; greedy (K copies)
        when `gen` is None."""
        step = None if self.head is None else self.head.step_fn(h)
        return sample_labellings(logits, mask, k, gen, step_logits=step)

    def labelling_logits(
        self, h: torch.Tensor, logits: torch.Tensor, actions: torch.Tensor
    ) -> torch.Tensor:
        """(B, K or 1, S, A) logits each segment of the labellings `actions` (B, K, S) had."""
        if self.head is None:
            return logits[:, None]
        return logits[:, None] + self.head.teacher_forced(h, actions)


def build_policy(config: PolicyConfig, seed: int, dropout: float = 0.0) -> AttentionPolicy:
    """A fresh policy; torch's global generator is seeded with `seed` first."""
    torch.manual_seed(seed)
    return AttentionPolicy(config, dropout)


def make_policy(cfg: AgentConfig, n_features: int, dropout: float = 0.0) -> AttentionPolicy:
    """A fresh plain policy as `cfg` describes it, seeded with `cfg.seed`."""
    return build_policy(PolicyConfig.of(cfg.network, n_features), cfg.seed, dropout)


# ---------------------------------------------------------------------------------------------
# Saving


def save_policy(policy: AttentionPolicy, path: str | Path) -> None:
    """Write the policy's config and weights atomically (temporary file, then rename)."""
    blob = {
        "format": CHECKPOINT_FORMAT,
        "config": dataclasses.asdict(policy.config),
        "state_dict": policy.state_dict(),
    }
    atomic_save(path, lambda tmp: torch.save(blob, tmp))


def load_policy(path: str | Path) -> AttentionPolicy:
    """A saved policy of either kind, in eval mode, without dropout.

    Building it reseeds torch's global generator with 0, as loading always has: PPO's action
    sampling and a new autoregressive head start from that state, so same-seed runs repeat.
    """

    path = Path(path)
    if not path.is_file():
        raise DiscourseRLError(f"{path}: policy not found")
    artefacts.verify(path)
    try:
        blob: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
        raise artefacts.unreadable(path, "a policy file", exc) from None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise DiscourseRLError(
            f"{path}: policy saved by an older discourse-rl (checkpoint format "
            f"{blob.get('format', 1) if isinstance(blob, dict) else '?'}, expected "
            f"{CHECKPOINT_FORMAT}); re-run the agent stage"
        )
    try:
        policy = build_policy(PolicyConfig(**blob["config"]), seed=0)
        policy.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise artefacts.unreadable(path, "a policy file", exc) from None
    policy.eval()
    return policy


def keep_best(out_dir: Path) -> Path:
    """Copy `best.pt` (else `last.pt`) of a trainer's folder to its `policy.pt`, atomically."""
    best = out_dir / "best.pt"
    chosen = best if best.exists() else out_dir / "last.pt"
    final = out_dir / "policy.pt"
    with atomic_open(final, "wb") as fh:
        fh.write(chosen.read_bytes())
    return final


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
    """Each essay's (n_segments, 15) action logits, without the head."""
    was_training = policy.training
    policy.eval()
    out: list[npt.NDArray[np.float32]] = []
    for chunk, b in batches(segs, batch):
        logits, _ = policy.encode(b.features, b.mask)
        out += unpad(logits, chunk)
    policy.train(was_training)
    return out


@torch.no_grad()
def predict_actions(policy: AttentionPolicy, segs: Sequence[EssaySegments]) -> list[IntArray]:
    """Greedy actions: the same as stepping the environment with argmax actions; with the head
    (autoregressive kind), each segment's logits include it, given the label just chosen."""
    if policy.head is None:
        return [masked_greedy(lg) for lg in segment_logits(policy, segs)]
    was_training = policy.training
    policy.eval()
    out: list[IntArray] = []
    for chunk, b in batches(segs):
        h, logits = policy.hidden_and_logits(b.features, b.mask)
        out += unpad(policy.labellings(h, logits, b.mask, 1, None)[:, 0], chunk)
    policy.train(was_training)
    return out


def score_policy(
    policy: AttentionPolicy, segs: Sequence[EssaySegments], corpus: Corpus
) -> metric.Score:
    """Macro F1 of the policy's greedy labelling of `segs` against the true elements."""
    pred = spans_frame(segs, predict_actions(policy, segs))
    return metric.score(pred, gold_frame(corpus, [s.essay_id for s in segs]))
