"""Essays and their discourse elements (the corpus), word labels, folds and stage hand-offs.

Spans are half-open word ranges ``[word_start, word_end)`` over ``text.split()`` words.
The Kaggle ``predictionstring`` (space-separated word indices) is what the metric scores, so the
element table keeps it verbatim beside the word range derived from it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from discourse_rl.core import artefacts
from discourse_rl.core.arrays import IntArray
from discourse_rl.core.common import DiscourseRLError, atomic_save

CLASSES: tuple[str, ...] = (
    "Lead",
    "Position",
    "Claim",
    "Counterclaim",
    "Rebuttal",
    "Evidence",
    "Concluding Statement",
)
CLASS_INDEX: dict[str, int] = {c: i for i, c in enumerate(CLASSES)}
# Label 0 is O; class k has B at 1 + 2k and I at 2 + 2k.
LABELS: tuple[str, ...] = ("O", *(f"{p}-{c}" for c in CLASSES for p in ("B", "I")))
NUM_LABELS = len(LABELS)
# Essays whose annotations were matched to them without doubt (see the data README).
SURE_CONFIDENCE = frozenset({"clear_margin", "unique_length"})


@dataclass(frozen=True)
class Essay:
    id: str
    text: str
    words: tuple[str, ...]

    @classmethod
    def from_text(cls, essay_id: str, text: str) -> Essay:
        return cls(essay_id, text, tuple(text.split()))

    @property
    def n_words(self) -> int:
        return len(self.words)


@dataclass(frozen=True)
class Quirks:
    """What was repaired while reading, so a report can say it (nothing is fixed silently)."""

    offsets_clamped: int = 0
    """Elements whose character offsets lay outside the text and were clamped to it."""
    words_clamped: int = 0
    """Elements whose predictionstring named words past the essay's end (clamped)."""
    non_contiguous: int = 0
    """Predictionstrings with gaps; their word range covers first to last word."""
    shared_boundary_words: int = 0
    """Words claimed by two adjacent elements' predictionstrings (a known Kaggle artefact)."""
    elements_dropped: int = 0
    """Elements left with no word at all after clamping."""

    def summary(self) -> str:
        """One line, e.g. 'repairs while reading: 6 character offsets clamped to the text'."""
        done = [f"{n:,} {QUIRK_NAMES[name]}" for name, n in dataclasses.asdict(self).items() if n]
        return "repairs while reading: " + (", ".join(done) if done else "none")


QUIRK_NAMES = {
    "offsets_clamped": "character offsets clamped to the text",
    "words_clamped": "word indices clamped to the essay",
    "non_contiguous": "non-contiguous predictionstrings",
    "shared_boundary_words": "boundary words shared by two elements",
    "elements_dropped": "elements dropped (no word left)",
}


