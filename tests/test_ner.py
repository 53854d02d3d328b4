"""NER training, run folders and prediction on a tiny randomly initialised BERT (hidden 32,
2 layers) with MiniLM's tokenizer: both training modes, resume, `NerPredictor`, the CLI."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from discourse_rl.app.cli import main
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import NUM_LABELS, load_corpus, load_word_probs, sample_dir
from discourse_rl.core.layout import FoldLayout, RunLayout
from discourse_rl.ner import (
    NerConfig,
    NerPredictor,
    NerRecord,
    finetune,
    frozen,
    predict_word_probs,
    train_ner,
)
from discourse_rl.ner.backbone import freeze_lower, load_encoder, load_tokenizer
from discourse_rl.ner.model import NerModel
from discourse_rl.ner.run import write_record
from tests.tiny import tiny_cfg


def test_frozen_training_oof_resume_and_predict(
    tiny_backbone: str, corpus_small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_cfg(tiny_backbone, word_conv=3, class_balance=0.5)
    reference = train_ner(corpus_small, cfg, tmp_path / "a", seed=3)
    oof = load_word_probs(reference.oof_path)
    assert set(oof) == set(corpus_small.essays)
    for i, p in oof.items():
        assert p.shape == (corpus_small.essays[i].n_words, NUM_LABELS)
        np.testing.assert_allclose(p.sum(1), 1, atol=2e-3)
    fold = RunLayout(tmp_path / "a").fold(0)
    assert fold.tensorboard.is_dir() and fold.head.is_file() and fold.done.is_file()
    assert reference.test_path is not None
    assert set(load_word_probs(reference.test_path)) == set(corpus_small.test_essays)

    # Interrupt fold 0 after its first epoch's checkpoint; the rerun resumes and lands on the
    # same weights as the uninterrupted run.
    calls = {"n": 0}
    real_val_loss = frozen._val_loss

    def flaky(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_val_loss(*args, **kwargs)

    monkeypatch.setattr(frozen, "_val_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_ner(corpus_small, cfg, tmp_path / "b", seed=3)
    state = torch.load(RunLayout(tmp_path / "b").fold(0).checkpoint, weights_only=False)
    assert state["epoch"] == 1
    monkeypatch.setattr(frozen, "_val_loss", real_val_loss)
    resumed = train_ner(corpus_small, cfg, tmp_path / "b", seed=3)
    for i, p in load_word_probs(resumed.oof_path).items():
        np.testing.assert_allclose(p, oof[i], atol=2e-3)

    essays = {e.id: e for e in list(corpus_small.test_essays.values())[:2]}
    probs = predict_word_probs(tmp_path / "a", essays)
    assert {i: p.shape for i, p in probs.items()} == {
        i: (e.n_words, NUM_LABELS) for i, e in essays.items()
    }
    assert_predictor_matches(tmp_path / "a", essays, probs)


def assert_predictor_matches(run: Path, essays: dict, probs: dict) -> None:  # type: ignore[type-arg]
    """A predictor loaded once gives, call after call, what `predict_word_probs` gave."""
    predictor = NerPredictor.load(run)
    for _ in range(2):
        again = predictor.predict(essays)
        assert list(again) == list(probs)
        for i, p in probs.items():
            np.testing.assert_array_equal(again[i], p)
    assert predictor.predict({}) == {}


def test_finetune_mode_with_trainer(tiny_backbone: str, corpus_small, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    corpus = corpus_small.subset(sorted(corpus_small.essays)[:4])
    cfg = tiny_cfg(tiny_backbone, mode="finetune", epochs=1.0, save_every=2, lr=1e-3, head_lr=1e-2)
    result = train_ner(corpus, cfg, tmp_path, seed=0)
    oof = load_word_probs(result.oof_path)
    assert {i: p.shape[0] for i, p in oof.items()} == {
        i: e.n_words for i, e in corpus.essays.items()
    }
    fold = RunLayout(tmp_path).fold(0)
    assert fold.model.is_file()
    assert any(fold.checkpoints.glob("checkpoint-*"))
    essays = dict(list(corpus.test_essays.items())[:2])
    probs = predict_word_probs(tmp_path, essays)
    for p in probs.values():
        np.testing.assert_allclose(p.sum(1), 1, atol=2e-3)
    assert_predictor_matches(tmp_path, essays, probs)


def test_trainer_arguments_fit_the_installed_transformers(
    tiny_backbone: str, tmp_path: Path
) -> None:
    """Warm-up is a fraction of the steps and windows are grouped by length, whichever way the
    installed transformers spells them (4.x: warmup_ratio, group_by_length; 5.x: warmup_steps
    below 1, train_sampling_strategy)."""
    cfg = tiny_cfg(tiny_backbone, mode="finetune", warmup=0.1)
    args = finetune.training_arguments(cfg, FoldLayout(tmp_path), torch.device("cpu"), 0)
    assert args.get_warmup_steps(1000) == math.ceil(0.1 * 1000)
    strategy = getattr(args, "train_sampling_strategy", None)
    assert strategy == "group_by_length" or getattr(args, "group_by_length", False) is True
    assert args.output_dir == str(FoldLayout(tmp_path).checkpoints)


def test_finetune_optimizer_gives_the_head_its_rate(tiny_backbone: str) -> None:
    model = NerModel(load_encoder(tiny_backbone), NerConfig(head_hidden=8))
    freeze_lower(model, 1)
    assert finetune._optimizer(model, NerConfig(head_lr=0.0)) is None
    opt = finetune._optimizer(model, NerConfig(lr=1e-4, head_lr=1e-2))
    assert opt is not None
    encoder_group, head_group = opt.param_groups
    assert (encoder_group["lr"], head_group["lr"]) == (1e-4, 1e-2)
    n_frozen = sum(1 for p in model.encoder.parameters() if not p.requires_grad)
    assert n_frozen and len(encoder_group["params"]) == sum(
        1 for p in model.encoder.parameters() if p.requires_grad
    )
    assert len(head_group["params"]) == len(list(model.head.parameters()))


def test_cli_train_and_predict(tiny_backbone: str, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "c.toml"
    config.write_text(
        f'seed = 1\n[ner]\nbackbone = "{tiny_backbone}"\nmax_essays = 6\nfolds = 2\n'
        "window = 64\noverlap = 16\nhead_hidden = 8\nepochs = 1.0\n"
        "[decode]\nmax_min_words = 5\n[agent.bc]\nepochs = 1\n"
    )
    run = tmp_path / "run"
    assert main(["train-ner", "--out", str(run), "--config", str(config)]) == 0
    assert "ner-tuned (out of fold)" in capsys.readouterr().out
    for name in ("config.toml", "format.json", "decode.json", "ner/metrics.json", "ner/oof.npz"):
        assert (run / name).is_file(), name
    out = tmp_path / "sub.csv"
    test_dir = sample_dir() / "test"
    for stage in ("ner-naive", "ner-tuned"):
        assert (
            main(
                [
                    "predict",
                    "--model",
                    str(run),
                    "--essays",
                    str(test_dir),
                    "--out",
                    str(out),
                    "--stage",
                    stage,
                ]
            )
            == 0
        )
        header = out.read_text().splitlines()[0]
        assert header == "id,class,predictionstring"
    one = next(test_dir.glob("*.txt"))
    assert main(["predict", "--model", str(run), "--essays", str(one), "--out", str(out)]) == 0
    assert main(["predict", "--model", str(tmp_path), "--essays", str(one), "--out", str(out)]) == 2


def test_class_weights_lift_rare_classes() -> None:
    labels = [
        np.array([0, 1, 2, 2, 2, 2, 2, 2, 3, 4, 0], dtype=np.int64)
    ]  # Lead 7 words, Position 2
    w = frozen.class_weights(labels, 0.5).numpy()
    assert w[0] == 1 and w[1] == w[2] == pytest.approx(1.0)
    assert w[3] == w[4] == pytest.approx((2 / 7) ** -0.5)
    assert w[5] > w[3]  # absent classes get the largest weight (count clamped to 1)


def test_cache_of_all_essays_serves_a_subset(
    tiny_backbone: str, corpus_small, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    cfg = tiny_cfg(tiny_backbone)
    enc_dir = tmp_path / "ner" / "encoder"
    load_encoder(tiny_backbone).save_pretrained(str(enc_dir))
    load_tokenizer(tiny_backbone).save_pretrained(str(enc_dir))
    full = frozen.build_cache(corpus_small, cfg, tmp_path)
    subset = corpus_small.subset(sorted(corpus_small.essays)[2:5])

    def no_encoding(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("the finished cache should have been reused")

    monkeypatch.setattr(frozen, "encode_word_vectors", no_encoding)
    part = frozen.build_cache(subset, cfg, tmp_path)
    for i in subset.essays:
        np.testing.assert_array_equal(part.get(i), full.get(i))
    # Encoded differently (another window): not reused, so it must encode again.
    with pytest.raises(AssertionError, match="reused"):
        frozen.build_cache(subset, replace(cfg, overlap=8), tmp_path)


def test_predict_without_models_is_one_clear_error(tiny_backbone: str, tmp_path: Path) -> None:
    cfg = tiny_cfg(tiny_backbone, mode="finetune")
    write_record(RunLayout(tmp_path), NerRecord(0, cfg))
    essays = dict(list(load_corpus().essays.items())[:1])
    with pytest.raises(DiscourseRLError, match="not a trained run folder"):
        NerPredictor.load(tmp_path / "elsewhere")
    with pytest.raises(DiscourseRLError, match="no NER model"):
        predict_word_probs(tmp_path, essays)
    with pytest.raises(DiscourseRLError, match="no NER model"):
        NerPredictor.load(tmp_path)
    enc_dir = tmp_path / "ner" / "encoder"
    load_encoder(tiny_backbone).save_pretrained(str(enc_dir))
    with pytest.raises(DiscourseRLError, match=r"model\.safetensors: fold model missing"):
        predict_word_probs(tmp_path, essays)
