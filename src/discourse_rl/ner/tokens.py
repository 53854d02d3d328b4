"""Essays as model inputs: word features, sub-tokens aligned with words, windows, batches.

MiniLM's WordPiece tokenizer drops ``\\n``, so paragraph breaks reach the model twice: a marker
word (``NerConfig.paragraph_marker``) is inserted before each paragraph's first word, and the head
sees a paragraph-start feature. An essay longer than the encoder's window is cut into windows of
sub-tokens that overlap; each window knows which of its essay's words it covers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from discourse_rl.core.arrays import FloatArray, IntArray
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import Essay
from discourse_rl.ner.config import NerConfig

N_WORD_FEATURES = 6
SENTENCE_END = (".", "!", "?")


# ---------------------------------------------------------------------------------------------
# Words: features and sub-tokens


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
# Windows and batches


# Windows
def window_bounds(
    n_tokens: int, size: int, overlap: int, spread: bool = False
) -> list[tuple[int, int]]:
    """Half-open sub-token ranges of at most `size` tokens, consecutive ones sharing at least
    `overlap`, covering ``[0, n_tokens)``. By default each is `size` long and the last one is
    pulled back to end at the essay's end (training: every window full); `spread`: the same
    number of windows, of equal length and evenly spaced (prediction: no token is encoded more
    often than the overlap asks, and shorter windows cost less attention)."""
    if size <= overlap:
        raise DiscourseRLError(f"ner: window ({size}) must exceed overlap ({overlap})")
    if n_tokens <= size:
        return [(0, n_tokens)]
    step = size - overlap
    if not spread:
        starts = [*range(0, n_tokens - size, step), n_tokens - size]
        return [(s, s + size) for s in starts]
    k = -(-(n_tokens - overlap) // step)
    length = -(-(n_tokens + (k - 1) * overlap) // k)
    while True:  # integer starts may round one overlap down by a token: lengthen until none do
        starts = [j * (n_tokens - length) // (k - 1) for j in range(k)]
        if all(b - a <= length - overlap for a, b in itertools.pairwise(starts)):
            return [(s, s + length) for s in starts]
        length += 1


@dataclass(frozen=True)
class Window:
    """One encoder input: ids with special tokens, and per token the window-local word index."""

    essay: int
    input_ids: IntArray
    token_word: IntArray
    word_start: int
    word_end: int


def essay_windows(
    tokens: EssayTokens,
    essay_index: int,
    size: int,
    overlap: int,
    cls_id: int,
    sep_id: int,
    spread: bool = False,
) -> list[Window]:
    out = []
    for s, e in window_bounds(len(tokens.input_ids), size - 2, overlap, spread):
        tw = tokens.token_word[s:e]
        real = tw[tw >= 0]
        w0, w1 = (int(real.min()), int(real.max()) + 1) if real.size else (0, 0)
        local = np.where(tw >= 0, tw - w0, -1)
        ids = np.concatenate(([cls_id], tokens.input_ids[s:e], [sep_id]))
        out.append(Window(essay_index, ids, np.concatenate(([-1], local, [-1])), w0, w1))
    return out


def all_windows(
    tokens: Sequence[EssayTokens], cfg: NerConfig, cls_id: int, sep_id: int, spread: bool = False
) -> list[Window]:
    """The windows of every essay, in order; each knows its essay's index in `tokens`."""
    return [
        w
        for i, t in enumerate(tokens)
        for w in essay_windows(t, i, cfg.window, cfg.overlap, cls_id, sep_id, spread)
    ]


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
