"""The RL phase of the tagger (`ner.rl`): its loss learns, its policy is what prediction reads,
it runs on a tiny run folder with its control, and it resumes after a kill."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from discourse_rl.core.data import NUM_LABELS, labels_to_spans, load_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.metric import essay_counts, essay_f1
from discourse_rl.ner import rl
from discourse_rl.ner import rl_sampling as rs
from discourse_rl.ner.config import NerConfig
from tests.tiny import save_tiny_bert, tiny_cfg


def _target(n: int, seed: int) -> np.ndarray:
    """A valid labelling with a few spans."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(n, dtype=np.int64)
    t = 0
    while t < n - 4:
        c = int(rng.integers(0, 7))
        length = int(rng.integers(3, 8))
        lab[t] = 1 + 2 * c
        lab[t + 1 : t + length] = 2 + 2 * c
        t += length + int(rng.integers(0, 3))
    return lab[:n]


@pytest.mark.parametrize(
    ("sampler", "baseline", "reward"),
    [("masked", "rloo", "f1"), ("lattice", "greedy", "f1"), ("masked", "greedy", "macro")],
)
def test_the_loss_learns_whole_spans(sampler: str, baseline: str, reward: str) -> None:
    """Free logits as the policy: descending the RL loss raises the greedy sequence's essay F1
    from a noisy start."""
    torch.manual_seed(0)
    n, b = 16, 3
    targets = [_target(n, s) for s in range(b)]
    start = torch.randn(b, n, NUM_LABELS) * 0.5
    for i, t in enumerate(targets):  # a weak hint of the truth
        start[i, torch.arange(n), torch.from_numpy(t)] += 1.0
    logits = start.clone().requires_grad_(True)
    ref = torch.log_softmax(start, -1)
    cfg = rl.NerRlConfig(samples=16, sampler=sampler, baseline=baseline, reward=reward, kl_beta=0.0)  # type: ignore[arg-type]
    lat = rs.lattice(()) if sampler == "lattice" else None
    gold = [labels_to_spans(t) for t in targets]
    pol = rl._Policy(None, None, None, cfg, gold, targets, lat, None)  # type: ignore[arg-type]
    lengths = torch.full((b,), n)

    def greedy_f1() -> float:
        seqs = rl.greedy(torch.log_softmax(logits.detach(), -1), lengths, lat)
        return float(
            np.mean(
                [
                    essay_f1(essay_counts(*labels_to_spans(seqs[i, 0].numpy()), *gold[i]))
                    for i in range(b)
                ]
            )
        )

    before = greedy_f1()
    opt = torch.optim.Adam([logits], lr=0.2)
    for step in range(50):
        loss, stats = rl.rl_loss(
            torch.log_softmax(logits, -1),
            ref,
            lengths,
            pol,
            list(range(b)),
            np.random.default_rng(step),
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert before < 0.6
    assert greedy_f1() > before + 0.2
    assert {"reward", "reward_spread", "kl", "entropy", "loss"} <= set(stats)


def test_the_kl_is_zero_with_zero_gradient_at_the_reference() -> None:
    logits = torch.randn(2, 9, NUM_LABELS, requires_grad=True)
    logp = torch.log_softmax(logits, -1)
    kl = rl._kl_per_word(logp, logp.detach(), torch.tensor([9, 4]))
    assert float(kl.detach().abs().max()) < 1e-6
    kl.sum().backward()
    assert float(logits.grad.abs().max()) < 1e-6  # type: ignore[union-attr]


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="samples"):
        rl.NerRlConfig(samples=1)
    with pytest.raises(ValueError, match="sampler"):
        rl.NerRlConfig(sampler="beam")  # type: ignore[arg-type]
    assert rl.NerRlConfig(samples=1, baseline="greedy").samples == 1
    assert "eval_every" not in rl.NerRlConfig().identity()


# ---------------------------------------------------------------------------------------------
# On a tiny run folder


@pytest.fixture(scope="module")
def tiny_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, NerConfig, object, dict[str, int]]:
    from discourse_rl.core.data import load_corpus
    from discourse_rl.ner.stage import train_ner

    folder = tmp_path_factory.mktemp("nerrl")
    backbone = save_tiny_bert(folder / "backbone", 16, 2, 128)
    corpus = load_corpus()
    corpus = corpus.subset(sorted(corpus.essays)[:8])
    ner = tiny_cfg(
        str(backbone),
        mode="finetune",
        head_hidden=8,
        epochs=1.0,
        batch_size=16,
        encode_tokens=8192,
        bf16=False,
        freeze_layers=1,
        cache_frozen=True,
        hidden_dropout=0.0,
        dropout=0.0,
        threads=1,
        predict_windows="full",
    )
    run = folder / "run"
    train_ner(corpus, ner, run, seed=1)
    folds = json.loads(RunLayout(run).ner_folds.read_text())
    return run, ner, corpus, folds


