"""Finetune mode: encoder and head trained end to end on windows with the transformers Trainer.

The path for GPUs and larger backbones. Trainer checkpoints let an interrupted fold resume; a
fold with its model and out-of-fold probabilities written is skipped.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from discourse_rl.core.common import atomic_save, is_terminal
from discourse_rl.core.data import Corpus, Essay, save_word_probs
from discourse_rl.core.layout import FoldLayout, RunLayout
from discourse_rl.launch import distributed
from discourse_rl.launch.workers import Job, run_jobs
from discourse_rl.ner import precision
from discourse_rl.ner.backbone import freeze_lower, load_encoder, load_tokenizer, special_ids
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.frozen_states import (
    StateCache,
    UpperModel,
    build_state_cache,
    drop_state_cache,
)
from discourse_rl.ner.inference import Reading, default_device, window_probs
from discourse_rl.ner.model import NerModel
from discourse_rl.ner.run import fold_split
from discourse_rl.ner.tokens import (
    Window,
    essay_windows,
    tokenize_essays,
    window_inputs,
    word_features,
)


class _WindowData(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, windows: list[Any], cache_rows: list[int] | None = None) -> None:
        self.windows = windows
        self.cache_rows = cache_rows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # input_ids lets the Trainer's length-grouped sampler measure the window.
        item = {"window": self.windows[i], "input_ids": self.windows[i].input_ids}
        if self.cache_rows is not None:
            item["cached"] = self.cache_rows[i]
        return item


def train_finetune(
    corpus: Corpus, cfg: NerConfig, layout: RunLayout, folds: dict[str, int], seed: int
) -> None:
    """Train each unfinished fold's model and predict its held-out essays: one fold after the
    other in this process, or `fold_workers` of them at once, each in its own process."""
    device = default_device()
    todo = [k for k, fold in enumerate(layout.folds(cfg.folds)) if not _finished(fold)]
    workers = fold_workers(cfg, len(todo), device)
    if workers <= 1:
        train_folds(corpus, cfg, layout, folds, seed, todo)
        return
    cache = None
    if cfg.cache_frozen:
        # Built once, here, with all the threads; each child then maps the finished file.
        data = _prepare(corpus, cfg, layout)
        cache = _state_cache(cfg, layout, data.per_essay, data.pad_id, device)
    # The stage runs inside torch_threads(cfg.threads): this is `threads`, or torch's own count.
    threads = max(1, torch.get_num_threads() // workers)
    args = (corpus, cfg, layout, folds, seed)
    jobs = [Job(f"fold {k}", train_folds, (*args, [k], False)) for k in todo]
    run_jobs(jobs, workers, threads)
    if cache is not None:
        del cache
        drop_state_cache(layout)


def fold_workers(cfg: NerConfig, todo: int, device: torch.device) -> int:
    """How many of `todo` folds train at once (`ner.fold_workers`; 0 = one per thread when
    `threads` >= 2). A GPU, or a launcher's ranks sharing each fold, train them one by one."""
    if todo <= 1 or device.type != "cpu" or distributed.distributed():
        return 1
    if cfg.fold_workers > 0:
        return min(cfg.fold_workers, todo)
    return min(todo, cfg.threads) if cfg.threads >= 2 else 1


def _finished(fold: FoldLayout) -> bool:
    return fold.oof.is_file() and fold.model.is_file()


@dataclass(frozen=True)
class _Prepared:
    """Every essay tokenised and cut into windows once: a fold's training windows are its
    essays' in id order."""

    tokenizer: Any
    essays: list[Essay]
    feats: list[Any]
    labels: list[Any]
    position: dict[str, int]
    per_essay: list[list[Window]]
    first_row: list[int]
    pad_id: int


def _prepare(corpus: Corpus, cfg: NerConfig, layout: RunLayout) -> _Prepared:
    tokenizer = load_tokenizer(layout.ner_encoder)
    ids = sorted(corpus.essays)
    essays: list[Essay] = [corpus.essays[i] for i in ids]
    tokens = tokenize_essays(tokenizer, essays, cfg.paragraph_marker)
    cls_id, sep_id, pad_id = special_ids(tokenizer)
    per_essay = [
        essay_windows(t, n, cfg.window, cfg.overlap, cls_id, sep_id) for n, t in enumerate(tokens)
    ]
    return _Prepared(
        tokenizer=tokenizer,
        essays=essays,
        feats=[word_features(e) for e in essays],
        labels=[corpus.word_labels(i) for i in ids],
        position={i: n for n, i in enumerate(ids)},
        per_essay=per_essay,
        first_row=np.cumsum([0] + [len(ws) for ws in per_essay]).tolist(),
        pad_id=pad_id,
    )


