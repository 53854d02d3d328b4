"""NER constrained: the best valid tag sequence instead of the per-word argmax.

Viterbi over the 15 word labels on log probabilities, with only valid transitions (I-x only
after B-x or I-x; never first), and at most one span per essay of the classes that the training
essays almost never repeat (in the shared data: Lead, Position, Concluding Statement). That
constraint is enforced exactly, not by dropping extra spans afterwards: the Viterbi state is the
label plus one "already used" bit per limited class (2^k x 15 states), so the decoder finds the
best sequence among those that respect it. Its spans then pass the per-class minimum length and
mean probability that `decode.fit_tuned` fits for them, as NER tuned does for the naive spans.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt

from discourse_rl.core import artefacts, rules
from discourse_rl.core.arrays import FloatArray, IntArray, Spans
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import (
    CLASS_INDEX,
    CLASSES,
    NUM_LABELS,
    Corpus,
    labels_to_spans,
)
from discourse_rl.core.data import unique_classes as once_per_essay
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders.decode import (
    PUBLIC_MIN_PROB,
    PUBLIC_MIN_WORDS,
    DecodeConfig,
    TunedThresholds,
    filter_spans,
    fit_tuned,
)

N_CLASSES = len(CLASSES)
# log(0) would make every path through an impossible-looking label -inf, ties everywhere.
_LOG_FLOOR = 1e-12


@dataclass(frozen=True)
class ConstrainedConfig:
    """Settings of the constrained decoder (`ner-constrained`)."""

    unique_share: float = 0.99
    """A class gets at most one span per essay when this share of training essays has <= 1."""
    max_unique: int = 3
    """At most this many classes are limited (the Viterbi state grows as 2^k)."""
    fit: bool = True
    """Fit the per-class minima on the training essays (else keep the public ones)."""
    max_min_words: int = 30
    """Largest minimum length the fit tries."""
    prob_grid: tuple[float, float, float] = (0.30, 0.90, 0.025)
    """Minimum mean probabilities the fit tries: start, stop (inclusive), step."""

    def __post_init__(self) -> None:
        rules.check_fields(
            self,
            {
                "unique_share": rules.probability,
                "max_unique": lambda v: rules.non_negative(v) or rules.at_most(len(CLASSES))(v),
                "max_min_words": rules.positive,
                "prob_grid": rules.grid,
            },
        )


@dataclass(frozen=True)
class ConstrainedParams:
    """What `fit_constrained` learned: the limited classes and the per-class minima."""

    unique_classes: tuple[int, ...]
    """Class indices (CLASSES order) allowed at most one span per essay."""
    thresholds: TunedThresholds

    def to_json(self) -> dict[str, object]:
        return {
            "unique_classes": [CLASSES[c] for c in self.unique_classes],
            "thresholds": self.thresholds.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object], where: str) -> ConstrainedParams:
        names = data.get("unique_classes")
        th = data.get("thresholds")
        if not isinstance(names, list) or not isinstance(th, Mapping):
            raise DiscourseRLError(f"{where}: not a constrained-decoding file")
        bad = [n for n in names if n not in CLASS_INDEX]
        if bad:
            raise DiscourseRLError(f"{where}: unknown class {bad[0]!r}")
        return cls(tuple(CLASS_INDEX[n] for n in names), TunedThresholds.from_json(th, where))


# ---------------------------------------------------------------------------------------------
# Viterbi


def valid_labels(labels: npt.ArrayLike, unique: Iterable[int] = ()) -> bool:
    """Is this label sequence one the decoder may emit (valid transitions, limits respected)?"""
    lab = np.asarray(labels, dtype=np.int64)
    prev = np.concatenate(([0], lab[:-1]))
    is_i = (lab > 0) & (lab % 2 == 0)
    # I-x continues B-x (= I-x - 1) or I-x.
    if np.any(is_i & (prev != lab) & (prev != lab - 1)):
        return False
    starts = lab[(lab > 0) & (lab % 2 == 1)]
    counts = np.bincount((starts - 1) // 2, minlength=N_CLASSES)
    return all(counts[c] <= 1 for c in unique)


def _sources(unique: Sequence[int]) -> tuple[IntArray, IntArray, IntArray]:
    """The transition structure as gathers, for states ``mask * 15 + label``.

    A step reads from ``ext = [previous scores (S states), best score per mask (M), -inf]``:
    state k's score is the larger of ``ext[a[k]]`` and ``ext[b[k]]``. O and B-x come from the
    best state of their source mask (entering B-x of a limited class sets its bit, which must
    not have been set before); I-x comes from B-x or I-x of the same mask. Also returns the
    states the first word may take.
    """
    n_masks = 1 << len(unique)
    n_states = n_masks * NUM_LABELS
    bit = np.zeros(N_CLASSES, dtype=np.int64)
    for j, c in enumerate(unique):
        bit[c] = 1 << j
    impossible = n_states + n_masks
    a = np.full(n_states, impossible, dtype=np.int64)
    b = np.full(n_states, impossible, dtype=np.int64)
    first: list[int] = []
    for m in range(n_masks):
        row = m * NUM_LABELS
        a[row] = n_states + m  # O
        if m == 0:
            first.append(row)
        for c in range(N_CLASSES):
            lb, li = 1 + 2 * c, 2 + 2 * c
            if bit[c] == 0:
                a[row + lb] = n_states + m
            elif m & bit[c]:
                a[row + lb] = n_states + (m ^ bit[c])
            if m == bit[c]:
                first.append(row + lb)
            a[row + li], b[row + li] = row + lb, row + li
    return a, b, np.array(sorted(first), dtype=np.int64)


def viterbi(probs: FloatArray, unique: Sequence[int] = ()) -> IntArray:
    """The most probable valid label sequence (sum of log probabilities) with at most one span
    of each class in `unique`."""
    n = probs.shape[0]
    if probs.ndim != 2 or probs.shape[1] != NUM_LABELS:
        raise DiscourseRLError(f"constrained: probabilities must be (n_words, 15), {probs.shape}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    a, b, first = _sources(unique)
    n_states = a.size
    n_masks = n_states // NUM_LABELS
    # Emissions of every state, all words at once: the loop then does a few small gathers.
    logp = np.log(np.maximum(probs.astype(np.float64), _LOG_FLOOR))
    emit = np.tile(logp, (1, n_masks))
    hist = np.full((n, n_states), -np.inf)
    took_b = np.zeros((n, n_states), dtype=np.bool_)
    hist[0, first] = emit[0, first]
    tail = np.array([-np.inf])
    for t in range(1, n):
        prev = hist[t - 1]
        ext = np.concatenate((prev, prev.reshape(n_masks, NUM_LABELS).max(1), tail))
        from_a, from_b = ext[a], ext[b]
        took_b[t] = from_b > from_a
        hist[t] = np.maximum(from_a, from_b) + emit[t]
    state = int(np.argmax(hist[-1]))
    out = np.empty(n, dtype=np.int64)
    for t in range(n - 1, 0, -1):
        out[t] = state % NUM_LABELS
        src = int(b[state] if took_b[t, state] else a[state])
        if src >= n_states:  # the best state of a mask: find which one it was
            m = src - n_states
            src = m * NUM_LABELS + int(
                np.argmax(hist[t - 1, m * NUM_LABELS : (m + 1) * NUM_LABELS])
            )
        state = src
    out[0] = state % NUM_LABELS
    return out


def constrained_spans(probs: FloatArray, unique: Sequence[int] = ()) -> Spans:
    """The spans of the Viterbi sequence, before the minima."""
    return labels_to_spans(viterbi(probs, unique))


def decode_constrained(probs: FloatArray, params: ConstrainedParams) -> Spans:
    """Viterbi spans that reach their class's fitted minima (decode_naive's output type)."""
    return filter_spans(probs, constrained_spans(probs, params.unique_classes), params.thresholds)


# ---------------------------------------------------------------------------------------------
# Fitting


def unique_classes(corpus: Corpus, ids: Iterable[str], cfg: ConstrainedConfig) -> tuple[int, ...]:
    """Classes of which at least `cfg.unique_share` of the essays have at most one span, the
    surest first, at most `cfg.max_unique` of them (returned in class order)."""
    return once_per_essay(corpus, ids, cfg.unique_share, cfg.max_unique)


def with_probs(probs: Mapping[str, FloatArray], train_ids: Iterable[str], who: str) -> list[str]:
    """The training essays that have probabilities, in order; none is `who`'s error."""
    ids = [i for i in train_ids if i in probs]
    if not ids:
        raise DiscourseRLError(f"{who}: no training essay has probabilities")
    return ids


