"""Word probabilities for new essays from a trained run: load its models once, predict often."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from discourse_rl.arrays import FloatArray
from discourse_rl.common import DiscourseRLError, torch_threads
from discourse_rl.common import progress as progress_bar
from discourse_rl.data import Essay
from discourse_rl.layout import RunLayout
from discourse_rl.ner.backbone import hidden_size, load_encoder, load_tokenizer
from discourse_rl.ner.config import InferDtype, NerConfig
from discourse_rl.ner.inference import (
    default_device,
    encode_word_vectors,
    for_inference,
    head_probs,
    predict_in_groups,
    window_probs,
)
from discourse_rl.ner.model import NerHead, NerModel
from discourse_rl.ner.run import load_finetuned, load_heads, require_encoder, run_ner_config
from discourse_rl.ner.tokens import word_features


@dataclass(frozen=True)
class NerPredictor:
    """A run's NER models, loaded once and ready to predict (bf16 inference copies where the
    hardware has bf16): the fold models' mean word probabilities for any essays."""

    cfg: NerConfig
    """The settings the run was trained with."""
    tokenizer: Any
    """The backbone's (fast) tokenizer."""
    device: torch.device
    """Where the models run."""
    threads: int
    """Torch CPU threads while predicting (0 = leave torch's setting)."""
    encoder: nn.Module | None = None
    """Frozen mode: the shared encoder."""
    heads: Sequence[NerHead] = field(default_factory=list)
    """Frozen mode: one head per fold."""
    models: Sequence[NerModel] = field(default_factory=list)
    """Finetune mode: one encoder + head per fold."""

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        threads: int | None = None,
        device: torch.device | None = None,
        infer_dtype: InferDtype | None = None,
    ) -> NerPredictor:
        """Read the run's NER settings, tokenizer, encoder and every fold model.

        `threads` overrides the run's torch thread count (0 = torch's setting as it is);
        `infer_dtype` the run's `ner.infer_dtype` ('bf16', 'int8' or 'fp32')."""
        layout = RunLayout(run_dir)
        cfg = run_ner_config(layout.root)
        if infer_dtype is not None:
            cfg = replace(cfg, infer_dtype=infer_dtype)
        encoder_dir = require_encoder(layout)
        device = default_device() if device is None else device
        threads = cfg.threads if threads is None else threads
        # Fold models before the tokenizer: a missing one is the error to report.
        if cfg.mode == "frozen":
            encoder = load_encoder(encoder_dir).to(device)
            heads = [h.to(device) for h in load_heads(layout.root, cfg, hidden_size(encoder))]
            ready = for_inference(encoder, cfg, device)
            tokenizer = load_tokenizer(encoder_dir)
            return cls(cfg, tokenizer, device, threads, encoder=ready, heads=heads)
        if cfg.mode == "finetune":
            models = [
                for_inference(m.to(device), cfg, device) for m in load_finetuned(run_dir, cfg)
            ]
            return cls(cfg, load_tokenizer(encoder_dir), device, threads, models=models)
        raise DiscourseRLError(f"{layout.ner_config}: unknown ner.mode {cfg.mode!r}")

    def predict(self, essays: Mapping[str, Essay], progress: bool = False) -> dict[str, FloatArray]:
        """Per essay id, (n_words, 15) word probabilities: the mean over the fold models."""
        ids = list(essays)
        listed = [essays[i] for i in ids]
        bar = progress_bar(desc="predict", unit="tok", disable=not progress)
        with torch_threads(self.threads):
            probs = predict_in_groups(listed, lambda group: self._predict(group, bar))
        bar.close()
        return dict(zip(ids, probs, strict=True))

    def _predict(self, listed: list[Essay], bar: Any) -> list[FloatArray]:
        cfg, device = self.cfg, self.device
        if self.encoder is not None:
            vectors = encode_word_vectors(
                self.encoder, self.tokenizer, listed, cfg, device, bar, prepared=True
            )
            feats = [word_features(e) for e in listed]
            return head_probs(self.heads, vectors, feats, device)
        return window_probs(self.models, self.tokenizer, listed, cfg, device, bar, prepared=True)


def predict_word_probs(
    run_dir: str | Path,
    essays: Mapping[str, Essay],
    progress: bool = False,
    threads: int | None = None,
    infer_dtype: InferDtype | None = None,
) -> dict[str, FloatArray]:
    """Word probabilities (n_words, 15) for new essays: the mean of the run's fold models.
    Loads the run on every call; `NerPredictor` loads it once.

    `threads` overrides the run's torch thread count (0 = torch's setting as it is),
    `infer_dtype` its encoder precision."""
    return NerPredictor.load(run_dir, threads, infer_dtype=infer_dtype).predict(essays, progress)
