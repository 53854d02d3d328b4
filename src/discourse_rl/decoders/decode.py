"""Word probabilities -> spans: the two NER baselines.

* NER naive: the argmax label of each word, spans read off the B/I tags, nothing else.
* NER tuned: the same spans, dropped when shorter than a per-class minimum length or when the
  mean probability of their class over their words falls below a per-class minimum. The minima are
  fitted on out-of-fold probabilities; the search starts from a widely used public set.

A span is ``(class_idx, word_start, word_end)`` arrays for one essay, as `data.labels_to_spans`
returns them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from discourse_rl.core import artefacts, rules
from discourse_rl.core.arrays import FloatArray, IntArray, Spans
from discourse_rl.core.common import DiscourseRLError, atomic_write_text
from discourse_rl.core.data import CLASSES, Corpus, labels_to_spans, spans_to_frame
from discourse_rl.core.metric import Score, essay_counts, score

N_CLASSES = len(CLASSES)

# Public thresholds, in CLASSES order (Lead, Position, Claim, Counterclaim, Rebuttal, Evidence,
# Concluding Statement).
PUBLIC_MIN_WORDS = (9, 5, 3, 6, 4, 14, 11)
PUBLIC_MIN_PROB = (0.70, 0.55, 0.55, 0.50, 0.55, 0.65, 0.70)


@dataclass(frozen=True)
class DecodeConfig:
    """Settings of the decoding stage (the `[decode]` table of a run config)."""

    min_words: tuple[int, ...] = PUBLIC_MIN_WORDS
    """Starting per-class minimum span length in words (CLASSES order); used as-is if not fit."""
    min_prob: tuple[float, ...] = PUBLIC_MIN_PROB
    """Starting per-class minimum mean class probability (CLASSES order)."""
    fit: bool = True
    """Fit the minima on the out-of-fold probabilities (else keep the ones above)."""
    max_min_words: int = 30
    """Largest minimum length the fit tries."""
    prob_grid: tuple[float, float, float] = (0.30, 0.90, 0.025)
    """Minimum probabilities the fit tries: start, stop (inclusive), step."""

    def __post_init__(self) -> None:
        for name in ("min_words", "min_prob"):
            value = getattr(self, name)
            if len(value) != N_CLASSES:
                raise rules.ConfigValueError(
                    name, value, f"needs {N_CLASSES} values, one per class"
                )
        rules.check_fields(
            self,
            {
                "min_words": rules.each(rules.non_negative),
                "min_prob": rules.each(rules.probability),
                "max_min_words": rules.positive,
                "prob_grid": rules.grid,
            },
        )


@dataclass(frozen=True)
class TunedThresholds:
    """Per-class minima (CLASSES order) that a kept span must reach."""

    min_words: tuple[int, ...]
    min_prob: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.min_words) != N_CLASSES or len(self.min_prob) != N_CLASSES:
            raise DiscourseRLError(f"decode: thresholds need {N_CLASSES} values per list")

    def to_json(self) -> dict[str, dict[str, float]]:
        return {
            c: {"min_words": int(w), "min_prob": float(p)}
            for c, w, p in zip(CLASSES, self.min_words, self.min_prob, strict=True)
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Mapping[str, float]], where: str) -> TunedThresholds:
        try:
            return cls(
                tuple(int(data[c]["min_words"]) for c in CLASSES),
                tuple(float(data[c]["min_prob"]) for c in CLASSES),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DiscourseRLError(f"{where}: not a thresholds file ({exc!r})") from None


def decode_naive(probs: FloatArray) -> Spans:
    """Argmax label per word, spans from the B/I tags."""
    return labels_to_spans(np.argmax(probs, axis=1))


def span_probs(probs: FloatArray, spans: Spans) -> npt.NDArray[np.float64]:
    """Mean over each span's words of P(B-class) + P(I-class) of the span's class."""
    cls, start, end = spans
    if cls.size == 0:
        return np.zeros(0)
    cum = np.vstack([np.zeros((1, probs.shape[1])), np.cumsum(probs, axis=0, dtype=np.float64)])
    b, i = 1 + 2 * cls, 2 + 2 * cls
    total = cum[end, b] - cum[start, b] + cum[end, i] - cum[start, i]
    return np.asarray(total / (end - start), dtype=np.float64)


def filter_spans(probs: FloatArray, spans: Spans, thresholds: TunedThresholds) -> Spans:
    """The spans that reach their class's minimum length and mean probability."""
    cls, start, end = spans
    keep = ((end - start) >= np.asarray(thresholds.min_words)[cls]) & (
        span_probs(probs, (cls, start, end)) >= np.asarray(thresholds.min_prob)[cls]
    )
    return cls[keep], start[keep], end[keep]


