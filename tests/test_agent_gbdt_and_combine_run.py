"""A demo-sized run with agent-gbdt and combine enabled: an existing run folder is reused (its
ner, gbdt and agent steps stay up to date, only the new steps run), both are offered by
`info`, `predict`, `label`, `export` and the web page, and turning them off removes them."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from discourse_rl import Labeller
from discourse_rl.app.cli import main
from discourse_rl.app.serve import create_app
from discourse_rl.core.layout import RunLayout
from discourse_rl.run.heldout import heldout_table
from tests.test_pipeline import _config, few_essays, tiny_backbone  # noqa: F401 (fixtures)

NEW = ("agent-gbdt", "combine")
ENABLE = """
[decoders.agent-gbdt]
enabled = true

[decoders.combine]
enabled = true
members = ["gbdt", "episode", "agent-gbdt"]
"""


def _keys(lay: RunLayout) -> dict[str, str]:
    return {k: v["key"] for k, v in json.loads(lay.stages.read_text()).items()}


@pytest.mark.slow
def test_new_stages_join_an_existing_run_and_are_offered_everywhere(
    tmp_path: Path,
    tiny_backbone: Path,  # noqa: F811
    few_essays: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = _config(tmp_path / "base.toml", tiny_backbone, bc_epochs=1)
    enabled = tmp_path / "enabled.toml"
    enabled.write_text(base.read_text() + ENABLE, encoding="utf-8")
    run = tmp_path / "run"
    lay = RunLayout(run)
    data = ["--data", str(few_essays), "--out", str(run)]

    # A run folder made without them (the defaults: both off).
    assert main(["run", *data, "--config", str(base)]) == 0
    before = _keys(lay)
    assert set(before) == {"ner", "gbdt", "agent"}
    assert not any(lay.decoder(n).exists() for n in NEW)
    capsys.readouterr()

    # Enabled: the existing steps are reused, only the new ones run.
    assert main(["run", *data, "--config", str(enabled)]) == 0
    out = capsys.readouterr().out
    for step in ("ner", "gbdt", "agent"):
        assert f"[{step}] up to date" in out
    for step in NEW:
        assert f"[{step}] running" in out and f"[{step}] done" in out
    after = _keys(lay)
    assert {k: after[k] for k in before} == before
    assert main(["run", *data, "--config", str(enabled)]) == 0
    out = capsys.readouterr().out
    assert all(f"[{step}] up to date" in out for step in NEW)

    table = heldout_table(run)
    for name in NEW:
        row = table.stage(name)
        assert row is not None and row.n_train == 24 and row.n_heldout == 6
        assert f"| {name} |" in lay.report.read_text()
    choice = json.loads((lay.decoder("combine") / "choice.json").read_text())
    assert set(choice["members"]) == {"gbdt", "episode", "agent-gbdt"}
    assert "[decoders.combine]" in lay.config.read_text()

    # info --json: a row each, with the held-out score and what prediction loads.
    assert main(["info", "--model", str(run), "--json"]) == 0
    rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["agent-gbdt"]["model"] == "agent-gbdt"
    assert rows["combine"]["model"] == "combine/choice.json"
    assert rows["combine"]["macro_f1"] == table.stage("combine").macro_f1.mean  # type: ignore[union-attr]

    # predict and label with each.
    essays = few_essays / "test"
    n_essays = len(list(essays.glob("*.txt")))
    essay = tmp_path / "essay.txt"
    essay.write_text((few_essays / "train").glob("*.txt").__next__().read_text(), "utf-8")
    for name in NEW:
        sub = tmp_path / f"{name}.csv"
        args = ["predict", "--model", str(run), "--essays", str(essays), "--out", str(sub)]
        assert main([*args, "--stage", name]) == 0
        assert sub.read_text().startswith("id,class,predictionstring")
        assert len({line.split(",")[0] for line in sub.read_text().splitlines()[1:]}) <= n_essays
        capsys.readouterr()
        assert main(["label", str(essay), "--model", str(run), "--stage", name, "--json"]) == 0
        assert "elements" in json.loads(capsys.readouterr().out)

    # export --stage combine: its choice and its chosen members' files; labels as the run does.
    model = tmp_path / "combine.zip"
    assert main(["export", "--model", str(run), "--out", str(model), "--stage", "combine"]) == 0
    packed = set(zipfile.ZipFile(model).namelist())
    assert "combine/choice.json" in packed
    if "agent-gbdt" in choice["member"].values():
        assert "agent-gbdt/policy.pt" in packed
    if "gbdt" in choice["member"].values():
        assert "gbdt/gbdt/params.json" in packed
    text = essay.read_text()
    assert Labeller.load(model, "combine").label(text) == Labeller.load(run, "combine").label(text)
    # The export carries combine's own held-out row: `info` on the .zip shows its macro F1.
    assert "combine/results.json" in packed
    capsys.readouterr()
    assert main(["info", "--model", str(model), "--json"]) == 0
    packed_rows = {r["stage"]: r for r in json.loads(capsys.readouterr().out)}
    assert packed_rows["combine"]["macro_f1"] == rows["combine"]["macro_f1"]

    # /api/info: the page lists both.
    with TestClient(create_app(Labeller.load(run, "combine")), base_url="http://127.0.0.1") as c:
        info = c.get("/api/info").json()
    assert set(NEW) <= set(info["stages"]) and info["stage"] == "combine"

    # Off again: their folders go, the other steps stay.
    capsys.readouterr()
    assert main(["run", *data, "--config", str(base)]) == 0
    out = capsys.readouterr().out
    assert all(f"[{step}] up to date" in out for step in ("ner", "gbdt", "agent"))
    assert not any(lay.decoder(n).exists() for n in NEW)
    assert set(_keys(lay)) == {"ner", "gbdt", "agent"}
