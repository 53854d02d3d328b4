"""'finetune' with frozen lower layers, trained from their cached output (`ner.cache_frozen`).

The embeddings and the `freeze_layers` lower encoder layers never change while fine-tuning, and
with both encoder dropouts at 0 they give every window the same states in every epoch. Those
states are computed once per window (all folds share them: the frozen part is the backbone's
own) and stored on disk; each training step then runs only the upper layers and the head.
On MiniLM with 3 of 6 layers frozen the forward pass of the lower half and the embeddings'
backward bookkeeping disappear from every step.

Size: tokens of all windows x hidden x 2 bytes (bf16); for the reference data (14,094 essays,
~7.4 M window tokens, 384 dims) about 5.7 GB, hence a memory-mapped file, not RAM.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from discourse_rl.core import faults
from discourse_rl.core.common import DiscourseRLError, atomic_write_text
from discourse_rl.core.layout import RunLayout
from discourse_rl.ner.backbone import hidden_size
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.inference import autocast
from discourse_rl.ner.model import NerModel, WordInputs
from discourse_rl.ner.tokens import Window, pad_windows, token_batches


class _Given(nn.Module):
    """Stands in for the embeddings: the cached states come in as `inputs_embeds`."""

    def forward(self, inputs_embeds: torch.Tensor | None = None, **_: Any) -> torch.Tensor:
        assert inputs_embeds is not None
        return inputs_embeds


@contextmanager
def layer_range(model: NerModel, start: int, stop: int | None) -> Iterator[None]:
    """While inside, `model.encoder` runs only layers [start, stop); from a `start` above 0 its
    embeddings pass `inputs_embeds` through (the states after layer `start` - 1)."""
    hf: Any = model.encoder
    embeddings = getattr(hf, "embeddings", None)
    layers = getattr(getattr(hf, "encoder", None), "layer", None)
    if not isinstance(embeddings, nn.Module) or not isinstance(layers, nn.ModuleList):
        # The swap below names BERT-style modules (embeddings, encoder.layer).
        raise DiscourseRLError("ner.cache_frozen: only BERT-style backbones (set it to false)")
    hf.encoder.layer = nn.ModuleList(list(layers)[start:stop])
    if start > 0:
        hf.embeddings = _Given()
    try:
        yield
    finally:
        hf.encoder.layer = layers
        hf.embeddings = embeddings


class StateCache:
    """The cached states of windows, back to back in one memory-mapped (tokens, hidden) array
    (bf16 bits as int16, or float32); `offsets[i]` is window i's first row."""

    def __init__(self, states: np.ndarray[Any, Any], offsets: Sequence[int], bf16: bool) -> None:
        self.states = states
        self.offsets = list(offsets)
        self.bf16 = bf16

    def padded(self, indices: Sequence[int], lengths: Sequence[int], t: int) -> torch.Tensor:
        """(len(indices), t, hidden) float32 states, zero after each window's length (padding
        is masked as a key in the upper layers and never pooled, so zeros change nothing)."""
        out = torch.zeros(len(indices), t, self.states.shape[1])
        for k, (i, n) in enumerate(zip(indices, lengths, strict=True)):
            rows = torch.from_numpy(np.array(self.states[self.offsets[i] : self.offsets[i] + n]))
            out[k, :n] = rows.view(torch.bfloat16).float() if self.bf16 else rows
        return out


def build_state_cache(
    model: NerModel,
    windows: Sequence[Window],
    cfg: NerConfig,
    layout: RunLayout,
    pad_id: int,
    bf16: bool,
) -> StateCache:
    """The frozen part's output for every window, computed once (or read back when a previous
    run of the stage left it complete for the same windows and settings)."""
    folder = layout.ner_frozen_states
    index_path, states_path = folder / "index.json", folder / "states.npy"
    lengths = [len(w.input_ids) for w in windows]
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64).tolist()
    key = {
        "freeze_layers": cfg.freeze_layers,
        "window": cfg.window,
        "overlap": cfg.overlap,
        "paragraph_marker": cfg.paragraph_marker,
        "bf16": bf16,
        "windows": len(windows),
        "tokens": int(sum(lengths)),
        "ids_checksum": int(sum(int(w.input_ids.sum()) * (i + 1) for i, w in enumerate(windows))),
    }
    if index_path.is_file() and json.loads(index_path.read_text()) == key:
        return StateCache(np.load(states_path, mmap_mode="r"), offsets, bf16)
    folder.mkdir(parents=True, exist_ok=True)
    hid = hidden_size(model.encoder)
    tmp = folder / "states.tmp.npy"
    dtype = np.int16 if bf16 else np.float32
    states = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=(sum(lengths), hid))
    faults.preallocate(tmp)  # a full disk: ENOSPC now, not SIGBUS later
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with layer_range(model, 0, cfg.freeze_layers), torch.inference_mode():
        for batch in token_batches(windows, cfg.encode_tokens):
            group = [windows[i] for i in batch]
            inputs = pad_windows(group, pad_id)
            with autocast(device, bf16):
                hidden = model.encoder(
                    input_ids=inputs["input_ids"].to(device),
                    attention_mask=inputs["attention_mask"].to(device),
                ).last_hidden_state
            hidden = hidden.to(torch.bfloat16) if bf16 else hidden.float()
            for k, i in enumerate(batch):
                rows = hidden[k, : lengths[i]].cpu()
                states[offsets[i] : offsets[i] + lengths[i]] = (
                    rows.view(torch.int16).numpy() if bf16 else rows.numpy()
                )
    model.train(was_training)
    states.flush()
    del states
    os.replace(tmp, states_path)
    atomic_write_text(index_path, json.dumps(key) + "\n")
    return StateCache(np.load(states_path, mmap_mode="r"), offsets, bf16)


def drop_state_cache(layout: RunLayout) -> None:
    """Remove the cached states (gigabytes on the reference data) once every fold is trained."""
    folder = layout.ner_frozen_states
    for name in ("index.json", "states.npy", "states.tmp.npy"):
        (folder / name).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


class UpperModel(nn.Module):
    """A NerModel trained from cached states: runs its layers from `freeze_layers` up and the
    head. Its parameters are the NerModel's own, so the NerModel is what gets saved."""

    def __init__(self, model: NerModel, depth: int) -> None:
        super().__init__()
        self.model = model
        self.depth = depth

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        token_word: torch.Tensor,
        word_features: torch.Tensor,
        word_count: torch.Tensor,
        labels: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        with layer_range(self.model, self.depth, None):
            out = self.model.encoder(inputs_embeds=hidden, attention_mask=attention_mask)
        words = WordInputs(token_word, word_features, word_count, labels)
        return self.model.from_hidden(out.last_hidden_state, words)
