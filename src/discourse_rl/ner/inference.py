"""Running trained models over essays: word vectors (frozen encoder), word probabilities
(heads over cached vectors, or fold models over windows), in bf16 where the hardware has it.

Fold models fine-tuned from one backbone with frozen lower layers share those layers bit for
bit; `reuse_shared_layers` runs them once per batch for the whole ensemble.
"""

from __future__ import annotations

import copy
import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from discourse_rl.core.arrays import FloatArray
from discourse_rl.core.data import NUM_LABELS, Essay
from discourse_rl.launch.distributed import local_rank
from discourse_rl.ner import precision
from discourse_rl.ner.backbone import encoder_inputs, encoder_parts, hidden_size, special_ids
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.model import NerHead, NerModel, pool_words
from discourse_rl.ner.tokens import (
    EssayTokens,
    Window,
    all_windows,
    collate_essays,
    pad_windows,
    token_batches,
    tokenize_essays,
    window_inputs,
    word_features,
)

_M = TypeVar("_M", bound=nn.Module)

PIECE_WORDS = 8192
"""Longest run of words predicted as one piece. Student essays stay far below it (the longest
of the shared data's 14,099 essays has 1,656 words), so their results do not change; a longer
text (a 5 MB file holds hundreds of thousands of words) is cut into pieces of this many words."""
GROUP_WORDS = 32768
"""Words predicted together. Each group's per-word sums (frozen mode: n_words x hidden floats,
50 MB for MiniLM) and windows are freed before the next, so memory stays bounded whatever the
number and the length of the essays; the encoder's batches are bounded by `encode_tokens`."""


def default_device() -> torch.device:
    """This process's device: under a launcher, the GPU of its LOCAL_RANK (one per process)."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def bf16_available(device: torch.device) -> bool:
    """Whether bf16 runs at all: a GPU that has it; every CPU (natively or emulated, whether it
    is worth it is measured: `precision`)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return True


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


def int8_encoder_copy(model: _M) -> _M:
    """An inference copy whose encoder's linear layers compute in int8 (weights quantised once,
    activations per call: `quantize_dynamic`; CPU only, VNNI kernels where the CPU has them).
    Layer norms, attention softmax and the head stay fp32."""

    out = copy.deepcopy(model).eval()
    with warnings.catch_warnings():
        # torch 2.9-2.13 warn that eager quantisation moves to torchao; it still works.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        if isinstance(out, NerModel):
            out.encoder = quantize_linears(out.encoder)
            return out
        return quantize_linears(out)


def quantize_linears(module: _M) -> _M:
    quantized: _M = torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
        module, {nn.Linear}, dtype=torch.qint8, inplace=True
    )
    return quantized


def for_inference(model: _M, cfg: NerConfig, device: torch.device) -> _M:
    """`model` ready to predict in the precision `cfg` gives on this machine
    (`precision.infer_precision`: measured where `bf16 = "auto"`): a bf16 encoder copy, a
    dynamically quantised one (int8, CPU only), or the model itself in eval mode (fp32)."""
    dtype = precision.infer_precision(cfg, device, model)
    if dtype == "int8" and device.type == "cpu":
        return int8_encoder_copy(model)
    if dtype == "bf16":
        return bf16_encoder_copy(model)
    return model.eval()


@dataclass(frozen=True)
class Reading:
    """How trained models read essays (the same four things travel to every reader)."""

    tokenizer: Any
    cfg: NerConfig
    """The tagger's settings: windows, inference batch size and precision."""
    device: torch.device
    progress: Any = None
    """A bar that ticks per batch of windows, or None."""
    prepared: bool = False
    """The models already went through `for_inference` (the caller keeps prepared copies)."""


def encode_word_vectors(
    encoder: nn.Module, essays: Sequence[Essay], how: Reading
) -> list[FloatArray]:
    """Frozen encoder -> per essay (n_words, hidden) word vectors: the mean of a word's
    sub-token states within a window, averaged over the windows that contain the word."""
    cfg, device = how.cfg, how.device
    tokens, windows, pad_id = _windows(how.tokenizer, essays, cfg)
    sums, counts = _accumulators(tokens, hidden_size(encoder))
    if not how.prepared:
        encoder = for_inference(encoder, cfg, device)
    for group in _batches(windows, cfg, how.progress):
        inputs = pad_windows(group, pad_id)
        with torch.inference_mode():
            hidden = encoder(
                **encoder_inputs(
                    encoder, inputs["input_ids"].to(device), inputs["attention_mask"].to(device)
                )
            ).last_hidden_state
        n_local = max(w.word_end - w.word_start for w in group)
        pooled = pool_words(hidden.float().cpu(), inputs["token_word"], max(n_local, 1)).numpy()
        for k, w in enumerate(group):
            n = w.word_end - w.word_start
            present = np.bincount(w.token_word[w.token_word >= 0], minlength=n)[:n] > 0
            sums[w.essay][w.word_start : w.word_end][present] += pooled[k, :n][present]
            counts[w.essay][w.word_start : w.word_end] += present
    return _window_means(sums, counts)


