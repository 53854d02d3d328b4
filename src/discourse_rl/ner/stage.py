"""Training the tagger: cross-fitted fold models and their out-of-fold (and test) word
probabilities (`train_ner`); the run's NER step (`run.steps.ner`) then fits the decodings.

Everything lands in the run folder (`RunLayout`) and every step resumes: see `frozen` and
`finetune` for the two ways to train.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from discourse_rl.core.arrays import FloatArray
from discourse_rl.core.common import DiscourseRLError, atomic_dir, torch_threads
from discourse_rl.core.data import Corpus, load_word_probs, make_folds, save_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.launch import distributed
from discourse_rl.ner.backbone import check_marker, load_encoder, load_tokenizer, resolve_backbone
from discourse_rl.ner.config import MODES, NerConfig
from discourse_rl.ner.finetune import train_finetune
from discourse_rl.ner.frozen import train_frozen
from discourse_rl.ner.predict import predict_word_probs
from discourse_rl.ner.run import NerRecord, inputs_key, keep_or_clear, write_folds, write_record


@dataclass(frozen=True)
class NerResult:
    """Where `train_ner` left its outputs."""

    run_dir: Path
    oof_path: Path
    test_path: Path | None
    folds: dict[str, int]
    seconds: float


def train_ner(corpus: Corpus, cfg: NerConfig, out_dir: str | Path, seed: int = 0) -> NerResult:
    """Train `cfg.folds` fold models; write out-of-fold (and test) word probabilities."""
    t0 = time.perf_counter()
    layout = RunLayout(out_dir)
    torch.manual_seed(seed)
    if cfg.max_essays and cfg.max_essays < len(corpus.essays):
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(sorted(corpus.essays), cfg.max_essays, replace=False))
        corpus = corpus.subset(keep)
    folds = make_folds(corpus, cfg.folds, seed)
    if cfg.mode not in MODES:
        raise DiscourseRLError(f"ner.mode: expected 'frozen' or 'finetune', got {cfg.mode!r}")
    if cfg.mode == "frozen":
        # The encoder runs once and the heads are small: nothing to gain from several processes.
        distributed.require_one_process("ner.mode = 'frozen' ('finetune' trains data-parallel)")
    distributed.init()
    if distributed.is_main():
        keep_or_clear(layout, inputs_key(corpus, cfg, seed))
        write_record(layout, NerRecord(seed, cfg))
        write_folds(layout, folds)
        if not layout.ner_encoder_config.is_file():
            backbone = resolve_backbone(cfg.backbone)
            # Saved whole or not at all: a later run takes a config.json for a finished save.
            with atomic_dir(layout.ner_encoder) as tmp:
                load_tokenizer(backbone).save_pretrained(str(tmp))
                encoder: Any = load_encoder(backbone)
                encoder.save_pretrained(str(tmp))
    distributed.barrier()
    check_marker(load_tokenizer(layout.ner_encoder), cfg.paragraph_marker)
    with torch_threads(cfg.threads):
        if cfg.mode == "frozen":
            train_frozen(corpus, cfg, layout, folds, seed)
        else:
            train_finetune(corpus, cfg, layout, folds, seed)
    test_path = layout.test_probs if corpus.test_essays else None
    test: dict[str, FloatArray] = {}
    if corpus.test_essays:
        # Each process predicts its share of the test essays; the main one writes them all.
        ids = distributed.shard(sorted(corpus.test_essays))
        mine = predict_word_probs(layout.root, {i: corpus.test_essays[i] for i in ids})
        test = distributed.gather(mine)
    if distributed.is_main():
        oof: dict[str, FloatArray] = {}
        for fold in layout.folds(cfg.folds):
            oof.update(load_word_probs(fold.oof))
        save_word_probs(layout.oof, oof)
        if test_path is not None:
            save_word_probs(test_path, test)
    distributed.barrier()
    return NerResult(layout.root, layout.oof, test_path, folds, time.perf_counter() - t0)
