from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from discourse_rl.app.cli import main
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import (
    LABELS,
    Corpus,
    class_counts,
    elements_to_labels,
    labels_to_spans,
    load_corpus,
    make_folds,
    predictionstring,
    read_essays,
    sample_dir,
)

SHARED = Path(
    os.environ.get(
        "DISCOURSE_RL_SHARED_DATA",
        Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "feedback-prize-2021",
    )
)


def _round_trip_mismatches(corpus: Corpus, ids: list[str]) -> tuple[int, int]:
    """Elements whose predictionstring the labels do not reproduce, and those explained by a
    boundary word that two adjacent elements claim: it goes to the later element, unless the
    earlier one is that single word."""
    decoded: dict[tuple[str, int, int], int] = {}
    for eid in ids:
        cls, start, end = labels_to_spans(corpus.word_labels(eid))
        for c, s, e in zip(cls, start, end, strict=True):
            decoded[(eid, int(s), int(c))] = int(e)
    mismatched = explained = 0
    rows = corpus.elements[corpus.elements["id"].isin(set(ids))]
    nxt_start = rows.groupby("id")["word_start"].shift(-1)
    prev_end = rows.groupby("id")["word_end"].shift(1)
    for (eid, c, s, e, ps), nxt, prv in zip(
        rows[["id", "class_idx", "word_start", "word_end", "predictionstring"]].itertuples(
            index=False
        ),
        nxt_start,
        prev_end,
        strict=True,
    ):
        got = decoded.get((eid, int(s), int(c)))
        if got is not None and predictionstring(s, got) == ps:
            continue
        mismatched += 1
        starts = [int(s)] + ([int(s) + 1] if prv == s + 1 else [])
        ends = [int(e)] + ([int(e) - 1] if nxt == e - 1 else [])
        explained += any(decoded.get((eid, a, int(c))) == b for a in starts for b in ends)
    return mismatched, explained


def test_sample_round_trip_elements_labels_elements() -> None:
    corpus = load_corpus()
    mismatched, explained = _round_trip_mismatches(corpus, corpus.ids)
    assert mismatched == explained == corpus.quirks.shared_boundary_words


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared data folder not present")
def test_shared_data_round_trip_on_all_sure_essays() -> None:
    corpus = load_corpus(SHARED)
    sure = corpus.sure_ids()
    assert len(sure) == 13_885
    mismatched, explained = _round_trip_mismatches(corpus, sure)
    # Every element comes back exactly, except where the Kaggle predictionstrings give one
    # boundary word to two adjacent elements: a word label can name only one of them.
    assert mismatched == explained
    assert mismatched < 0.01 * len(corpus.elements)


def test_labels_to_spans_reads_b_and_lenient_i() -> None:
    b = {c: LABELS.index(f"B-{c}") for c in ("Lead", "Claim")}
    i = {c: LABELS.index(f"I-{c}") for c in ("Lead", "Claim")}
    labels = [i["Lead"], i["Lead"], b["Lead"], 0, i["Claim"], b["Claim"], i["Claim"], i["Lead"]]
    cls, start, end = labels_to_spans(labels)
    assert list(zip(cls.tolist(), start.tolist(), end.tolist(), strict=True)) == [
        (0, 0, 2),
        (0, 2, 3),
        (2, 4, 5),
        (2, 5, 7),
        (0, 7, 8),
    ]
    assert [a.size for a in labels_to_spans([])] == [0, 0, 0]


def test_shared_boundary_word_goes_to_the_later_element() -> None:
    labels, shared = elements_to_labels(6, [0, 2], np.array([0, 2]), np.array([3, 6]))
    assert shared == 1
    assert labels.tolist() == [1, 2, 5, 6, 6, 6]
    # ...unless the earlier element is that single word.
    labels, shared = elements_to_labels(4, [0, 2], np.array([1, 1]), np.array([2, 4]))
    assert labels.tolist() == [0, 1, 5, 6]


def test_folds_are_deterministic_and_balanced() -> None:
    corpus = load_corpus()
    folds = make_folds(corpus, k=5, seed=3)
    assert folds == make_folds(corpus, k=5, seed=3)
    assert folds != make_folds(corpus, k=5, seed=4)
    sizes = Counter(folds.values())
    assert max(sizes.values()) - min(sizes.values()) <= 3
    counts = class_counts(corpus)
    per_fold = counts.groupby(pd.Series(folds)).sum()
    share = per_fold / per_fold.sum()
    assert (share.sub(0.2).abs() < 0.05).all().all(), share


def test_sure_filter_and_sample_licence() -> None:
    corpus = load_corpus()
    assert len(corpus.essays) == 300 and len(corpus.sure_ids()) == 300
    assert len(corpus.test_essays) == 5
    licence = (sample_dir() / "LICENSE.md").read_text()
    assert "CC BY-NC-SA 4.0" in licence and "Crossley" in licence


# --- bad input: one clear line naming the file --------------------------------------------------