def _windows(
    tokenizer: Any, essays: Sequence[Essay], cfg: NerConfig, spread: bool = False
) -> tuple[list[EssayTokens], list[Window], int]:
    """The essays' sub-tokens, the windows of them all, and the padding id."""
    tokens = tokenize_essays(tokenizer, essays, cfg.paragraph_marker)
    cls_id, sep_id, pad_id = special_ids(tokenizer)
    return tokens, all_windows(tokens, cfg, cls_id, sep_id, spread), pad_id


def _accumulators(
    tokens: Sequence[EssayTokens], width: int
) -> tuple[list[FloatArray], list[FloatArray]]:
    """Per essay, zeroed (n_words, width) sums and (n_words,) counts of window outputs."""
    sums = [np.zeros((t.n_words, width), dtype=np.float32) for t in tokens]
    return sums, [np.zeros(t.n_words, dtype=np.float32) for t in tokens]


def _batches(windows: Sequence[Window], cfg: NerConfig, progress: Any) -> Iterator[list[Window]]:
    """Windows in batches of similar length; `progress` counts the sub-tokens done."""
    for batch in token_batches(windows, cfg.encode_tokens):
        group = [windows[i] for i in batch]
        yield group
        if progress is not None:
            progress.update(sum(len(w.input_ids) for w in group))


def essay_pieces(essay: Essay, max_words: int = PIECE_WORDS) -> list[Essay]:
    """`essay` as pieces of at most `max_words` words, cut between words (text kept as is, so
    paragraph breaks stay visible); one piece for any student essay."""
    if essay.n_words <= max_words:
        return [essay]
    starts, pos = [], 0
    for w in essay.words:
        start = essay.text.find(w, pos)
        starts.append(start)
        pos = start + len(w)
    cuts = [starts[k] for k in range(0, essay.n_words, max_words)] + [len(essay.text)]
    return [
        Essay.from_text(f"{essay.id}#{k}", essay.text[a:b])
        for k, (a, b) in enumerate(itertools.pairwise(cuts))
    ]


def predict_in_groups(
    essays: Sequence[Essay],
    predict: Callable[[list[Essay]], list[FloatArray]],
    group_words: int | None = None,
    piece_words: int | None = None,
) -> list[FloatArray]:
    """`predict` over groups of at most `group_words` words (default `GROUP_WORDS`; long
    essays cut into pieces of `piece_words`, default `PIECE_WORDS`), each essay's word
    probabilities put back together in order."""
    group_words = group_words or GROUP_WORDS
    piece_words = piece_words or PIECE_WORDS
    pieces = [(i, p) for i, e in enumerate(essays) for p in essay_pieces(e, piece_words)]
    parts: list[list[FloatArray]] = [[] for _ in essays]
    group: list[tuple[int, Essay]] = []
    words = 0
    for i, piece in [*pieces, (-1, None)]:
        if group and (piece is None or words + piece.n_words > group_words):
            for (owner, _), probs in zip(group, predict([p for _, p in group]), strict=True):
                parts[owner].append(probs)
            group, words = [], 0
        if piece is not None:
            group.append((i, piece))
            words += piece.n_words
    return [p[0] if len(p) == 1 else np.concatenate(p) for p in parts]


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


def window_probs(
    models: Sequence[NerModel], essays: Sequence[Essay], how: Reading
) -> list[FloatArray]:
    """'finetune' mode: per word, label probabilities averaged over windows (cut as
    `cfg.predict_windows` says) and models."""
    cfg, device = how.cfg, how.device
    tokens, windows, pad_id = _windows(how.tokenizer, essays, cfg, cfg.predict_windows == "spread")
    feats = [word_features(e) for e in essays]
    sums, counts = _accumulators(tokens, NUM_LABELS)
    if not how.prepared:
        models = [for_inference(m, cfg, device) for m in models]
    with reuse_shared_layers(models):
        for group in _batches(windows, cfg, how.progress):
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
    return _window_means(sums, counts)


# ---------------------------------------------------------------------------------------------
# Fold models that share their frozen lower layers


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(_same_value(sa[k], sb[k]) for k in sa)


def _same_value(a: Any, b: Any) -> bool:
    """Equal state-dict entries; int8 layers hold packed (weight, bias) tuples and a dtype."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.is_quantized or b.is_quantized:
            return a.is_quantized == b.is_quantized and torch.equal(a.dequantize(), b.dequantize())
        return torch.equal(a, b)
    if isinstance(a, tuple | list) and isinstance(b, tuple | list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def shared_depth(models: Sequence[nn.Module]) -> int:
    """How many lower encoder layers (embeddings included) every model has bit for bit: the
    frozen part of fold models fine-tuned from one backbone. 0 when not comparable."""
    parts = [encoder_parts(m) for m in models]
    if len(models) < 2 or any(p is None for p in parts):
        return 0
    first, *rest = [p for p in parts if p is not None]
    if not all(_same_tensors(first[0], r[0]) for r in rest):
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
    parts = [encoder_parts(m) for m in models]
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
