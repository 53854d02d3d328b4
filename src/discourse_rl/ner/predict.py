"""Word probabilities for new essays from a trained run: load its models once, predict often.

Many essays on a CPU with `threads` >= 2 are shared between single-thread child processes
(`discourse_rl.launch.workers`, the launcher the fold processes use): the groups of essays one
process would pass to the model are dealt out whole, in order, so every word's probabilities
are those a single-thread process computes, and the essays come back in the order given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from discourse_rl.core.arrays import FloatArray
from discourse_rl.core.common import DiscourseRLError, torch_threads
from discourse_rl.core.common import progress as progress_bar
from discourse_rl.core.data import Essay
from discourse_rl.core.layout import RunLayout
from discourse_rl.launch import distributed
from discourse_rl.launch.workers import Job, run_jobs
from discourse_rl.ner.backbone import hidden_size, load_encoder, load_tokenizer
from discourse_rl.ner.config import InferDtype, NerConfig
from discourse_rl.ner.inference import (
    Reading,
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

PROCESS_GROUPS = 4
"""Automatic processes: one per thread, but only as many as get this many groups (of
`inference.GROUP_WORDS` words, about 75 essays) each: a child's start and model loading take
seconds. Not measured yet; a guess."""


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
    run_dir: Path | None = None
    """The run folder the models came from (child processes load them from it)."""
    workers: int = 0
    """Processes sharing a prediction of many essays, `threads // workers` threads each (0 =
    automatic: on the CPU with `threads` >= 2, one per thread when the essays fill
    `PROCESS_GROUPS` groups per process; 1 = this process only)."""

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        threads: int | None = None,
        device: torch.device | None = None,
        infer_dtype: InferDtype | None = None,
        workers: int = 0,
    ) -> NerPredictor:
        """Read the run's NER settings, tokenizer, encoder and every fold model.

        `threads` overrides the run's torch thread count (0 = torch's setting as it is);
        `infer_dtype` the run's `ner.infer_dtype` ('bf16', 'int8' or 'fp32'); `workers` is
        the field of that name."""
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
            return cls(
                cfg, tokenizer, device, threads, ready, heads, run_dir=layout.root, workers=workers
            )
        if cfg.mode == "finetune":
            models = [
                for_inference(m.to(device), cfg, device) for m in load_finetuned(run_dir, cfg)
            ]
            tokenizer = load_tokenizer(encoder_dir)
            return cls(
                cfg, tokenizer, device, threads, models=models, run_dir=layout.root, workers=workers
            )
        raise DiscourseRLError(f"{layout.ner_config}: unknown ner.mode {cfg.mode!r}")

    def predict(self, essays: Mapping[str, Essay], progress: bool = False) -> dict[str, FloatArray]:
        """Per essay id, (n_words, 15) word probabilities: the mean over the fold models."""
        ids = list(essays)
        listed = [essays[i] for i in ids]
        with torch_threads(self.threads):
            groups = _groups(listed) if self._may_share() else []
            n = self._processes(len(groups))
            if n > 1:
                probs = self._predict_shared(listed, groups, n, progress)
            else:
                bar = progress_bar(desc="predict", unit="tok", disable=not progress)
                probs = predict_in_groups(listed, lambda group: self._predict(group, bar))
                bar.close()
        return dict(zip(ids, probs, strict=True))

    def _may_share(self) -> bool:
        return (
            self.workers != 1
            and self.run_dir is not None
            and self.device.type == "cpu"
            and not distributed.distributed()
        )

    def _processes(self, n_groups: int) -> int:
        """How many processes share `n_groups` groups (1: this one alone)."""
        if not self._may_share():
            return 1
        if self.workers > 1:
            return min(self.workers, n_groups)
        threads = self.threads if self.threads > 0 else 1
        return max(1, min(threads, n_groups // PROCESS_GROUPS))

    def _predict_shared(
        self, listed: list[Essay], groups: list[list[Essay]], n: int, progress: bool
    ) -> list[FloatArray]:
        """The groups in `n` contiguous shares, one child process each, put back in order."""
        assert self.run_dir is not None
        threads = max(1, torch.get_num_threads() // n)
        jobs = [
            Job(
                f"predict {k + 1}/{n}",
                predict_groups,
                (self.run_dir, self.cfg, distributed.shard(groups, k, n), progress),
            )
            for k in range(n)
        ]
        done = iter([probs for share in run_jobs(jobs, n, threads) for probs in share])
        # The same grouping again, each group's probabilities now the children's.
        return predict_in_groups(listed, lambda group: next(done))

    def _predict(self, listed: list[Essay], bar: Any) -> list[FloatArray]:
        how = Reading(self.tokenizer, self.cfg, self.device, bar, prepared=True)
        if self.encoder is not None:
            vectors = encode_word_vectors(self.encoder, listed, how)
            feats = [word_features(e) for e in listed]
            return head_probs(self.heads, vectors, feats, self.device)
        return window_probs(self.models, listed, how)


def _groups(listed: list[Essay]) -> list[list[Essay]]:
    """The groups (essays, or pieces of a very long one) `predict_in_groups` passes to the
    model, in order."""
    groups: list[list[Essay]] = []

    def record(group: list[Essay]) -> list[FloatArray]:
        groups.append(group)
        return [np.zeros((e.n_words, 1), dtype=np.float32) for e in group]

    predict_in_groups(listed, record)
    return groups


def predict_groups(
    run_dir: Path, cfg: NerConfig, groups: list[list[Essay]], progress: bool
) -> list[list[FloatArray]]:
    """A prediction child's job: the run's word probabilities of each group, in this process
    (with the threads its launcher gave it), predicted with the parent's settings `cfg`."""
    predictor = NerPredictor.load(
        run_dir, threads=0, device=torch.device("cpu"), infer_dtype=cfg.infer_dtype, workers=1
    )
    predictor = replace(predictor, cfg=cfg)
    bar = progress_bar(desc="predict", unit="tok", disable=not progress)
    with torch_threads(predictor.threads):
        out = [predictor._predict(group, bar) for group in groups]
    bar.close()
    return out


def predict_word_probs(
    run_dir: str | Path,
    essays: Mapping[str, Essay],
    progress: bool = False,
    threads: int | None = None,
    infer_dtype: InferDtype | None = None,
    workers: int = 0,
) -> dict[str, FloatArray]:
    """Word probabilities (n_words, 15) for new essays: the mean of the run's fold models.
    Loads the run on every call; `NerPredictor` loads it once.

    `threads` overrides the run's torch thread count (0 = torch's setting as it is),
    `infer_dtype` its encoder precision, `workers` the processes sharing the essays (0 =
    automatic, see `NerPredictor.workers`)."""
    predictor = NerPredictor.load(run_dir, threads, infer_dtype=infer_dtype, workers=workers)
    return predictor.predict(essays, progress)
