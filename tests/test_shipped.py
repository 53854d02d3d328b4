"""The model that ships inside the package: present, small, licensed, the default everywhere,
and labelling as it did when it was exported."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from discourse_rl.app.model_file import SHIPPED
from discourse_rl.core.data import sample_dir

pytestmark = pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped model in this tree")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOURSE_RL_CACHE", str(tmp_path / "cache"))


def test_shipped_model_is_small_licensed_and_complete() -> None:
    assert SHIPPED.stat().st_size <= 30 * 1024 * 1024
    with zipfile.ZipFile(SHIPPED) as zf:
        manifest = json.loads(zf.read("export.json"))
        card = zf.read("MODEL.md").decode("utf-8")
        licence = zf.read("LICENSE.md").decode("utf-8")
    assert manifest["licence"] == "CC BY-NC-SA 4.0"
    assert manifest["stage"] in manifest["stages"]
    assert {"ner-naive", "ner-tuned", "gbdt"} <= set(manifest["stages"])
    assert "CC BY-NC-SA 4.0" in card and "PERSUADE" in card and "Crossley" in card
    assert "CC BY-NC-SA 4.0" in licence
    # The card beside the zip is the one inside it (readable without unpacking).
    assert (SHIPPED.parent / "MODEL.md").read_text(encoding="utf-8") == card


def test_default_labeller_labels_the_samples_as_recorded_at_export() -> None:
    from discourse_rl import Labeller

    with zipfile.ZipFile(SHIPPED) as zf:
        recorded = [json.loads(line) for line in zf.read("samples.jsonl").splitlines()]
    labeller = Labeller.load()  # no argument: the shipped model
    assert labeller.stage == recorded[0]["stage"]
    texts = [(sample_dir() / "test" / f"{r['id']}.txt").read_text("utf-8") for r in recorded]
    got = [labeller.label(t) for t in texts]  # as recorded: one essay at a time
    assert len(recorded) == 5
    for row, elements in zip(recorded, got, strict=True):
        assert [[e.type, e.word_start, e.word_end] for e in elements] == [
            el[:3] for el in row["elements"]
        ], row["id"]
        assert [e.confidence for e in elements] == pytest.approx(
            [el[3] for el in row["elements"]], abs=1e-4
        )


def test_info_without_model_lists_the_shipped_stages_with_heldout_f1() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "discourse_rl", "info", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    rows = json.loads(out.stdout)
    with zipfile.ZipFile(SHIPPED) as zf:
        stages = json.loads(zf.read("export.json"))["stages"]
    assert [r["stage"] for r in rows] == stages
    assert all(isinstance(r["macro_f1"], float) and 0.0 < r["macro_f1"] < 1.0 for r in rows)


def test_shipped_not_found_lines_quote_the_default_stages_heldout_recall() -> None:
    from discourse_rl import Labeller
    from discourse_rl.app.feedback import not_found_sentence
    from discourse_rl.core.data import CLASSES

    labeller = Labeller.load()
    scores = labeller.scores[labeller.stage]
    # RUN/heldout_recall.json, recorded by tools/ship_model.py --check-data and packed with it.
    assert set(scores.recall) == set(CLASSES) and "held-out essays" in scores.recall_source
    assert all(0.0 <= r <= 1.0 for r in scores.recall.values())
    line = not_found_sentence("Rebuttal", scores.recall["Rebuttal"], scores.per_type["Rebuttal"])
    assert "the model finds" in line and "not recorded" not in line
