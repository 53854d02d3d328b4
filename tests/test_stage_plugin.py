"""A decoder defined in this file alone, registered with one line, is offered by every surface:
`run` trains and scores it, `info --json` lists it, `predict --stage`, `label --stage` and
`export --stage` use it, and the web page's `/api/info` names it."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import pytest
from fastapi.testclient import TestClient

from discourse_rl import Labeller
from discourse_rl.app.cli import main
from discourse_rl.app.serve import create_app
from discourse_rl.core.arrays import Probs
from discourse_rl.core.data import CLASS_INDEX, CLASSES, Corpus, Essay
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders import registry
from discourse_rl.decoders.registry import Decoder, Span
from discourse_rl.run.heldout import heldout_table
from tests.test_pipeline import (  # noqa: F401 (fixtures)
    QuickRun,
    few_essays,
    quick_run,
    tiny_backbone,
)


@dataclass(frozen=True)
class ToyConfig:
    """The toy's config table, `[decoders.toy]`."""

    min_words: int = 3


class ToyDecoder(Decoder):
    """Labels each essay's words, from the first to the last, as one element of the class the
    training essays hold most often."""

    name = "toy"
    step = "toy"
    trained_on = "the training essays' most frequent class"
    title = "one element per essay, of the most frequent class"
    config = ToyConfig

    model: tuple[int, int]
    """The class index it labels with, and the fewest words an essay needs."""

    @classmethod
    def path(cls, lay: RunLayout) -> Path:
        return lay.decoder(cls.name) / "toy.json"

    @classmethod
    def fit(cls, probs: Probs, corpus: Corpus, config: Any, seed: int) -> Self:
        common = corpus.elements["discourse_type"].value_counts().index[0]
        return cls((CLASS_INDEX[common], config.min_words))

    def save(self, folder: Path) -> None:
        data = {"label": self.model[0], "min_words": self.model[1]}
        (folder / "toy.json").write_text(json.dumps(data), encoding="utf-8")

    @classmethod
    def load(cls, run: Path) -> Self:
        data = json.loads((RunLayout(run).decoder(cls.name) / "toy.json").read_text())
        return cls((int(data["label"]), int(data["min_words"])))

    def predict(self, probs: Probs, essays: Mapping[str, Essay]) -> dict[str, list[Span]]:
        label, min_words = self.model
        return {k: [(label, 0, len(p))] if len(p) >= min_words else [] for k, p in probs.items()}


@pytest.fixture
def toy() -> Iterator[None]:
    registry.register(ToyDecoder)  # the one registration line
    yield
    registry.unregister(ToyDecoder.name)


def test_a_registered_decoder_is_offered_everywhere(
    toy: None,
    tmp_path: Path,
    quick_run: QuickRun,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    data, config, run = quick_run
    config.write_text(
        config.read_text().replace("seed = 0\n", "seed = 0\ngbdt_stage = false\n", 1)
        + "\n[decoders.toy]\nmin_words = 5\n"
    )
    lay = RunLayout(run)

    # run: the toy's own step, after the package's, fitted, saved and scored.
    args = ["run", "--data", str(data), "--out", str(run), "--config", str(config)]
    assert main(args) == 0
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[toy] running" in out and "[toy] done" in out
    assert "[toy] up to date" in out  # the second run reuses it
    assert json.loads(lay.decoder("toy").joinpath("toy.json").read_text())["min_words"] == 5
    assert "toy" in json.loads(lay.stages.read_text())
    row = heldout_table(run).stage("toy")
    assert row is not None and row.n_train == 24 and row.n_heldout == 6
    assert "| toy |" in lay.report.read_text()
    assert "[decoders.toy]" in lay.config.read_text()

    # info --json: a row with its held-out score and the file prediction loads.
    assert main(["info", "--model", str(run), "--json"]) == 0
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["toy"]["macro_f1"] == row.macro_f1.mean
    assert rows["toy"]["model"] == "toy/toy.json"

    # predict --stage toy: one element per essay, of the toy's class.
    essays = data / "test"
    sub = tmp_path / "toy.csv"
    args = ["predict", "--model", str(run), "--essays", str(essays), "--out", str(sub)]
    assert main([*args, "--stage", "toy"]) == 0
    lines = sub.read_text().splitlines()[1:]
    assert len(lines) == len(list(essays.glob("*.txt")))
    label = ToyDecoder.load(run).model[0]
    assert all(line.split(",")[1] == CLASSES[label] for line in lines)

    # label --stage toy: the essay as one element.
    essay = tmp_path / "essay.txt"
    essay.write_text("One two three four five six.\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["label", str(essay), "--model", str(run), "--stage", "toy", "--json"]) == 0
    (element,) = json.loads(capsys.readouterr().out)["elements"]
    assert (element["word_start"], element["word_end"]) == (0, 6)

    # export --stage toy: the .zip carries the toy's file and labels as the run folder does.
    model = tmp_path / "toy.zip"
    assert main(["export", "--model", str(run), "--out", str(model), "--stage", "toy"]) == 0
    assert "toy/toy.json" in zipfile.ZipFile(model).namelist()
    text = essay.read_text()
    assert Labeller.load(model, "toy").label(text) == Labeller.load(run, "toy").label(text)
    capsys.readouterr()
    assert main(["info", "--model", str(model), "--json"]) == 0  # info reads a .zip too
    assert "toy" in {r["stage"] for r in json.loads(capsys.readouterr().out)}

    # /api/info: the page lists it.
    with TestClient(create_app(Labeller.load(run, "toy")), base_url="http://127.0.0.1") as client:
        info = client.get("/api/info").json()
    assert "toy" in info["stages"] and info["stage"] == "toy" and "toy" in info["scores"]