def _copy_run(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


SMALL = rl.NerRlConfig(
    enabled=True, steps=4, batch_essays=2, samples=3, eval_essays=2, eval_every=2, save_every=2
)


def test_the_policy_is_what_prediction_reads(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from discourse_rl.ner.finetune import _prepare, _state_cache
    from discourse_rl.ner.inference import Reading, default_device, window_probs

    run, ner, corpus, _ = tiny_run
    layout = RunLayout(run)
    device = default_device()
    data = _prepare(corpus, ner, layout)
    for cache in (None, _state_cache(ner, layout, data.per_essay, data.pad_id, device)):
        essays = rl._Essays(data, cache, ner, device)
        model = rl._load_fold_model(layout, ner, 0).eval()
        positions = [0, 3, 5]
        with torch.no_grad():
            logp, lengths = essays.logp(model, positions)
        want = window_probs(
            [model], [data.essays[p] for p in positions], Reading(data.tokenizer, ner, device)
        )
        for b, w in enumerate(want):
            n = int(lengths[b])
            assert n == len(w)
            assert np.allclose(logp[b, :n].exp().numpy(), w, atol=1e-5)
            assert torch.allclose(logp[b, n:].exp()[:, 0], torch.ones(logp.shape[1] - n))


def test_phase_and_control_on_a_tiny_run(tiny_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run0, ner, corpus, folds = tiny_run
    run = _copy_run(run0, tmp_path / "run")
    layout = RunLayout(run)
    metrics = rl.train_rl(
        corpus, ner, replace(SMALL, control=True, sampler="lattice"), layout, folds, 1
    )
    assert set(metrics) == {"rl", "control"}
    for arm in ("rl", "control"):
        probs = load_word_probs(rl.arm_oof(layout, arm))
        assert set(probs) == set(folds)
        for i, p in probs.items():
            assert p.shape == (corpus.essays[i].n_words, NUM_LABELS)
            assert np.allclose(p.sum(1), 1.0, atol=1e-2)
        assert 0.0 <= metrics[arm]["naive_macro_f1"] <= 1.0
    done = json.loads(rl.rl_fold(layout, 0).done.read_text())
    control = json.loads(rl.control_fold(layout, 0).done.read_text())
    assert done["steps"] == 4
    assert control["trained_seconds"] >= done["seconds"]  # the same wall time (or a step more)
    hist = json.loads((rl.rl_fold(layout, 0).root / "history.json").read_text())["history"]
    assert [h["step"] for h in hist if "eval_macro_f1" in h] == [0, 2, 4]
    assert any(rl.rl_fold(layout, 0).tensorboard.iterdir())
    assert (rl.arm_dir(layout, "rl") / "curves.png").is_file()
    # The RL model moved away from the cross-entropy one; the CE fold model is untouched.
    ce = load_word_probs(layout.fold(0).oof)
    new = load_word_probs(rl_fold_oof := rl.rl_fold(layout, 0).oof)
    assert rl_fold_oof.is_file()
    assert any(not np.array_equal(ce[i], new[i]) for i in ce)
    # Finished folds are skipped: a second call changes nothing.
    stamp = rl.rl_fold(layout, 0).model.stat().st_mtime_ns
    rl.train_rl(corpus, ner, replace(SMALL, control=True, sampler="lattice"), layout, folds, 1)
    assert rl.rl_fold(layout, 0).model.stat().st_mtime_ns == stamp


def test_a_killed_phase_resumes_where_it_stopped(
    tiny_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import load_file

    run0, ner, corpus, folds = tiny_run
    # The tiny tagger finds no span, so every reward is 0: the cross-entropy term gives the
    # updates a real gradient (Adam would blow numerical noise up to full steps otherwise).
    cfg = replace(SMALL, ce_weight=1.0, eval_essays=0)
    whole = _copy_run(run0, tmp_path / "whole")
    rl.train_rl(corpus, ner, cfg, RunLayout(whole), folds, 1)
    killed = _copy_run(run0, tmp_path / "killed")
    original = rl.rl_loss
    calls = {"n": 0}

    def dying(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 3:  # fold 0's third update, after the checkpoint of step 2
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(rl, "rl_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        rl.train_rl(corpus, ner, cfg, RunLayout(killed), folds, 1)
    monkeypatch.setattr(rl, "rl_loss", original)
    state = torch.load(rl.rl_fold(RunLayout(killed), 0).checkpoint, weights_only=False)
    assert state["step"] == 2
    rl.train_rl(corpus, ner, cfg, RunLayout(killed), folds, 1)
    for k in (0, 1):
        runs = [
            json.loads((rl.rl_fold(RunLayout(r), k).root / "history.json").read_text())
            for r in (whole, killed)
        ]
        assert [h["step"] for h in runs[1]["history"]] == [1, 2, 3, 4]
        for a, b in zip(*(r["history"] for r in runs), strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
        # Not bit for bit: Adam turns float noise in coordinates whose gradient is ~0 (an
        # attention key's bias) into full steps; everything else matches.
        a = load_file(str(rl.rl_fold(RunLayout(whole), k).model))
        b = load_file(str(rl.rl_fold(RunLayout(killed), k).model))
        assert all(torch.allclose(a[n], b[n], atol=1e-4) for n in a), k


def test_the_phase_trains_in_the_precision_the_machine_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`bf16 = "auto"` is the measured choice, never bf16 because "auto" is truthy: on a CPU
    without native bf16 the RL updates ran 10x slower that way."""
    from discourse_rl.ner import precision
    from discourse_rl.ner.inference import default_device

    for chosen in (False, True):
        monkeypatch.setattr(precision, "train_bf16", lambda cfg, device, model=None, c=chosen: c)
        essays = rl._Essays(None, None, NerConfig(bf16="auto"), default_device())  # type: ignore[arg-type]
        assert essays.bf16 is chosen
