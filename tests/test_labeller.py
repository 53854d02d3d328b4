"""Labeller on a tiny run: exact character offsets, batching, stages, predict's formats, label."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from discourse_rl import Element, Labeller
from discourse_rl.app.cli import main
from discourse_rl.app.feedback import summarise
from discourse_rl.app.labeller import heldout_scores, offered_stages, word_char_spans
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASSES, read_essay, sample_dir
from tests.tiny_run import make_tiny_run

AWKWARD = (
    "Dear Principal,\r\n\r\n\tI think   phones\tshould be allowed 😀 in school.\r\n"
    "Première raison: ﬁne-tuned 日本語 students\u00a0learn better.\n\n"
    "Some say no.  But they are wrong!!\n\n\n  In conclusion, allow phones. 👍🏽 \n"
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tmp_path_factory.mktemp("labeller"))


@pytest.fixture(scope="module")
def labeller(tiny_run: Path) -> Labeller:
    return Labeller.load(tiny_run, "ner-naive")


def _texts() -> list[str]:
    essays = [read_essay(p).text for p in sorted((sample_dir() / "test").glob("*.txt"))]
    return [AWKWARD, essays[0].replace("\n", "\r\n"), essays[1], AWKWARD * 3]


def test_word_char_spans_match_split() -> None:
    for text in [*_texts(), "", "   ", "one", "\u2003a\u3000b\x1cc\x85d"]:
        spans = word_char_spans(text)
        assert [text[a:b] for a, b in spans] == text.split()


def test_char_offsets_cut_exactly_the_element_text(labeller: Labeller) -> None:
    seen = 0
    for text in _texts():
        words = text.split()
        elements = labeller.label(text)
        for el in elements:
            assert isinstance(el, Element)
            assert el.type in CLASSES
            assert text[el.char_start : el.char_end] == el.text
            assert el.text.split() == words[el.word_start : el.word_end]
            assert 0.0 <= el.confidence <= 1.0
        starts = [el.word_start for el in elements]
        assert starts == sorted(starts)
        seen += len(elements)
    assert seen > 0  # the random tagger labels something, so the checks above ran


def test_label_many_equals_label_one_by_one(labeller: Labeller) -> None:
    texts = _texts()
    assert labeller.label_many(texts) == [labeller.label(t) for t in texts]
    assert labeller.label_many([]) == []
    assert labeller.label("  \n ") == []


@pytest.mark.parametrize("stage", ["ner-tuned", "bc", "ppo"])
def test_every_stage_labels_with_the_same_confidence_definition(
    tiny_run: Path, labeller: Labeller, stage: str
) -> None:
    other = Labeller.load(tiny_run, stage)
    text = _texts()[2]
    by_stage = labeller.label_essays({"a": _essay(text)}, [stage])[stage]["a"]
    assert other.label(text) == by_stage
    naive = {(e.word_start, e.word_end, e.type): e.confidence for e in labeller.label(text)}
    for el in by_stage:
        assert text[el.char_start : el.char_end] == el.text
        if (el.word_start, el.word_end, el.type) in naive:
            assert naive[(el.word_start, el.word_end, el.type)] == el.confidence


def _essay(text: str):  # type: ignore[no-untyped-def]
    from discourse_rl.core.data import Essay

    return Essay.from_text("a", text)


def test_stages_scores_and_default(tiny_run: Path) -> None:
    assert offered_stages(tiny_run) == ("ner-naive", "ner-tuned", "bc", "ppo")
    scores = heldout_scores(tiny_run)
    assert scores["bc"].per_type["Lead"] == pytest.approx(0.1)
    assert Labeller.load(tiny_run).stage == "ner-tuned"  # the best held-out macro F1 (0.3)
    with pytest.raises(DiscourseRLError, match="episode"):
        Labeller.load(tiny_run, "episode")
    with pytest.raises(DiscourseRLError, match="not a trained run"):
        Labeller.load(tiny_run / "ner")


def test_predict_csv_and_jsonl_agree_and_all_stages(tiny_run: Path, tmp_path: Path) -> None:
    essays = tmp_path / "essays"
    essays.mkdir()
    for i, text in enumerate(_texts()):
        (essays / f"e{i}.txt").write_bytes(text.encode("utf-8"))
    base = ["predict", "--model", str(tiny_run), "--essays", str(essays), "--stage", "ner-naive"]
    assert main([*base, "--out", str(tmp_path / "a.csv")]) == 0
    assert main([*base, "--out", str(tmp_path / "a.jsonl"), "--format", "jsonl"]) == 0
    csv = pd.read_csv(tmp_path / "a.csv", dtype=str, keep_default_na=False)
    assert list(csv.columns) == ["id", "class", "predictionstring"]
    lines = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"e{i}" for i in range(len(_texts()))]
    from_jsonl = [
        (x["id"], el["type"], " ".join(map(str, range(el["word_start"], el["word_end"]))))
        for x in lines
        for el in x["elements"]
    ]
    assert from_jsonl == list(csv.itertuples(index=False, name=None))
    for x in lines:
        text = (essays / f"{x['id']}.txt").read_bytes().decode("utf-8")
        for el in x["elements"]:
            assert text[el["char_start"] : el["char_end"]] == el["text"]

    out = tmp_path / "all"
    args = ["predict", "--model", str(tiny_run), "--essays", str(essays), "--stage", "all"]
    assert main([*args, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{s}.csv" for s in ("ner-naive", "ner-tuned", "bc", "ppo")
    )
    assert (out / "ner-naive.csv").read_text() == (tmp_path / "a.csv").read_text()


def test_predict_skip_bad_labels_the_rest_and_exits_1(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    essays = tmp_path / "essays"
    essays.mkdir()
    for i, text in enumerate(_texts()[:2]):
        (essays / f"e{i}.txt").write_text(text, encoding="utf-8")
    (essays / "bad.txt").write_bytes(b"caf\xe9 au lait")
    out = tmp_path / "labels.jsonl"
    args = ["predict", "--model", str(tiny_run), "--essays", str(essays), "--out", str(out)]
    args += ["--format", "jsonl", "--stage", "ner-naive"]
    capsys.readouterr()
    assert main(args) == 2 and not out.exists()
    err = capsys.readouterr().err
    assert (
        err
        == f"discourse-rl: error: {essays / 'bad.txt'}: not UTF-8 text (byte 0xe9 at offset 3)\n"
    )
    assert main([*args, "--skip-bad"]) == 1
    assert [json.loads(x)["id"] for x in out.read_text().splitlines()] == ["e0", "e1"]
    err_lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("discourse-rl:")]
    assert err_lines == [
        f"discourse-rl: skipped {essays / 'bad.txt'}: not UTF-8 text (byte 0xe9 at offset 3)",
        "discourse-rl: 1 essay(s) skipped",
    ]


def test_label_command_prints_the_essay_legend_and_summary(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    essay = tmp_path / "mine.txt"
    essay.write_text(AWKWARD, encoding="utf-8")
    assert main(["label", str(essay), "--model", str(tiny_run), "--stage", "ner-naive"]) == 0
    out = capsys.readouterr().out
    assert "Legend" in out and "Summary (stage ner-naive)" in out and "Concluding" in out
    assert main(["label", str(essay), "--model", str(tiny_run), "--json"]) == 0
    blob = json.loads(capsys.readouterr().out)
    assert blob["stage"] == "ner-tuned" and set(blob["summary"]["counts"]) == set(CLASSES)
    assert main(["label", str(tmp_path / "none.txt"), "--model", str(tiny_run)]) == 2
    assert main(["label", str(essay), "--model", str(tmp_path)]) == 2


def _el(kind: str, start: int, conf: float = 0.9) -> Element:
    return Element(kind, start, start + 1, start, start + 1, "w", conf)


def test_summary_says_what_is_missing() -> None:
    elements = [_el("Lead", 0), _el("Claim", 1), _el("Evidence", 2), _el("Claim", 3, 0.2)]
    elements += [_el("Counterclaim", 4), _el("Evidence", 5)]
    s = summarise(elements, {"Claim": 0.7, "Rebuttal": 0.1, "Lead": 0.4})
    assert s.counts["Claim"] == 2 and s.counts["Rebuttal"] == 0
    assert "no Concluding Statement" in s.missing and "no Position" in s.missing
    assert "no Claim" not in s.missing
    unsupported = [m for m in s.missing if "has no Evidence" in m]
    assert len(unsupported) == 1 and unsupported[0].startswith("Claim 2")
    assert s.unsure == [3]
    assert s.reliability["Claim"] == "reliable" and s.reliability["Rebuttal"] == "a guess"
    assert s.reliability["Lead"] == "fair" and s.reliability["Evidence"] == "unknown"


def test_exported_zip_labels_like_the_run(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zipfile

    import numpy as np

    from discourse_rl.app.model_file import open_model

    monkeypatch.setenv("DISCOURSE_RL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "model.zip"
    assert main(["export", "--model", str(tiny_run), "--out", str(out), "--stage", "bc"]) == 0
    names = zipfile.ZipFile(out).namelist()
    assert "LICENSE.md" in names and "MODEL.md" in names and "agent/bc/policy.pt" in names
    assert not any("ppo" in n for n in names)
    manifest = json.loads(zipfile.ZipFile(out).read("export.json"))
    # The frozen encoder equals the backbone it came from: none of its tensors is stored.
    assert manifest["omitted"]["ner/encoder/model.safetensors"]
    assert out.stat().st_size < (tiny_run / "ner" / "encoder" / "model.safetensors").stat().st_size

    from_zip = Labeller.load(out)
    assert from_zip.stage == "bc" and from_zip.stages == ("ner-naive", "ner-tuned", "bc")
    text = _texts()[2]
    run = Labeller.load(tiny_run, "bc")
    essays = {"a": _essay(text)}
    p_zip = from_zip._ner.predict(essays)["a"]
    p_run = run._ner.predict(essays)["a"]
    np.testing.assert_allclose(p_zip, p_run, atol=5e-3)
    for el in from_zip.label(text):
        assert text[el.char_start : el.char_end] == el.text
    assert open_model(out) == from_zip.run  # unpacked once, then reused

    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DiscourseRLError, match="not a run folder or a model"):
        Labeller.load(bad)


def test_all_stages_come_from_one_tagger_pass(
    labeller: Labeller, monkeypatch: pytest.MonkeyPatch
) -> None:
    from discourse_rl.ner import NerPredictor

    calls: list[int] = []
    predict = NerPredictor.predict

    def counted(self: NerPredictor, essays, progress=False):  # type: ignore[no-untyped-def]
        calls.append(len(essays))
        return predict(self, essays, progress)

    monkeypatch.setattr(NerPredictor, "predict", counted)
    essays = {f"e{i}": _essay(t) for i, t in enumerate(_texts())}
    out = labeller.label_essays(essays, labeller.stages)
    assert calls == [len(essays)]
    assert set(out) == set(labeller.stages) and all(set(v) == set(essays) for v in out.values())


def test_export_keeps_only_trained_tensors_of_a_finetuned_fold(tmp_path: Path) -> None:
    """A fine-tuned fold model holds the backbone under `encoder.`: the frozen lower layers
    equal the backbone's and are left out; the trained ones come back from float16."""
    import torch
    from safetensors.torch import load_file, save_file

    from discourse_rl.app.export import _pack
    from discourse_rl.app.model_file import _restore
    from discourse_rl.app.model_file import base_weights as _base_weights

    torch.manual_seed(0)
    backbone = tmp_path / "backbone"
    backbone.mkdir()
    base = {
        "embeddings.word_embeddings.weight": torch.randn(20, 4),
        "encoder.layer.0.w": torch.randn(4, 4),
        "encoder.layer.1.w": torch.randn(4, 4),
    }
    save_file(base, str(backbone / "model.safetensors"))
    fold = {
        "encoder.embeddings.word_embeddings.weight": base["embeddings.word_embeddings.weight"],
        "encoder.encoder.layer.0.w": base["encoder.layer.0.w"].clone(),
        "encoder.encoder.layer.1.w": base["encoder.layer.1.w"] + 0.5,  # trained
        "head.out.weight": torch.randn(15, 4),
    }
    root = tmp_path / "unpacked"
    (root / "ner" / "fold0").mkdir(parents=True)
    src = tmp_path / "model.safetensors"
    save_file(fold, str(src))
    index, sha = _base_weights(str(backbone))
    packed, omitted = _pack(src, index)
    assert omitted == {
        "encoder.embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
        "encoder.encoder.layer.0.w": "encoder.layer.0.w",
    }
    (root / "ner" / "fold0" / "model.safetensors").write_bytes(packed)
    manifest = {"backbone": str(backbone), "backbone_sha256": sha}
    manifest["omitted"] = {"ner/fold0/model.safetensors": omitted}  # type: ignore[assignment]
    (root / "export.json").write_text(json.dumps(manifest))
    _restore(tmp_path / "m.zip", root)
    back = load_file(str(root / "ner" / "fold0" / "model.safetensors"))
    assert set(back) == set(fold)
    for name, t in fold.items():
        assert back[name].dtype == torch.float32
        torch.testing.assert_close(back[name], t, atol=2e-3, rtol=1e-3)
    assert torch.equal(back["encoder.encoder.layer.0.w"], fold["encoder.encoder.layer.0.w"])

    save_file(
        {**base, "encoder.layer.0.w": base["encoder.layer.0.w"] * 2},
        str(backbone / "model.safetensors"),
    )
    with pytest.raises(DiscourseRLError, match="needs the backbone"):
        _restore(tmp_path / "m.zip", root)