def fit_constrained(
    probs: Mapping[str, FloatArray],
    corpus: Corpus,
    train_ids: Iterable[str],
    cfg: ConstrainedConfig | None = None,
) -> ConstrainedParams:
    """Limits and minima from the training essays (their probabilities should be out of fold)."""
    cfg = cfg or ConstrainedConfig()
    ids = with_probs(probs, train_ids, "constrained")
    unique = unique_classes(corpus, ids, cfg)
    dcfg = DecodeConfig(
        min_words=PUBLIC_MIN_WORDS,
        min_prob=PUBLIC_MIN_PROB,
        fit=cfg.fit,
        max_min_words=cfg.max_min_words,
        prob_grid=cfg.prob_grid,
    )
    decoder = partial(constrained_spans, unique=unique)
    thresholds = fit_tuned({i: probs[i] for i in ids}, corpus, dcfg, decoder=decoder)
    return ConstrainedParams(unique, thresholds)


def load_constrained(run_dir: str | Path) -> ConstrainedParams:
    path = RunLayout(run_dir).constrained
    artefacts.verify(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DiscourseRLError(f"{path}: missing (the run has no ner-constrained stage)") from None
    except json.JSONDecodeError as exc:
        raise DiscourseRLError(f"{path}: invalid JSON ({exc})") from None
    return ConstrainedParams.from_json(data, str(path))
