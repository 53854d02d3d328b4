"""Cross-fitted training of the NER stage: k fold models, out-of-fold word probabilities.

Everything lands in the run folder and every step is resumable: the encoder cache is written in
chunks, each fold keeps a checkpoint per epoch (frozen mode) or Trainer checkpoints (finetune
mode), and finished folds are skipped. `train_ner` is what the CLI and the pipeline call.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from tqdm.auto import tqdm

from discourse_rl.common import (
    DiscourseRLError,
    atomic_save,
    atomic_write_text,
    config_from_dict,
    config_to_toml,
    load_toml,
)
from discourse_rl.data import (
    NUM_LABELS,
    Corpus,
    Essay,
    load_word_probs,
    make_folds,
    save_word_probs,
)
from discourse_rl.decode import (
    DecodeConfig,
    DecodeReport,
    evaluate_decoding,
    report_to_json,
    save_thresholds,
)
from discourse_rl.ner import (
    FloatArray,
    NerConfig,
    NerHead,
    NerModel,
    bf16_available,
    collate_essays,
    default_device,
    encode_word_vectors,
    essay_windows,
    fold_dirs,
    freeze_lower,
    head_probs,
    hidden_size,
    load_encoder,
    load_tokenizer,
    predict_word_probs,
    resolve_backbone,
    special_ids,
    tokenize_essays,
    torch_threads,
    window_inputs,
    window_probs,
    word_features,
    write_json,
)

CACHE_CHUNK = 512


@dataclass(frozen=True)
class NerRecord:
    """What `RUN/ner/config.toml` holds: the resolved NER settings and the seed they ran with."""

    seed: int
    """Seed of folds, initialisation and shuffling."""
    ner: NerConfig
    """The NER settings."""


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
    run = Path(out_dir)
    torch.manual_seed(seed)
    if cfg.max_essays and cfg.max_essays < len(corpus.essays):
        rng = np.random.default_rng(seed)
        keep = sorted(rng.choice(sorted(corpus.essays), cfg.max_essays, replace=False))
        corpus = corpus.subset(keep)
    folds = make_folds(corpus, cfg.folds, seed)
    atomic_write_text(run / "ner" / "config.toml", config_to_toml(NerRecord(seed, cfg)))
    write_json(run / "ner" / "folds.json", folds)
    enc_dir = run / "ner" / "encoder"
    if not (enc_dir / "config.json").is_file():
        backbone = resolve_backbone(cfg.backbone)
        load_tokenizer(backbone).save_pretrained(str(enc_dir))
        encoder: Any = load_encoder(backbone)
        encoder.save_pretrained(str(enc_dir))
    if cfg.mode not in ("frozen", "finetune"):
        raise DiscourseRLError(f"ner.mode: expected 'frozen' or 'finetune', got {cfg.mode!r}")
    with torch_threads(cfg.threads):
        if cfg.mode == "frozen":
            _train_frozen(corpus, cfg, run, folds, seed)
        else:
            _train_finetune(corpus, cfg, run, folds, seed)
    oof: dict[str, FloatArray] = {}
    for d in fold_dirs(run, cfg.folds):
        oof.update(load_word_probs(d / "oof.npz"))
    oof_path = run / "ner" / "oof.npz"
    save_word_probs(oof_path, oof)
    test_path = None
    if corpus.test_essays:
        test_path = run / "ner" / "test.npz"
        save_word_probs(test_path, predict_word_probs(run, corpus.test_essays))
    return NerResult(run, oof_path, test_path, folds, time.perf_counter() - t0)


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text()) if path.is_file() else None


def _fold_split(folds: dict[str, int], k: int) -> tuple[list[str], list[str]]:
    train = [i for i, f in folds.items() if f != k]
    return train, [i for i, f in folds.items() if f == k]


# ---------------------------------------------------------------------------------------------
# Frozen encoder: cache once, train a head per fold


@dataclass
class _Cache:
    vectors: npt.NDArray[np.float16]
    offsets: dict[str, tuple[int, int]]

    def get(self, essay_id: str) -> npt.NDArray[np.float16]:
        s, e = self.offsets[essay_id]
        return self.vectors[s:e]


def build_cache(corpus: Corpus, cfg: NerConfig, run: Path) -> _Cache:
    """Word vectors of every essay in one float16 array, filled chunk by chunk (resumable)."""
    cache_dir = run / "ner" / "cache"
    ids = sorted(corpus.essays)
    lengths = np.array([corpus.essays[i].n_words for i in ids], dtype=np.int64)
    offsets = _offsets(ids, lengths.tolist())
    device = default_device()
    encoder = load_encoder(run / "ner" / "encoder").to(device)
    tokenizer = load_tokenizer(run / "ner" / "encoder")
    hid = hidden_size(encoder)
    path = cache_dir / "vectors.npy"
    index_path = cache_dir / "index.json"
    progress_path = cache_dir / "progress.json"
    import json

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
        old = json.loads(index_path.read_text())
        done = int(json.loads(progress_path.read_text())["done"])
        if _covers(old, index, done):
            # A finished cache of more essays (e.g. all of them, read now by the sure-only run).
            return _Cache(np.load(path, mmap_mode="r"), _offsets(old["ids"], old["lengths"]))
        done = done if old == index else 0
    if done == 0:
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(
            path, mode="w+", dtype=np.float16, shape=(int(lengths.sum()), hid)
        )
        write_json(index_path, index)
        write_json(progress_path, {"done": 0})
    vectors = np.load(path, mmap_mode="r+")
    if done < len(ids):
        bar = tqdm(desc="encode essays", total=len(ids), initial=done, unit="essay")
        for c in range(done, len(ids), CACHE_CHUNK):
            chunk = ids[c : c + CACHE_CHUNK]
            vecs = encode_word_vectors(
                encoder, tokenizer, [corpus.essays[i] for i in chunk], cfg, device
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


def load_cache(run: Path, corpus: Corpus) -> tuple[_Cache, list[str]]:
    """A run's cache as it stands (read-only), and the essays already encoded in it."""
    import json

    cache_dir = run / "ner" / "cache"
    try:
        index = json.loads((cache_dir / "index.json").read_text())
        done = int(json.loads((cache_dir / "progress.json").read_text())["done"])
        vectors = np.load(cache_dir / "vectors.npy", mmap_mode="r")
    except FileNotFoundError:
        raise DiscourseRLError(f"{run}: no encoder cache (train it in 'frozen' mode)") from None
    ids: list[str] = index["ids"]
    if not set(ids) <= set(corpus.essays):
        raise DiscourseRLError(f"{cache_dir}: cached essays are not all in this data folder")
    lengths = index.get("lengths") or [corpus.essays[i].n_words for i in ids]
    return _Cache(vectors, _offsets(ids, lengths)), ids[:done]


