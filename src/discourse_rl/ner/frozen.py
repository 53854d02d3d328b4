"""Frozen mode: the encoder runs once over every essay (its word vectors cached on disk), then
a small head is trained per fold on the cache.

The cache fills in chunks and each head keeps a checkpoint per epoch, so an interrupted stage
resumes where it stopped; a finished fold is skipped.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from discourse_rl.core import faults, rules
from discourse_rl.core.arrays import FloatArray
from discourse_rl.core.common import DiscourseRLError, atomic_save, progress, read_json
from discourse_rl.core.data import NUM_LABELS, Corpus, save_word_probs
from discourse_rl.core.layout import FoldLayout, RunLayout
from discourse_rl.ner.backbone import hidden_size, load_encoder, load_tokenizer
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.inference import (
    Reading,
    default_device,
    encode_word_vectors,
    head_probs,
)
from discourse_rl.ner.model import NerHead
from discourse_rl.ner.run import fold_split, write_json
from discourse_rl.ner.tokens import collate_essays, word_features

CACHE_CHUNK = 512


@dataclass
class _Cache:
    vectors: npt.NDArray[np.float16]
    offsets: dict[str, tuple[int, int]]

    def get(self, essay_id: str) -> npt.NDArray[np.float16]:
        s, e = self.offsets[essay_id]
        return self.vectors[s:e]


def build_cache(corpus: Corpus, cfg: NerConfig, run: str | Path) -> _Cache:
    """Word vectors of every essay in one float16 array, filled chunk by chunk (resumable)."""
    layout = RunLayout(run)
    ids = sorted(corpus.essays)
    lengths = np.array([corpus.essays[i].n_words for i in ids], dtype=np.int64)
    offsets = _offsets(ids, lengths.tolist())
    device = default_device()
    encoder = load_encoder(layout.ner_encoder).to(device)
    tokenizer = load_tokenizer(layout.ner_encoder)
    hid = hidden_size(encoder)
    path = layout.ner_cache_vectors
    index_path = layout.ner_cache_index
    progress_path = layout.ner_cache_progress
    # What the vectors depend on: a change in any of these rebuilds the cache.
    index = {
        "ids": ids,
        "hidden": hid,
        "backbone": cfg.backbone,
        "window": cfg.window,
        "overlap": cfg.overlap,
        "paragraph_marker": cfg.paragraph_marker,
        "lengths": lengths.tolist(),
    }
    done = 0
    if path.is_file() and index_path.is_file() and progress_path.is_file():
        old = read_json(index_path, None)
        done = int(read_json(progress_path)["done"])
        if _covers(old, index, done):
            # A finished cache of more essays (e.g. all of them, read now by the sure-only run).
            return _Cache(np.load(path, mmap_mode="r"), _offsets(old["ids"], old["lengths"]))
        done = done if old == index else 0
    if done == 0:
        layout.ner_cache.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float16, shape=(int(lengths.sum()), hid)
        )
        faults.preallocate(path)  # a full disk: ENOSPC now, not SIGBUS later
        write_json(index_path, index)
        write_json(progress_path, {"done": 0})
    vectors = np.load(path, mmap_mode="r+")
    if done < len(ids):
        bar = progress(desc="encode essays", total=len(ids), initial=done, unit="essay")
        for c in range(done, len(ids), CACHE_CHUNK):
            chunk = ids[c : c + CACHE_CHUNK]
            vecs = encode_word_vectors(
                encoder, [corpus.essays[i] for i in chunk], Reading(tokenizer, cfg, device)
            )
            for i, v in zip(chunk, vecs, strict=True):
                s, e = offsets[i]
                vectors[s:e] = v
            vectors.flush()
            write_json(progress_path, {"done": c + len(chunk)})
            bar.update(len(chunk))
        bar.close()
    return _Cache(np.load(path, mmap_mode="r"), offsets)


def _offsets(ids: list[str], lengths: list[int]) -> dict[str, tuple[int, int]]:
    """Each essay's [start, end) rows in a cache that stores `ids` back to back."""
    ends = np.cumsum(np.asarray(lengths, dtype=np.int64))
    return {i: (int(e - n), int(e)) for i, n, e in zip(ids, lengths, ends, strict=True)}