def train_folds(
    corpus: Corpus,
    cfg: NerConfig,
    layout: RunLayout,
    folds: dict[str, int],
    seed: int,
    todo: list[int],
    drop_cache: bool = True,
) -> None:
    """Train the folds `todo`, one after the other, in this process (a fold child's job: one
    fold, the cache left to the parent)."""
    # transformers and safetensors: loaded when a fold trains
    from safetensors.torch import save_file
    from transformers import Trainer

    if not todo:
        return
    device = default_device()
    data = _prepare(corpus, cfg, layout)
    per_essay, position = data.per_essay, data.position
    cache = _state_cache(cfg, layout, per_essay, data.pad_id, device)
    for k in todo:
        fold = layout.fold(k)
        train_ids, val_ids = fold_split(folds, k)
        windows = [w for i in train_ids for w in per_essay[position[i]]]
        rows = [
            data.first_row[position[i]] + j
            for i in train_ids
            for j in range(len(per_essay[position[i]]))
        ]
        torch.manual_seed(seed + k)
        encoder = load_encoder(layout.ner_encoder, cfg.attention_dropout, cfg.hidden_dropout)
        model = NerModel(encoder, cfg)
        freeze_lower(model, cfg.freeze_layers)

        def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            group = [it["window"] for it in items]
            inputs = window_inputs(group, data.feats, data.pad_id, data.labels)
            if cache is not None:
                lengths = [len(w.input_ids) for w in group]
                t = inputs["input_ids"].shape[1]
                inputs["hidden"] = cache.padded([it["cached"] for it in items], lengths, t)
            return inputs

        trained: torch.nn.Module = model
        if cache is not None:
            trained = UpperModel(model, cfg.freeze_layers)
        trainer = Trainer(
            model=trained,
            args=training_arguments(
                cfg, fold, device, seed + k, precision.train_bf16(cfg, device, encoder)
            ),
            train_dataset=_WindowData(windows, rows if cache is not None else None),
            data_collator=collate,
            optimizers=(_optimizer(model, cfg), None),
        )
        # One process tidies half-saved checkpoints away; all resume from the one it found.
        last = distributed.from_main(partial(last_complete_checkpoint, fold.checkpoints))
        trainer.train(resume_from_checkpoint=last)
        weights = {k2: v.detach().cpu().contiguous() for k2, v in model.state_dict().items()}

        def write(path: Path, w: dict[str, torch.Tensor] = weights) -> None:
            save_file(w, str(path))

        if distributed.is_main():
            atomic_save(fold.model, write)
        # Each process predicts its share of the held-out essays; the main one writes them.
        mine = distributed.shard(val_ids)
        held = [data.essays[position[i]] for i in mine]
        probs = window_probs([model], held, Reading(data.tokenizer, cfg, device))
        held_out = distributed.gather(dict(zip(mine, probs, strict=True)))
        if distributed.is_main():
            save_word_probs(fold.oof, held_out)
        # Every process sees the fold finished before any checks the next one.
        distributed.barrier()
    if cache is not None and drop_cache and distributed.is_main():
        del cache
        drop_state_cache(layout)


def _state_cache(
    cfg: NerConfig,
    layout: RunLayout,
    per_essay: list[list[Window]],
    pad_id: int,
    device: torch.device,
) -> StateCache | None:
    """`ner.cache_frozen`: the frozen layers' states of every window, computed by the main
    process (the others wait, then map the same file)."""
    if not cfg.cache_frozen:
        return None
    flat = [w for ws in per_essay for w in ws]
    bf16 = precision.train_bf16(cfg, device, str(layout.ner_encoder))

    def build() -> StateCache:
        backbone = NerModel(load_encoder(layout.ner_encoder, 0.0, 0.0), cfg).to(device)
        return build_state_cache(backbone, flat, cfg, layout, pad_id, bf16)

    if distributed.is_main():
        build()
    distributed.barrier()
    return build()  # complete now: read back, not recomputed


def last_complete_checkpoint(folder: Path) -> str | None:
    """The Trainer's newest checkpoint that was saved to the end; newer, half-saved ones (a
    killed save) are removed. The Trainer writes trainer_state.json last and not atomically,
    so a checkpoint is complete when that file parses."""
    if not folder.is_dir():
        return None
    found = []
    for path in folder.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if m and path.is_dir():
            found.append((int(m.group(1)), path))
    for _, path in sorted(found, reverse=True):
        try:
            json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            shutil.rmtree(path)
            continue
        return str(path)
    return None


def training_arguments(
    cfg: NerConfig, fold: FoldLayout, device: torch.device, seed: int, bf16: bool | None = None
) -> Any:
    """The Trainer's settings for one fold, spelled for the installed transformers: 5.x takes a
    warm-up fraction as `warmup_steps` and a `train_sampling_strategy`; 4.x names them
    `warmup_ratio` and `group_by_length`. `bf16`: autocast (default: `precision`'s choice for
    the default shapes)."""
    # transformers and safetensors: loaded when a fold trains
    from transformers import TrainingArguments

    accepted = inspect.signature(TrainingArguments).parameters
    version: dict[str, Any] = {}
    if "warmup_ratio" in accepted:
        version["warmup_ratio"] = cfg.warmup
    else:
        version["warmup_steps"] = cfg.warmup
    if "train_sampling_strategy" in accepted:
        version["train_sampling_strategy"] = "group_by_length"
    else:
        version["group_by_length"] = True
    return TrainingArguments(
        output_dir=str(fold.checkpoints),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type="linear",
        bf16=precision.train_bf16(cfg, device) if bf16 is None else bf16,
        use_cpu=device.type == "cpu",
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=1,
        logging_steps=10,
        # Not on a terminal: no bar, and the Trainer prints each log (every 10 steps) as a line.
        disable_tqdm=not is_terminal(sys.stderr),
        report_to=["tensorboard"],
        remove_unused_columns=False,
        label_names=["labels"],
        seed=seed,
        dataloader_num_workers=0,
        **version,
    )


def _optimizer(model: NerModel, cfg: NerConfig) -> torch.optim.Optimizer | None:
    """AdamW with the head at its own learning rate; None lets the Trainer build its default."""
    if cfg.head_lr <= 0:
        return None
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    head = list(model.head.parameters())
    groups: list[dict[str, Any]] = [
        {"params": encoder, "lr": cfg.lr},
        {"params": head, "lr": cfg.head_lr},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