def _train_frozen(
    corpus: Corpus, cfg: NerConfig, run: Path, folds: dict[str, int], seed: int
) -> None:
    cache = build_cache(corpus, cfg, run)
    ids = sorted(corpus.essays)
    feats = {i: word_features(corpus.essays[i]) for i in ids}
    labels = {i: corpus.word_labels(i).astype(np.int64) for i in ids}
    device = default_device()
    for k, fold_dir in enumerate(fold_dirs(run, cfg.folds)):
        train_ids, val_ids = _fold_split(folds, k)
        done = {"config": asdict(cfg), "train": len(train_ids), "seed": seed + k}
        if (fold_dir / "oof.npz").is_file() and _read_json(fold_dir / "done.json") == done:
            continue
        head = train_head(cache, feats, labels, train_ids, val_ids, cfg, fold_dir, seed + k)
        vecs = [cache.get(i) for i in val_ids]
        probs = head_probs([head.to(device)], vecs, [feats[i] for i in val_ids], device)
        save_word_probs(fold_dir / "oof.npz", dict(zip(val_ids, probs, strict=True)))
        write_json(fold_dir / "done.json", done)


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
    fold_dir: Path,
    seed: int,
) -> NerHead:
    """A plain loop (the Trainer adds nothing on a cache): AdamW, warm-up then linear decay,
    an epoch checkpoint to resume from, tqdm, TensorBoard."""
    torch.manual_seed(seed)
    device = default_device()
    return _train_head(cache, feats, labels, (train_ids, val_ids), cfg, fold_dir, device, seed)


