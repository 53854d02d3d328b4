"""A simulated tagger: word probabilities made from the true labels with class confusions, for
developing and testing the agent before (or without) the NER step's."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from discourse_rl.core.arrays import FloatArray, Probs
from discourse_rl.core.data import (
    NUM_LABELS,
    Corpus,
    labels_to_spans,
    spans_to_frame,
)
from discourse_rl.decoders.segments.gold import gold_spans, spans_frame
from discourse_rl.decoders.segments.types import (
    N_CLASSES,
)

# Pairs a tagger confuses in practice (similar wording or role).
_CONFUSABLE: dict[int, tuple[int, ...]] = {
    0: (1,),  # Lead -> Position
    1: (2, 0),  # Position -> Claim, Lead
    2: (5, 1, 6),  # Claim -> Evidence, Position, Concluding Statement
    3: (4, 2),  # Counterclaim -> Rebuttal, Claim
    4: (3, 2),  # Rebuttal -> Counterclaim, Claim
    5: (2,),  # Evidence -> Claim
    6: (2, 5),  # Concluding Statement -> Claim, Evidence
}
# Rarer, more subtle classes get confused more often (as in real taggers' per-class F1).
_DIFFICULTY = (0.5, 0.8, 1.0, 1.6, 2.0, 0.5, 0.5)


def simulate_word_probs(
    corpus: Corpus, noise: float = 0.5, seed: int = 0, ids: Iterable[str] | None = None
) -> dict[str, FloatArray]:
    """Word probabilities (n_words, 15) that imitate a tagger from the gold labels plus noise.

    Per element, with probabilities growing with `noise`: its class is swapped for a confusable
    one, its start shifts by a few words, its start is missed (it merges into the element before)
    or a spurious start splits it. Class logits then get Gaussian noise correlated over nearby
    words (taggers err in runs, not word by word), and the start share of each class is blurred
    onto neighbouring words and sometimes raised at random. Deterministic for a given corpus,
    noise and seed; noise=0.5 makes naive argmax decoding score about 0.45 macro F1.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, FloatArray] = {}
    kernel = np.hanning(17)[1:-1]
    kernel /= np.sqrt((kernel**2).sum())
    for eid in sorted(corpus.essays) if ids is None else list(ids):
        n = corpus.essays[eid].n_words
        g_cls, g_start, g_end = gold_spans(corpus, eid)
        seen = np.zeros(n, dtype=np.int64)  # 0 = O, 1 + k = class k
        b_share = np.full(n, 0.02)
        for c, s, e in zip(g_cls, g_start, g_end, strict=True):
            c, s, e = int(c), int(s), int(e)
            if rng.random() < 0.4 * noise * _DIFFICULTY[c]:
                c = int(rng.choice(_CONFUSABLE[c]))
            if rng.random() < 0.6 * noise:
                s = int(np.clip(s + rng.integers(-3, 4), 0, max(e - 1, 0)))
            seen[s:e] = 1 + c
            if rng.random() > 0.3 * noise:
                b_share[s] = rng.uniform(0.55, 0.95)
            else:
                b_share[s] = rng.uniform(0.1, 0.5)
            if e - s > 12 and rng.random() < 0.5 * noise:
                b_share[int(rng.integers(s + 4, e - 4))] = rng.uniform(0.3, 0.9)
        # Start mass leaks onto the words next to a start, as taggers hedge boundaries.
        peaks = np.flatnonzero(b_share > 0.3)
        for d in (-1, 1):
            nb = np.clip(peaks + d, 0, n - 1)
            b_share[nb] = np.maximum(b_share[nb], rng.uniform(0, 0.6 * noise, peaks.size))
        spurious = rng.random(n) < 0.01 * noise
        b_share[spurious] = np.maximum(b_share[spurious], rng.uniform(0.1, 0.7, spurious.sum()))
        logits = np.zeros((n, 1 + N_CLASSES))
        logits[np.arange(n), seen] = 4.0
        eps = rng.standard_normal((n + kernel.size - 1, 1 + N_CLASSES))
        smooth = np.stack(
            [np.convolve(eps[:, j], kernel, mode="valid") for j in range(1 + N_CLASSES)], 1
        )
        logits += 2.2 * noise * smooth[:n] + 0.3 * noise * rng.standard_normal(logits.shape)
        logits -= logits.max(1, keepdims=True)
        pc = np.exp(logits)
        pc /= pc.sum(1, keepdims=True)
        p = np.empty((n, NUM_LABELS))
        p[:, 0] = pc[:, 0]
        p[:, 1::2] = pc[:, 1:] * b_share[:, None]
        p[:, 2::2] = pc[:, 1:] * (1 - b_share[:, None])
        out[eid] = p.astype(np.float32)
    return out


def naive_frame(probs: Probs, ids: Iterable[str]) -> pd.DataFrame:
    """Argmax decoding of word probabilities, the 'NER naive' baseline."""

    rows: list[pd.DataFrame] = []
    for eid in ids:
        c, s, e = labels_to_spans(np.asarray(probs[eid]).argmax(1))
        rows.append(spans_to_frame([eid] * c.size, c, s, e))
    return pd.concat(rows, ignore_index=True) if rows else spans_frame([], [])