def _covers(old: dict[str, Any], new: dict[str, Any], done: int) -> bool:
    """Whether a finished cache `old` holds every essay of `new`, encoded the same way."""
    if "lengths" not in old or done != len(old["ids"]):
        return False
    if any(old.get(k) != v for k, v in new.items() if k not in ("ids", "lengths")):
        return False
    old_len = dict(zip(old["ids"], old["lengths"], strict=True))
    return all(old_len.get(i) == n for i, n in zip(new["ids"], new["lengths"], strict=True))


def load_cache(run: str | Path, corpus: Corpus) -> tuple[_Cache, list[str]]:
    """A run's cache as it stands (read-only), and the essays already encoded in it."""
    layout = RunLayout(run)
    try:
        index = json.loads(layout.ner_cache_index.read_text())
        done = int(json.loads(layout.ner_cache_progress.read_text())["done"])
        vectors = np.load(layout.ner_cache_vectors, mmap_mode="r")
    except FileNotFoundError:
        raise DiscourseRLError(
            f"{layout.root}: no encoder cache (train it in 'frozen' mode)"
        ) from None
    ids: list[str] = index["ids"]
    if not set(ids) <= set(corpus.essays):
        raise DiscourseRLError(f"{layout.ner_cache}: cached essays are not all in this data folder")
    lengths = index.get("lengths") or [corpus.essays[i].n_words for i in ids]
    return _Cache(vectors, _offsets(ids, lengths)), ids[:done]


def train_frozen(
    corpus: Corpus, cfg: NerConfig, layout: RunLayout, folds: dict[str, int], seed: int
) -> None:
    """Fill the cache, then train each unfinished fold's head and predict its held-out essays."""
    cache = build_cache(corpus, cfg, layout.root)
    ids = sorted(corpus.essays)
    feats = {i: word_features(corpus.essays[i]) for i in ids}
    labels = {i: corpus.word_labels(i).astype(np.int64) for i in ids}
    device = default_device()
    for k, fold in enumerate(layout.folds(cfg.folds)):
        train_ids, val_ids = fold_split(folds, k)
        done = {"config": rules.plain(cfg), "train": len(train_ids), "seed": seed + k}
        if fold.oof.is_file() and read_json(fold.done, None) == done:
            continue
        # Its record goes first: a crash before the new one is written leaves none.
        fold.done.unlink(missing_ok=True)
        head = train_head(cache, feats, labels, train_ids, val_ids, cfg, fold, seed + k)
        vecs = [cache.get(i) for i in val_ids]
        probs = head_probs([head.to(device)], vecs, [feats[i] for i in val_ids], device)
        save_word_probs(fold.oof, dict(zip(val_ids, probs, strict=True)))
        write_json(fold.done, done)


def _batches(
    ids: list[str], lengths: dict[str, int], batch: int, rng: np.random.Generator
) -> list[list[str]]:
    """Shuffled batches of similar-length essays: less padding for the GRU."""
    order = [ids[i] for i in rng.permutation(len(ids))]
    pool = batch * 32
    out: list[list[str]] = []
    for p in range(0, len(order), pool):
        group = sorted(order[p : p + pool], key=lambda i: lengths[i])
        out += [group[b : b + batch] for b in range(0, len(group), batch)]
    return [out[i] for i in rng.permutation(len(out))]


def train_head(
    cache: _Cache,
    feats: dict[str, FloatArray],
    labels: dict[str, npt.NDArray[np.int64]],
    train_ids: list[str],
    val_ids: list[str],
    cfg: NerConfig,
    fold: FoldLayout,
    seed: int,
) -> NerHead:
    """A plain loop (the Trainer adds nothing on a cache): AdamW, warm-up then linear decay,
    an epoch checkpoint to resume from, tqdm, TensorBoard."""
    torch.manual_seed(seed)
    device = default_device()
    return _train_head(cache, feats, labels, (train_ids, val_ids), cfg, fold, device, seed)