@dataclass(frozen=True, eq=False)
class Corpus:
    """Labelled essays. ``elements`` has one row per element, in essay order then word order.

    Columns: id, discourse_type, class_idx, word_start, word_end, predictionstring, and (when the
    csv has them) discourse_start, discourse_end clamped to the text.
    """

    root: Path
    essays: dict[str, Essay]
    elements: pd.DataFrame
    match_confidence: dict[str, str] | None = None
    quirks: Quirks = field(default_factory=Quirks)
    test_essays: dict[str, Essay] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return list(self.essays)

    def sure_ids(self) -> list[str]:
        """Essays whose annotations surely belong to them; all of them when unknown."""
        if self.match_confidence is None:
            return self.ids
        conf = self.match_confidence
        return [i for i in self.essays if conf.get(i) in SURE_CONFIDENCE]

    def sure_subset(self) -> Corpus:
        """The sure essays; a clear error (saying what to set) when there are none."""
        sure = self.sure_ids()
        if not sure and self.match_confidence is not None:
            conf = self.match_confidence
            seen = Counter(conf.get(i, "missing") for i in self.essays).most_common()
            raise DiscourseRLError(
                f"{self.root / 'essay_match_confidence.csv'}: none of the {len(self.essays)} "
                f"essays is sure (match_confidence {' or '.join(sorted(SURE_CONFIDENCE))}; "
                f"found {', '.join(f'{k} {n}' for k, n in seen)}): set sure_only = false in "
                "the config to train on unsure essays"
            )
        return self.subset(sure)

    def repairs_summary(self) -> str:
        """One line for a run's log: what reading the csv repaired (as `data-report` lists it)."""
        return f"{self.root / 'train.csv'}: {self.quirks.summary()}"

    def content_key(self) -> str:
        """A hash of every essay's id and text and every element's id, class and word range.

        Stage keys use it, so an edited essay or label invalidates what was trained on it.
        """
        cached: str | None = self.__dict__.get("_content_key")
        if cached is not None:
            return cached
        h = hashlib.sha256()
        for eid in sorted(self.essays):
            for part in (eid, self.essays[eid].text):
                raw = part.encode("utf-8", "surrogatepass")
                h.update(len(raw).to_bytes(8, "little"))
                h.update(raw)
        el = self.elements
        h.update("\0".join(el["id"].astype(str)).encode("utf-8", "surrogatepass"))
        for col in ("class_idx", "word_start", "word_end"):
            h.update(np.ascontiguousarray(el[col].to_numpy(), dtype="<i8").tobytes())
        key = h.hexdigest()
        object.__setattr__(self, "_content_key", key)
        return key

    def subset(self, ids: Iterable[str]) -> Corpus:
        keep = [i for i in ids if i in self.essays]
        mask = self.elements["id"].isin(set(keep))
        return Corpus(
            root=self.root,
            essays={i: self.essays[i] for i in keep},
            elements=self.elements[mask].reset_index(drop=True),
            match_confidence=self.match_confidence,
            quirks=self.quirks,
            test_essays=self.test_essays,
        )

    def essay_elements(self, essay_id: str) -> pd.DataFrame:
        return self._groups().get(essay_id, self.elements.iloc[:0])

    def _groups(self) -> dict[str, pd.DataFrame]:
        cached: dict[str, pd.DataFrame] | None = self.__dict__.get("_group_cache")
        if cached is None:
            cached = {str(k): g for k, g in self.elements.groupby("id", sort=False)}
            object.__setattr__(self, "_group_cache", cached)
        return cached

    def word_labels(self, essay_id: str) -> npt.NDArray[np.int8]:
        el = self.essay_elements(essay_id)
        labels, _ = elements_to_labels(
            self.essays[essay_id].n_words,
            el["class_idx"].to_numpy(),
            el["word_start"].to_numpy(),
            el["word_end"].to_numpy(),
        )
        return labels


# ---------------------------------------------------------------------------------------------
# Word labels <-> spans


def elements_to_labels(
    n_words: int, class_idx: Sequence[int] | IntArray, word_start: IntArray, word_end: IntArray
) -> tuple[npt.NDArray[np.int8], int]:
    """Word labels (0 = O, 1 + 2k = B-class k, 2 + 2k = I-class k) for spans sorted by start.

    Returns the labels and the number of words two spans both claimed. Such a word goes to the
    later span (in the shared data its characters always lie inside the later element), unless the
    earlier span would then vanish.
    """
    labels = np.zeros(n_words, dtype=np.int8)
    owner = np.full(n_words, -1, dtype=np.int64)
    shared = 0
    for j, (c, s, e) in enumerate(zip(class_idx, word_start, word_end, strict=True)):
        s, e = int(s), int(e)
        if e <= s:
            continue
        if owner[s] >= 0:
            shared += int(np.count_nonzero(owner[s:e] >= 0))
            prev = int(owner[s])
            prev_start = int(np.argmax(owner == prev))
            if prev_start == s:  # the earlier span is just this word: it keeps it
                s += 1
                if s >= e:
                    continue
        labels[s] = 1 + 2 * int(c)
        labels[s + 1 : e] = 2 + 2 * int(c)
        owner[s:e] = j
    return labels, shared