def decode_tuned(probs: FloatArray, thresholds: TunedThresholds) -> Spans:
    """Naive spans, minus those below their class's minimum length or mean probability."""
    return filter_spans(probs, decode_naive(probs), thresholds)


def decode_all(
    probs: Mapping[str, FloatArray], decode: Callable[[FloatArray], Spans]
) -> pd.DataFrame:
    """A submission table (id, class, predictionstring, word_start, word_end) for many essays."""
    ids: list[str] = []
    parts: list[Spans] = []
    for essay_id, p in probs.items():
        spans = decode(p)
        ids += [essay_id] * spans[0].size
        parts.append(spans)
    if not parts:
        empty = np.zeros(0, dtype=np.int64)
        return spans_to_frame([], empty, empty, empty)
    cls, start, end = (np.concatenate([p[j] for p in parts]) for j in range(3))
    return spans_to_frame(ids, cls, start, end)


# ---------------------------------------------------------------------------------------------
# Fitting


@dataclass(frozen=True)
class _Candidates:
    ids: list[str]
    n_gt: IntArray  # (essays, classes): true spans
    essay: IntArray  # per naive span: its essay's row in `ids`
    cls: IntArray
    length: IntArray
    prob: npt.NDArray[np.float64]
    hit: npt.NDArray[np.bool_]


def _candidates(
    probs: Mapping[str, FloatArray],
    corpus: Corpus,
    decoder: Callable[[FloatArray], Spans] = decode_naive,
) -> _Candidates:
    """Every span `decoder` finds (naive by default) with its length, mean probability and
    whether it hits a true span.

    The decoder's spans must never overlap one another (naive spans do not), so (ties at exactly
    half aside) each hits at most one true span and no true span is hit twice: a span's hit does
    not depend on which others are kept.
    """
    ids = list(probs)
    missing = [i for i in ids if i not in corpus.essays]
    if missing:
        raise DiscourseRLError(f"decode: essay {missing[0]!r} has probabilities but no labels")
    n_gt = np.zeros((len(ids), N_CLASSES), dtype=np.int64)
    parts: list[tuple[IntArray, ...]] = []
    hits: list[bool] = []
    probs_l: list[npt.NDArray[np.float64]] = []
    for row, essay_id in enumerate(ids):
        p = probs[essay_id]
        cls, start, end = decoder(p)
        el = corpus.essay_elements(essay_id)
        gc, gs, ge = (el[c].to_numpy(np.int64) for c in ("class_idx", "word_start", "word_end"))
        n_gt[row] = np.bincount(gc, minlength=N_CLASSES)
        for c, s, e in zip(cls, start, end, strict=True):
            counts = essay_counts(np.array([c]), np.array([s]), np.array([e]), gc, gs, ge)
            hits.append(bool(counts[c, 0]))
        parts.append((np.full(cls.size, row, dtype=np.int64), cls, end - start))
        probs_l.append(span_probs(p, (cls, start, end)))
    essay, cls, length = (
        np.concatenate([q[j] for q in parts]) if parts else np.zeros(0, np.int64) for j in range(3)
    )
    prob = np.concatenate(probs_l) if probs_l else np.zeros(0)
    return _Candidates(ids, n_gt, essay, cls, length, prob, np.array(hits, dtype=np.bool_))