def _train_head(
    cache: _Cache,
    feats: dict[str, FloatArray],
    labels: dict[str, npt.NDArray[np.int64]],
    split: tuple[list[str], list[str]],
    cfg: NerConfig,
    fold: FoldLayout,
    device: torch.device,
    seed: int,
) -> NerHead:
    train_ids, val_ids = split
    # safetensors: loaded when a head is saved
    from safetensors.torch import save_file
    from torch.utils.tensorboard import SummaryWriter
    from transformers import get_linear_schedule_with_warmup

    head = NerHead(int(cache.vectors.shape[1]), cfg).to(device)
    if cfg.class_balance > 0:
        head.label_weights *= class_weights([labels[i] for i in train_ids], cfg.class_balance)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lengths = {i: len(feats[i]) for i in train_ids}
    per_epoch = math.ceil(math.ceil(len(train_ids) / cfg.batch_size) / cfg.grad_accum)
    total = max(1, math.ceil(cfg.epochs * per_epoch))
    sched = get_linear_schedule_with_warmup(  # type: ignore[no-untyped-call]
        opt, math.ceil(cfg.warmup * total), total
    )
    ckpt = fold.checkpoint
    step, epoch = 0, 0
    identity = {"config": rules.plain(cfg), "train": len(train_ids), "seed": seed}
    state = torch.load(ckpt, weights_only=False) if ckpt.is_file() else None
    if state is not None and state.get("identity") == identity:
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, epoch = int(state["step"]), int(state["epoch"])
        torch.set_rng_state(state["torch_rng"])
    writer = SummaryWriter(str(fold.tensorboard))
    bar = progress(desc=f"{fold.name} head", total=total, initial=step, unit="step")
    while step < total:
        head.train()
        rng = np.random.default_rng([seed, epoch])
        batches = _batches(train_ids, lengths, cfg.batch_size, rng)
        for b, group in enumerate(batches):
            if step >= total:
                break
            vec, feat, lens = collate_essays(
                [cache.get(i) for i in group], [feats[i] for i in group]
            )
            lab = torch.full(vec.shape[:2], -100, dtype=torch.int64)
            for j, i in enumerate(group):
                lab[j, : lens[j]] = torch.from_numpy(labels[i])
            logits = head(vec.to(device), feat.to(device), lens)
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                lab.to(device).reshape(-1),
                weight=head.label_weights,
                ignore_index=-100,
            )
            (loss / cfg.grad_accum).backward()  # type: ignore[no-untyped-call]
            if (b + 1) % cfg.grad_accum == 0 or b == len(batches) - 1:
                nn.utils.clip_grad_norm_(head.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                step += 1
                bar.update(1)
                writer.add_scalar("train/loss", float(loss.detach()), step)
                writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
        epoch += 1
        writer.add_scalar("val/loss", _val_loss(head, cache, feats, labels, val_ids), step)
        state = {
            "head": head.state_dict(),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "step": step,
            "epoch": epoch,
            "torch_rng": torch.get_rng_state(),
            "identity": identity,
        }
        atomic_save(ckpt, lambda p, s=state: torch.save(s, p))  # type: ignore[misc]
    bar.close()
    writer.close()
    weights = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    atomic_save(fold.head, lambda p: save_file(weights, str(p)))
    return head


def class_weights(labels: list[npt.NDArray[np.int64]], power: float) -> torch.Tensor:
    """Per-label loss weights from the classes' word counts; O keeps weight 1."""
    counts = np.bincount(np.concatenate(labels), minlength=NUM_LABELS).astype(np.float64)
    per_class = counts[1::2] + counts[2::2]
    rel = np.maximum(per_class, 1) / max(per_class.max(), 1)
    weights = np.ones(NUM_LABELS)
    weights[1::2] = weights[2::2] = rel**-power
    return torch.tensor(weights, dtype=torch.float32)


def _val_loss(
    head: NerHead,
    cache: _Cache,
    feats: dict[str, FloatArray],
    labels: dict[str, npt.NDArray[np.int64]],
    ids: list[str],
) -> float:
    device = next(head.parameters()).device
    head.eval()
    total, n = 0.0, 0
    with torch.inference_mode():
        for b in range(0, len(ids), 64):
            group = ids[b : b + 64]
            vec, feat, lens = collate_essays(
                [cache.get(i) for i in group], [feats[i] for i in group]
            )
            logits = head(vec.to(device), feat.to(device), lens)
            for j, i in enumerate(group):
                lab = torch.from_numpy(labels[i]).to(device)
                total += float(
                    nn.functional.cross_entropy(logits[j, : lens[j]], lab, reduction="sum")
                )
                n += int(lens[j])
    head.train()
    return total / max(n, 1)