def _mini(tmp_path: Path, text: bytes = b"One two three four.\n\nFive six.") -> Path:
    (tmp_path / "train").mkdir(parents=True)
    (tmp_path / "train" / "AAA.txt").write_bytes(text)
    pd.DataFrame(
        {
            "id": ["AAA", "AAA"],
            "discourse_start": [0, 20],
            "discourse_end": [19, 400],
            "discourse_type": ["Lead", "Claim"],
            "predictionstring": ["0 1 2 3", "4 5"],
        }
    ).to_csv(tmp_path / "train.csv", index=False)
    return tmp_path


def test_minimal_folder_reads_and_clamps_offsets(tmp_path: Path) -> None:
    corpus = load_corpus(_mini(tmp_path))
    assert corpus.quirks.offsets_clamped == 1
    assert corpus.elements["discourse_end"].tolist() == [19, 30]
    assert corpus.match_confidence is None and corpus.sure_ids() == ["AAA"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "train.csv").unlink(), "train.csv: missing"),
        (
            lambda d: (
                pd.read_csv(d / "train.csv")
                .drop(columns="discourse_type")
                .to_csv(d / "train.csv", index=False)
            ),
            "train.csv: missing column(s) discourse_type",
        ),
        (lambda d: (d / "train" / "AAA.txt").write_bytes(b"caf\xe9 au lait"), "AAA.txt: not UTF-8"),
        (lambda d: (d / "train" / "AAA.txt").write_bytes(b" \n\n "), "AAA.txt: empty essay"),
        (lambda d: (d / "train" / "AAA.txt").unlink(), "essay id 'AAA' has no file"),
    ],
)
def test_bad_input_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: object, message: str
) -> None:
    folder = _mini(tmp_path)
    damage(folder)  # type: ignore[operator]
    with pytest.raises(DiscourseRLError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_corpus(folder)
    assert main(["data-report", "--data", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_missing_folder(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data-report", "--data", "/no/such/folder"]) == 2
    assert "/no/such/folder: no such data folder" in capsys.readouterr().err


# --- content key, sure essays, skipping unreadable essays ---------------------------------------


def test_content_key_covers_texts_types_and_ranges(tmp_path: Path) -> None:
    base = load_corpus(_mini(tmp_path / "a"))
    assert base.content_key() == load_corpus(_mini(tmp_path / "b")).content_key()
    # Same word count, other words.
    edited = load_corpus(_mini(tmp_path / "c", b"One two three four.\n\nFive sax."))
    assert edited.content_key() != base.content_key()

    def relabel(column: str, value: object) -> str:
        folder = _mini(tmp_path / f"{column}{value}")
        df = pd.read_csv(folder / "train.csv", dtype=str)
        df.loc[1, column] = value
        df.to_csv(folder / "train.csv", index=False)
        return load_corpus(folder).content_key()

    # Same element count and the same sum of word ends, as the old key hashed.
    assert relabel("discourse_type", "Evidence") != base.content_key()
    assert relabel("predictionstring", "5") != base.content_key()
    assert relabel("discourse_type", "Claim") == base.content_key()


def test_stage_key_follows_the_content(tmp_path: Path) -> None:
    from discourse_rl.run.pipeline import data_key

    base = load_corpus(_mini(tmp_path / "a"))
    edited = load_corpus(_mini(tmp_path / "b", b"One two three four.\n\nSix five."))
    assert data_key(base) != data_key(edited)
    assert data_key(base) == data_key(load_corpus(_mini(tmp_path / "c")))


def test_sure_subset_says_what_to_set(tmp_path: Path) -> None:
    folder = _mini(tmp_path)
    (folder / "essay_match_confidence.csv").write_text("id,match_confidence\nAAA,weak_margin\n")
    corpus = load_corpus(folder)
    with pytest.raises(DiscourseRLError, match=r"none of the 1 essays is sure .*sure_only = false"):
        corpus.sure_subset()
    (folder / "essay_match_confidence.csv").write_text("id,match_confidence\nAAA,clear_margin\n")
    assert load_corpus(folder).sure_subset().ids == ["AAA"]


def test_repairs_summary_is_one_line(tmp_path: Path) -> None:
    corpus = load_corpus(_mini(tmp_path))
    assert corpus.repairs_summary() == (
        f"{tmp_path / 'train.csv'}: repairs while reading: 1 character offsets clamped to the text"
    )
    assert load_corpus().quirks.summary() == (
        "repairs while reading: 22 boundary words shared by two elements"
    )


def test_read_essays_can_skip_unreadable_ones(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("Good words here.")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9")
    (tmp_path / "c.txt").write_text("  \n")
    with pytest.raises(DiscourseRLError, match=r"b\.txt: not UTF-8"):
        read_essays(tmp_path)
    batch = read_essays(tmp_path, skip_bad=True)
    assert list(batch.essays) == ["a"]
    assert [(s.path.name, s.reason) for s in batch.skipped] == [
        ("b.txt", f"{tmp_path / 'b.txt'}: not UTF-8 text (byte 0xe9 at offset 3)"),
        ("c.txt", f"{tmp_path / 'c.txt'}: empty essay (no words)"),
    ]
    (tmp_path / "a.txt").unlink()
    with pytest.raises(DiscourseRLError, match="none of the 2 essays is readable"):
        read_essays(tmp_path, skip_bad=True)