def _fit(cand: _Candidates, cfg: DecodeConfig, rows: npt.NDArray[np.bool_]) -> TunedThresholds:
    """Per class, the grid point with the best F1 over the essays in `rows` (classes are scored
    independently, so each class's pair of minima is searched alone)."""
    lo, hi, step = cfg.prob_grid
    probs_grid = np.round(np.arange(lo, hi + step / 2, step), 6)
    words_grid = np.arange(cfg.max_min_words + 1)
    n_gt_all = cand.n_gt[rows].sum(0)
    in_rows = rows[cand.essay]
    min_words, min_prob = list(cfg.min_words), list(cfg.min_prob)
    for c in range(N_CLASSES):
        n_gt = int(n_gt_all[c])
        if n_gt == 0:
            continue
        sel = in_rows & (cand.cls == c)
        length, prob, hit = cand.length[sel], cand.prob[sel], cand.hit[sel]
        keep = (length[None, None, :] >= words_grid[:, None, None]) & (
            prob[None, None, :] >= probs_grid[None, :, None]
        )
        tp = (keep & hit).sum(-1)
        n_pred = keep.sum(-1)
        f1 = tp / (tp + 0.5 * (n_pred - tp + n_gt - tp))
        # Keep the starting point unless the grid does strictly better.
        w0 = min(min_words[c], cfg.max_min_words)
        start = f1[w0, int(np.argmin(abs(probs_grid - min_prob[c])))]
        w, p = np.unravel_index(int(np.argmax(f1)), f1.shape)
        if f1[w, p] > start + 1e-12:
            min_words[c], min_prob[c] = int(words_grid[w]), float(probs_grid[p])
    return TunedThresholds(tuple(min_words), tuple(min_prob))


def fit_tuned(
    probs: Mapping[str, FloatArray],
    corpus: Corpus,
    cfg: DecodeConfig | None = None,
    decoder: Callable[[FloatArray], Spans] = decode_naive,
) -> TunedThresholds:
    """Per-class minima maximising each class's F1 on `probs` (out-of-fold) against `corpus`,
    for the spans of `decoder` (naive by default; its spans must not overlap one another)."""
    cfg = cfg or DecodeConfig()
    start = TunedThresholds(tuple(cfg.min_words), tuple(cfg.min_prob))
    if not cfg.fit:
        return start
    cand = _candidates(probs, corpus, decoder)
    return _fit(cand, cfg, np.ones(len(cand.ids), dtype=np.bool_))


@dataclass(frozen=True)
class DecodeReport:
    """Out-of-fold scores of the decodings, for `RUN/ner/metrics.json`."""

    naive: Score
    public: Score
    tuned: Score
    tuned_cross_fitted: Score
    """Each fold decoded with minima fitted on the other folds: an unbiased estimate."""
    thresholds: TunedThresholds


def evaluate_decoding(
    probs: Mapping[str, FloatArray],
    corpus: Corpus,
    folds: Mapping[str, int],
    cfg: DecodeConfig | None = None,
) -> DecodeReport:
    """Fit the minima on all essays, score naive / public / tuned, and cross-fit the tuned one."""
    cfg = cfg or DecodeConfig()
    cand = _candidates(probs, corpus)
    everything = np.ones(len(cand.ids), dtype=np.bool_)
    public = TunedThresholds(tuple(cfg.min_words), tuple(cfg.min_prob))
    tuned = _fit(cand, cfg, everything) if cfg.fit else public
    fold_of = np.array([folds[i] for i in cand.ids])
    frames = []
    for k in np.unique(fold_of):
        th = _fit(cand, cfg, fold_of != k) if cfg.fit else public
        part = {i: probs[i] for i, f in zip(cand.ids, fold_of, strict=True) if f == k}
        frames.append(decode_all(part, partial(decode_tuned, thresholds=th)))
    gt = corpus.elements[corpus.elements["id"].isin(set(cand.ids))]
    return DecodeReport(
        naive=score(decode_all(probs, decode_naive), gt),
        public=score(decode_all(probs, lambda p: decode_tuned(p, public)), gt),
        tuned=score(decode_all(probs, lambda p: decode_tuned(p, tuned)), gt),
        tuned_cross_fitted=score(pd.concat(frames, ignore_index=True), gt),
        thresholds=tuned,
    )


def save_thresholds(path: str | Path, thresholds: TunedThresholds) -> None:
    atomic_write_text(path, json.dumps(thresholds.to_json(), indent=2) + "\n")


def load_thresholds(path: str | Path) -> TunedThresholds:

    path = Path(path)
    if not path.is_file():
        raise DiscourseRLError(f"{path}: thresholds not found (run train-ner first)")
    artefacts.verify(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise artefacts.unreadable(path, "a thresholds file", exc) from None
    try:
        return TunedThresholds.from_json(data, str(path))
    except DiscourseRLError:
        raise artefacts.unreadable(path, "a thresholds file") from None


def report_to_json(report: DecodeReport) -> dict[str, object]:
    return {
        "naive": report.naive.to_dict(),
        "public_thresholds": report.public.to_dict(),
        "tuned": report.tuned.to_dict(),
        "tuned_cross_fitted": report.tuned_cross_fitted.to_dict(),
        "thresholds": report.thresholds.to_json(),
    }