def labels_to_spans(labels: npt.ArrayLike) -> tuple[IntArray, IntArray, IntArray]:
    """Spans ``(class_idx, word_start, word_end)`` from word labels.

    A span starts at a B- tag, or at an I- tag whose class differs from the running span's (a
    lenient reading that the naive NER decoding relies on); O ends it.
    """
    lab = np.asarray(labels, dtype=np.int64)
    n = lab.shape[0]
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy(), empty.copy()
    cls = np.where(lab > 0, (lab - 1) // 2, -1)
    is_b = (lab > 0) & (lab % 2 == 1)
    prev_cls = np.concatenate(([-1], cls[:-1]))
    starts = np.flatnonzero((cls >= 0) & (is_b | (cls != prev_cls)))
    # A span ends at the next start or at the first O after it, whichever comes first.
    breaks = np.union1d(np.flatnonzero(cls < 0), starts)
    breaks = np.append(breaks, n)
    ends = breaks[np.searchsorted(breaks, starts, side="right")]
    return cls[starts], starts, ends


def predictionstring(word_start: int, word_end: int) -> str:
    return " ".join(map(str, range(int(word_start), int(word_end))))


# ---------------------------------------------------------------------------------------------
# Folds


def class_counts(corpus: Corpus) -> pd.DataFrame:
    """Elements per essay and class (essays in corpus order, the 7 classes as columns)."""
    tab = pd.crosstab(corpus.elements["id"], corpus.elements["class_idx"])
    tab = tab.reindex(index=corpus.ids, columns=range(len(CLASSES)), fill_value=0)
    tab.columns = list(CLASSES)
    return tab


def unique_classes(corpus: Corpus, ids: Iterable[str], share: float, most: int) -> tuple[int, ...]:
    """The classes of which at least `share` of the essays `ids` have at most one span, the
    surest first, at most `most` of them (returned in class order): those the constrained
    decoder and the RL tagger's lattice allow once per essay."""
    counts = class_counts(corpus.subset(ids)).to_numpy()
    if counts.shape[0] == 0:
        return ()
    at_most_one = (counts <= 1).mean(0)
    # A class no essay has needs no limit; limiting it would only grow the state.
    present = np.asarray((counts > 0).any(0), dtype=np.bool_)
    order = [c for c in np.argsort(-at_most_one, kind="stable") if present[c]]
    chosen = [int(c) for c in order if at_most_one[c] >= share][:most]
    return tuple(sorted(chosen))


def make_folds(corpus: Corpus, k: int = 5, seed: int = 0) -> dict[str, int]:
    """Essay -> fold in ``range(k)``, balanced on essay count and on every class's element count.

    Greedy: essays are visited in a seeded random order, each going to the fold where it raises the
    sum of squared relative fill the least. Deterministic for a given corpus and seed.
    """
    if k < 2:
        raise DiscourseRLError(f"folds: need at least 2 folds, got {k}")
    if len(corpus.essays) < k:
        raise DiscourseRLError(
            f"folds: {len(corpus.essays)} essays cannot fill {k} folds "
            f"(use more essays, or set fewer folds)"
        )
    ids = sorted(corpus.essays)
    counts = class_counts(corpus).loc[ids].to_numpy(np.float64)
    counts = np.hstack([np.ones((len(ids), 1)), counts])
    target = np.maximum(counts.sum(0) / k, 1e-9)
    rng = np.random.default_rng(seed)
    fill = np.zeros((k, counts.shape[1]))
    folds: dict[str, int] = {}
    for i in rng.permutation(len(ids)):
        cost = (((fill + counts[i]) / target) ** 2 - (fill / target) ** 2).sum(1)
        best = int(np.argmin(cost + 1e-9 * rng.random(k)))
        fill[best] += counts[i]
        folds[ids[i]] = best
    return {i: folds[i] for i in ids}


# ---------------------------------------------------------------------------------------------
# Hand-offs between stages


def spans_to_frame(
    essay_ids: Sequence[str], class_idx: IntArray, word_start: IntArray, word_end: IntArray
) -> pd.DataFrame:
    """Spans as a submission table: id, class, predictionstring (plus word_start, word_end)."""
    word_start = np.asarray(word_start, dtype=np.int64)
    word_end = np.asarray(word_end, dtype=np.int64)
    return pd.DataFrame(
        {
            "id": list(essay_ids),
            "class": [CLASSES[int(c)] for c in class_idx],
            "predictionstring": [
                predictionstring(s, e) for s, e in zip(word_start, word_end, strict=True)
            ],
            "word_start": word_start,
            "word_end": word_end,
        },
        columns=["id", "class", "predictionstring", "word_start", "word_end"],
    )


def save_word_probs(path: str | Path, probs: Mapping[str, npt.NDArray[np.floating]]) -> None:
    """Word probabilities (n_words x 15 per essay) in one float16 .npz, written atomically."""
    ids = sorted(probs)
    lengths = np.array([probs[i].shape[0] for i in ids], dtype=np.int64)
    stacked = (
        np.concatenate([probs[i] for i in ids]).astype(np.float16)
        if ids
        else np.zeros((0, NUM_LABELS), np.float16)
    )

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.savez(fh, ids=np.array(ids, dtype=str), lengths=lengths, probs=stacked)

    atomic_save(path, write)


def load_word_probs(path: str | Path) -> dict[str, npt.NDArray[np.float32]]:

    what = "a word-probability file"
    z = artefacts.load_npz(path, "word probabilities", what)
    try:
        ids, lengths, stacked = list(z["ids"]), z["lengths"], z["probs"]
    except KeyError as exc:
        raise artefacts.unreadable(path, what, exc) from None
    bounds = np.concatenate(([0], np.cumsum(lengths)))
    return {
        str(i): stacked[bounds[k] : bounds[k + 1]].astype(np.float32) for k, i in enumerate(ids)
    }
