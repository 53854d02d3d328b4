"""Reading a folder in the Kaggle layout, and every check of its files, in one place.

A problem the reader cannot safely repair is a `DiscourseRLError`: one line naming the file and,
in a csv, the row (counted as a spreadsheet counts them: the header is row 1, so the first
element is row 2). What it can repair (offsets or word indices past the essay's end, gaps in a
predictionstring) it repairs and counts in `Quirks`, so that `data-report` and `run` can say so.
"""

from __future__ import annotations

import csv
import importlib.resources
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data.corpus import CLASS_INDEX, CLASSES, Corpus, Essay, Quirks

REQUIRED_COLUMNS = ("id", "discourse_type", "predictionstring")
# Word indices: ASCII digits (at most 9 of them) separated by single spaces.
_INDICES = r"[0-9]{1,9}(?: [0-9]{1,9})*"
# An id names a file in train/: no folder separators, control characters or dot-only names.
_BAD_ID = re.compile(r"[/\\\x00-\x1f\x7f]|^\.{0,2}$")


def sample_dir() -> Path:
    """The embedded sample (about 300 essays, CC BY-NC-SA 4.0; see its README)."""
    return Path(str(importlib.resources.files("discourse_rl") / "sample"))


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (library messages sometimes span several)."""
    return " ".join(str(exc).split())


def read_essay(path: Path) -> Essay:
    """One essay file; bytes are decoded as-is so character offsets stay valid."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DiscourseRLError(f"{path}: essay file not found") from None
    except IsADirectoryError:
        raise DiscourseRLError(f"{path}: is a folder, not an essay file") from None
    except OSError as exc:
        raise DiscourseRLError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DiscourseRLError(
            f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.split():
        raise DiscourseRLError(f"{path}: empty essay (no words)")
    return Essay.from_text(path.stem, text)


@dataclass(frozen=True)
class SkippedEssay:
    path: Path
    reason: str
    """The one-line error that reading it gave (it names the file)."""


@dataclass(frozen=True)
class EssayFolder:
    """The essays read from a folder (by file stem, sorted) and those skipped as unreadable."""

    essays: dict[str, Essay]
    skipped: tuple[SkippedEssay, ...] = ()


def read_essays(folder: str | Path, *, skip_bad: bool = False) -> EssayFolder:
    """Every ``*.txt`` in a folder (or one file).

    An unreadable essay (not UTF-8, no words, not readable) is an error, or with `skip_bad` is
    left out and listed in `skipped`; it is still an error when no essay at all is readable.
    """
    folder = Path(folder)
    if folder.is_file():
        paths = [folder]
    elif folder.is_dir():
        paths = sorted(folder.glob("*.txt"))
        if not paths:
            raise DiscourseRLError(f"{folder}: no .txt essays in this folder")
    else:
        raise DiscourseRLError(f"{folder}: no such essay file or folder")
    essays: dict[str, Essay] = {}
    skipped: list[SkippedEssay] = []
    for p in paths:
        try:
            essays[p.stem] = read_essay(p)
        except DiscourseRLError as exc:
            if not skip_bad:
                raise
            skipped.append(SkippedEssay(p, str(exc)))
    if not essays:
        raise DiscourseRLError(
            f"{folder}: none of the {len(paths)} essays is readable ({skipped[0].reason})"
        )
    return EssayFolder(essays, tuple(skipped))


def read_essay_folder(folder: str | Path) -> dict[str, Essay]:
    """Every ``*.txt`` in a folder (or one file), keyed by file stem; any unreadable one is an
    error (see `read_essays` to skip them instead)."""
    return read_essays(folder).essays


def read_table(path: Path, columns: Sequence[str], missing: str = "file not found") -> pd.DataFrame:
    """A csv with its required columns read as strings (no NA guessing); rows labelled from 0."""
    if not path.is_file():
        raise DiscourseRLError(f"{path}: {missing}")
    try:
        with warnings.catch_warnings():
            # Other columns' types are guessed; a mixed column is checked where it is used.
            warnings.simplefilter("ignore", pd.errors.DtypeWarning)
            df = pd.read_csv(path, dtype=dict.fromkeys(columns, str), keep_default_na=False)
    except (ValueError, OverflowError, OSError, csv.Error) as exc:
        raise DiscourseRLError(f"{path}: unreadable csv ({one_line(exc)})") from None
    if not isinstance(df.index, pd.RangeIndex):
        # pandas makes the surplus leading fields of longer rows an index.
        raise DiscourseRLError(f"{path}: unreadable csv (rows with more fields than the header)")
    absent = [c for c in columns if c not in df.columns]
    if absent:
        raise DiscourseRLError(f"{path}: missing column(s) {', '.join(absent)}")
    return df


def load_corpus(root: str | Path | None = None, *, ids: Iterable[str] | None = None) -> Corpus:
    """Read a Kaggle-layout folder (default: the embedded sample); `ids` limits the essays read."""
    root = sample_dir() if root is None else Path(root)
    if not root.is_dir():
        raise DiscourseRLError(f"{root}: no such data folder")
    csv_path = root / "train.csv"
    df = read_table(csv_path, REQUIRED_COLUMNS, "missing (a Kaggle-layout folder needs train.csv)")
    if df.empty:
        raise DiscourseRLError(f"{csv_path}: no elements (the file holds only a header)")
    if ids is not None:
        wanted = set(ids)
        df = df[df["id"].isin(wanted)]
        if df.empty:
            raise DiscourseRLError(f"{csv_path}: none of the {len(wanted)} requested essays")
    ps = _check_rows(df, csv_path)

    train_dir = root / "train"
    first_row = df.drop_duplicates("id")
    essays: dict[str, Essay] = {}
    for row, eid in sorted(zip(first_row.index, first_row["id"], strict=True), key=_by_id):
        path = train_dir / f"{eid}.txt"
        if not path.is_file() and not path.is_dir():
            raise DiscourseRLError(
                f"{csv_path}: row {row + 2}: essay id {eid!r} has no file {path}"
            )
        essays[eid] = read_essay(path)

    elements, quirks = _build_elements(df, ps, essays, csv_path)
    conf = _read_confidence(root / "essay_match_confidence.csv")
    test_dir = root / "test"
    tests = read_essay_folder(test_dir) if test_dir.is_dir() and any(test_dir.glob("*.txt")) else {}
    return Corpus(root, essays, elements, conf, quirks, tests)


def _by_id(row_id: tuple[int, str]) -> str:
    return row_id[1]


def _first(flags: npt.ArrayLike) -> int | None:
    hits = np.flatnonzero(np.asarray(flags, dtype=bool))
    return int(hits[0]) if hits.size else None


def _row_error(csv_path: Path, df: pd.DataFrame, i: int, message: str) -> DiscourseRLError:
    return DiscourseRLError(f"{csv_path}: row {int(df.index[i]) + 2}: {message}")


def _check_rows(df: pd.DataFrame, csv_path: Path) -> pd.Series:
    """Every check of train.csv's rows that is an error rather than a repair.

    Returns the predictionstrings with their whitespace made regular (single spaces).
    """
    if (i := _first(df["id"].str.contains(_BAD_ID))) is not None:
        raise _row_error(csv_path, df, i, f"essay id {df['id'].iloc[i]!r} cannot name a file")
    if (i := _first(~df["discourse_type"].isin(CLASSES))) is not None:
        raise _row_error(
            csv_path,
            df,
            i,
            f"unknown discourse_type {df['discourse_type'].iloc[i]!r} "
            f"(expected one of {', '.join(CLASSES)})",
        )
    ps = df["predictionstring"].str.strip()
    if (i := _first(ps == "")) is not None:
        raise _row_error(csv_path, df, i, "empty predictionstring")
    irregular = ~ps.str.fullmatch(_INDICES)
    if irregular.any():
        ps = ps.where(~irregular, ps[irregular].str.split().str.join(" "))
        for k in np.flatnonzero(irregular.to_numpy()):
            junk = [t for t in ps.iloc[k].split(" ") if re.fullmatch(r"[0-9]{1,9}", t) is None]
            if junk:
                raise _row_error(
                    csv_path, df, int(k), f"predictionstring holds {junk[0]!r}, not a word index"
                )
    element = [c for c in (*REQUIRED_COLUMNS, "discourse_start", "discourse_end") if c in df]
    if (i := _first(df.duplicated(element))) is not None:
        same = (df[element].iloc[:i] == df[element].iloc[i]).all(axis=1)
        j = int(df.index[_first(same) or 0]) + 2
        raise _row_error(csv_path, df, i, f"repeats row {j} ({', '.join(element)} all equal)")
    return ps


def _build_elements(
    df: pd.DataFrame, ps: pd.Series, essays: dict[str, Essay], csv_path: Path
) -> tuple[pd.DataFrame, Quirks]:
    first = ps.str.split(n=1).str[0].astype(np.int64).to_numpy()
    last = ps.str.rsplit(n=1).str[-1].astype(np.int64).to_numpy()
    n_tokens = ps.str.count(" ").to_numpy() + 1
    # Gaps are allowed (a non-contiguous element covers first to last word); going backwards or
    # repeating a word is not, and shows as more tokens than the range holds.
    if (i := _first((last < first) | (n_tokens > last - first + 1))) is not None:
        raise _row_error(
            csv_path, df, i, "predictionstring does not list word indices in increasing order"
        )
    n_words = df["id"].map({k: e.n_words for k, e in essays.items()}).to_numpy()
    word_start = np.clip(first, 0, n_words)
    word_end = np.clip(last + 1, 0, n_words)
    words_clamped = int(np.count_nonzero((word_start != first) | (word_end != last + 1)))
    non_contiguous = int(np.count_nonzero(n_tokens != last - first + 1))

    out = pd.DataFrame(
        {
            "id": df["id"].to_numpy(),
            "discourse_type": df["discourse_type"].to_numpy(),
            "class_idx": df["discourse_type"].map(CLASS_INDEX).to_numpy(np.int64),
            "word_start": word_start,
            "word_end": word_end,
            "predictionstring": ps.to_numpy(),
        }
    )
    offsets_clamped = 0
    if {"discourse_start", "discourse_end"} <= set(df.columns):
        n_chars = df["id"].map({k: len(e.text) for k, e in essays.items()}).to_numpy()
        start = pd.to_numeric(df["discourse_start"], errors="coerce").to_numpy(np.float64)
        end = pd.to_numeric(df["discourse_end"], errors="coerce").to_numpy(np.float64)
        for col, values in (("discourse_start", start), ("discourse_end", end)):
            if (i := _first(~np.isfinite(values))) is not None:
                raise _row_error(csv_path, df, i, f"{col} {df[col].iloc[i]!r} is not a number")
        cs = np.clip(start, 0, n_chars).astype(np.int64)
        ce = np.clip(end, cs, n_chars).astype(np.int64)
        offsets_clamped = int(np.count_nonzero((cs != start) | (ce != end)))
        out["discourse_start"], out["discourse_end"] = cs, ce

    dropped = out["word_end"] <= out["word_start"]
    out = out[~dropped].sort_values(["id", "word_start"], kind="stable").reset_index(drop=True)
    shared = int(np.count_nonzero(_shared_words(out)))
    quirks = Quirks(offsets_clamped, words_clamped, non_contiguous, shared, int(dropped.sum()))
    return out, quirks


def _shared_words(elements: pd.DataFrame) -> npt.NDArray[np.bool_]:
    """Per element: does it begin on a word that the element before it (same essay) also claims?"""
    same_essay = elements["id"].to_numpy()[1:] == elements["id"].to_numpy()[:-1]
    overlap = elements["word_end"].to_numpy()[:-1] > elements["word_start"].to_numpy()[1:]
    return np.concatenate(([False], same_essay & overlap))


def _read_confidence(path: Path) -> dict[str, str] | None:
    if not path.is_file():
        return None
    conf = read_table(path, ("id", "match_confidence"))
    if (i := _first(conf["id"].duplicated())) is not None:
        raise _row_error(path, conf, i, f"essay id {conf['id'].iloc[i]!r} is listed twice")
    return dict(zip(conf["id"], conf["match_confidence"], strict=True))
