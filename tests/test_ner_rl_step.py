"""The tagger's RL phase as a step of the run (`ner_rl`): turning it on re-runs nothing else,
its rows join the held-out table, and `feeds` makes the second stages read its probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from discourse_rl.app.export import export_model
from discourse_rl.app.model_file import open_model
from discourse_rl.core.data import load_corpus, load_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.records import SpansResults, StepResults
from discourse_rl.ner import predict_word_probs
from discourse_rl.ner.run import fed_arm
from discourse_rl.run.config import load_run_config
from discourse_rl.run.heldout import heldout_table
from discourse_rl.run.pipeline import run_pipeline
from discourse_rl.run.steps.ner_rl import metrics_path, results_path
from tests.test_pipeline import _config, few_essays, tiny_backbone  # noqa: F401  (fixtures)

RL_TABLE = """
[ner_rl]
enabled = true
control = true
steps = 2
batch_essays = 2
samples = 3
eval_essays = 2
eval_every = 1
save_every = 1
ce_weight = 1.0
"""


def _write(path: Path, base: Path, extra: str) -> Path:
    text = base.read_text(encoding="utf-8").replace("[ner]\n", '[ner]\nmode = "finetune"\n', 1)
    path.write_text(text + extra, encoding="utf-8")
    return path


@pytest.mark.slow
def test_the_rl_step_adds_rows_and_feeds_the_second_stages(
    tmp_path: Path,
    tiny_backbone: Path,  # noqa: F811
    few_essays: Path,  # noqa: F811
) -> None:
    base = _config(tmp_path / "base.toml", tiny_backbone, episode_trainer=False)
    plain = _write(tmp_path / "plain.toml", base, "")
    run = tmp_path / "run"
    lay = RunLayout(run)
    quiet = {"log": lambda _: None}
    first = run_pipeline(few_essays, run, plain, **quiet)
    assert first.ran == ("ner", "gbdt", "agent")

    # Turning the phase on trains it alone: the second stages still read the CE tagger.
    with_rl = _write(tmp_path / "rl.toml", base, RL_TABLE)
    second = run_pipeline(few_essays, run, with_rl, **quiet)
    assert second.ran == ("ner_rl",)
    assert set(second.reused) == {"ner", "gbdt", "agent"}
    rows = [s.stage for s in heldout_table(run).rows]
    assert rows[:6] == [
        "ner-naive",
        "ner-tuned",
        "ner-rl",
        "ner-rl-tuned",
        "ner-control",
        "ner-control-tuned",
    ]
    res = StepResults.read(results_path(lay))
    spans = SpansResults.read(lay.gbdt_results)
    assert res.heldout == spans.heldout and all(s.n_heldout == 6 for s in res.stages)
    assert metrics_path(lay).is_file() and (lay.ner / "rl" / "curves.png").is_file()
    for arm in ("rl", "control"):
        probs = load_word_probs(lay.ner / arm / "oof.npz")
        assert set(probs) == set(load_word_probs(lay.oof))  # every essay: score_train_essays = 0
    assert lay.manifest("ner_rl").is_file()

    # feeds = "rl": spans and agent re-run on the RL tagger's probabilities, ner_rl is reused.
    fed = _write(tmp_path / "fed.toml", base, RL_TABLE + 'feeds = "rl"\n')
    assert load_run_config(fed).ner_rl.feeds == "rl"
    third = run_pipeline(few_essays, run, fed, **quiet)
    assert third.ran == ("gbdt", "agent") and "ner_rl" in third.reused
    spans = SpansResults.read(lay.gbdt_results)
    naive = spans.stage("ner-naive")
    rl_row = res.stage("ner-rl")
    assert naive is not None and rl_row is not None
    # The gbdt step's naive row now decodes the RL tagger's probabilities.
    assert naive.macro_f1.mean == rl_row.macro_f1.mean
    rl_probs = load_word_probs(lay.ner / "rl" / "oof.npz")
    ce_probs = load_word_probs(lay.oof)
    assert any(not np.array_equal(rl_probs[i], ce_probs[i]) for i in ce_probs)
    assert run_pipeline(few_essays, run, fed, **quiet).ran == ()
    # New essays are labelled by the tagger the second stages were fitted on, in the run folder
    # and in its export.
    assert fed_arm(lay) == "rl"
    essays = {i: e for i, e in sorted(load_corpus(few_essays).essays.items())[:2]}
    rl_new = predict_word_probs(run, essays)
    export_model(run, tmp_path / "fed.zip", every_stage=True)
    packed = predict_word_probs(open_model(tmp_path / "fed.zip"), essays)
    assert all(np.allclose(rl_new[i], packed[i], atol=2e-2) for i in essays)

    # Off again: its outputs go, the second stages go back to the CE tagger's (their old key).
    off = run_pipeline(few_essays, run, plain, **quiet)
    assert off.ran == ("gbdt", "agent")
    assert not (lay.ner / "rl").exists() and not (lay.ner / "fold0" / "rl").exists()
    assert not results_path(lay).exists()
    assert fed_arm(lay) == "ce"
    ce_new = predict_word_probs(run, essays)
    assert any(not np.array_equal(ce_new[i], rl_new[i]) for i in essays)