def _train_head(
    cache: _Cache,
    feats: dict[str, FloatArray],
    labels: dict[str, npt.NDArray[np.int64]],
    split: tuple[list[str], list[str]],
    cfg: NerConfig,
    fold_dir: Path,
    device: torch.device,
    seed: int,
) -> NerHead:
    train_ids, val_ids = split
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
    ckpt = fold_dir / "checkpoint.pt"
    step, epoch = 0, 0
    identity = {"config": asdict(cfg), "train": len(train_ids), "seed": seed}
    state = torch.load(ckpt, weights_only=False) if ckpt.is_file() else None
    if state is not None and state.get("identity") == identity:
        head.load_state_dict(state["head"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, epoch = int(state["step"]), int(state["epoch"])
        torch.set_rng_state(state["torch_rng"])
    writer = SummaryWriter(str(fold_dir / "tensorboard"))
    bar = tqdm(desc=f"{fold_dir.name} head", total=total, initial=step, unit="step")
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
    atomic_save(fold_dir / "head.safetensors", lambda p: save_file(weights, str(p)))
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


# ---------------------------------------------------------------------------------------------
# Finetune: encoder and head end to end with the transformers Trainer


class _WindowData(torch.utils.data.Dataset[dict[str, Any]]):
    def __init__(self, windows: list[Any]) -> None:
        self.windows = windows

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        # input_ids lets the Trainer's length-grouped sampler measure the window.
        return {"window": self.windows[i], "input_ids": self.windows[i].input_ids}


def _train_finetune(
    corpus: Corpus, cfg: NerConfig, run: Path, folds: dict[str, int], seed: int
) -> None:
    from safetensors.torch import save_file
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    tokenizer = load_tokenizer(run / "ner" / "encoder")
    ids = sorted(corpus.essays)
    essays: list[Essay] = [corpus.essays[i] for i in ids]
    feats = [word_features(e) for e in essays]
    labels = [corpus.word_labels(i) for i in ids]
    tokens = tokenize_essays(tokenizer, essays, cfg.paragraph_marker)
    cls_id, sep_id, pad_id = special_ids(tokenizer)
    position = {i: n for n, i in enumerate(ids)}
    device = default_device()
    for k, fold_dir in enumerate(fold_dirs(run, cfg.folds)):
        if (fold_dir / "oof.npz").is_file() and (fold_dir / "model.safetensors").is_file():
            continue
        train_ids, val_ids = _fold_split(folds, k)
        windows = [
            w
            for i in train_ids
            for w in essay_windows(
                tokens[position[i]], position[i], cfg.window, cfg.overlap, cls_id, sep_id
            )
        ]
        torch.manual_seed(seed + k)
        encoder = load_encoder(run / "ner" / "encoder", cfg.attention_dropout, cfg.hidden_dropout)
        model = NerModel(encoder, cfg)
        freeze_lower(model, cfg.freeze_layers)
        ckpt_dir = fold_dir / "checkpoints"
        args = TrainingArguments(
            output_dir=str(ckpt_dir),
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            num_train_epochs=cfg.epochs,
            learning_rate=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_steps=cfg.warmup,
            lr_scheduler_type="linear",
            bf16=cfg.bf16 and bf16_available(device),
            use_cpu=device.type == "cpu",
            train_sampling_strategy="group_by_length",
            save_strategy="steps",
            save_steps=cfg.save_every,
            save_total_limit=1,
            logging_steps=10,
            report_to=["tensorboard"],
            remove_unused_columns=False,
            label_names=["labels"],
            seed=seed + k,
            dataloader_num_workers=0,
        )

        def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            return window_inputs([it["window"] for it in items], feats, pad_id, labels)

        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=_WindowData(windows),
            data_collator=collate,
            optimizers=(_optimizer(model, cfg), None),
        )
        last = get_last_checkpoint(str(ckpt_dir)) if ckpt_dir.is_dir() else None  # type: ignore[no-untyped-call]
        trainer.train(resume_from_checkpoint=last)
        weights = {k2: v.detach().cpu().contiguous() for k2, v in model.state_dict().items()}

        def write(path: Path, w: dict[str, torch.Tensor] = weights) -> None:
            save_file(w, str(path))

        atomic_save(fold_dir / "model.safetensors", write)
        val = [essays[position[i]] for i in val_ids]
        probs = window_probs([model], tokenizer, val, cfg, device)
        save_word_probs(fold_dir / "oof.npz", dict(zip(val_ids, probs, strict=True)))


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


# ---------------------------------------------------------------------------------------------
# The whole stage, as `discourse-rl train-ner` runs it


@dataclass(frozen=True)
class NerStageConfig:
    """The part of a run config that the NER stage reads."""

    seed: int = 0
    """Seed of folds, initialisation and shuffling."""
    ner: NerConfig = field(default_factory=NerConfig)
    """Model and training."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """Span decoding."""


def stage_config(path: str | Path | None, **overrides: Any) -> NerStageConfig:
    """The `seed`, `[ner]` and `[decode]` of a TOML file (other tables belong to later stages)."""
    raw = load_toml(path) if path is not None else {}
    mine: dict[str, Any] = {k: raw[k] for k in ("seed", "ner", "decode") if k in raw}
    cfg = config_from_dict(NerStageConfig, mine, where=str(path or "config"))
    ner_over = {k: v for k, v in overrides.items() if v is not None and k != "seed"}
    if ner_over:
        cfg = replace(cfg, ner=replace(cfg.ner, **ner_over))
    if overrides.get("seed") is not None:
        cfg = replace(cfg, seed=int(overrides["seed"]))
    return cfg


def train_ner_stage(corpus: Corpus, cfg: NerStageConfig, out_dir: str | Path) -> DecodeReport:
    """Train the fold models, then fit and score the decodings on the out-of-fold probabilities."""
    run = Path(out_dir)
    atomic_write_text(run / "config.toml", config_to_toml(cfg))
    result = train_ner(corpus, cfg.ner, run, cfg.seed)
    oof = load_word_probs(result.oof_path)
    report = evaluate_decoding(oof, corpus, result.folds, cfg.decode)
    save_thresholds(run / "decode.json", report.thresholds)
    metrics = report_to_json(report)
    metrics["seconds"] = round(result.seconds, 1)
    metrics["essays"] = len(oof)
    write_json(run / "ner" / "metrics.json", metrics)
    return report
