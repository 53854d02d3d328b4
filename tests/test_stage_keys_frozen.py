"""The keys of the existing steps (ner, gbdt, agent, ner_rl) for the shipped configs, as the
code before the agent-gbdt and combine steps computed them (main at 097cf29): a run folder made
then is reused, and only the steps added since run when they are enabled."""

from __future__ import annotations

from pathlib import Path

import pytest

from discourse_rl.core.data import load_corpus
from discourse_rl.run.config import load_run_config
from discourse_rl.run.pipeline import stage_keys

DEMO = {
    "keys": {
        "ner": "0453d0f0abf399cf",
        "gbdt": "c5d80719f63df3df",
        "agent": "e823c73dbd3e2e16",
        "ner_rl": "258d37aedb9d33af",
    },
    "legacy": {
        "ner": "1379fad414ba9286",
        "gbdt": "58bc7fbc13d9807f",
        "agent": "31a95238afbdb534",
        "ner_rl": "9014bf87368615fa",
    },
}
REFERENCE = {
    "keys": {
        "ner": "c9c0c2cf561db8dd",
        "gbdt": "efe92425c943230b",
        "agent": "377fa37d1cc1ba6f",
        "ner_rl": "0a3100e365f62323",
    },
    "legacy": {
        "ner": "9e1b9d19e7e2913f",
        "gbdt": "cefc612801c3d5d7",
        "agent": "290d5c4600dac64a",
        "ner_rl": "be23d8376c282dba",
    },
}
"""Computed on the embedded sample (its sure essays) with main's `stage_keys`."""
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, DEMO),
        (ROOT / "configs/demo.toml", DEMO),
        (ROOT / "configs/reference.toml", REFERENCE),
    ],
)
def test_existing_step_keys_are_unchanged(config: Path | None, expected: dict) -> None:  # type: ignore[type-arg]
    corpus = load_corpus(None).sure_subset()
    cfg = load_run_config(config)
    for legacy, table in ((False, expected["keys"]), (True, expected["legacy"])):
        keys = stage_keys(corpus, cfg, legacy=legacy)
        assert {k: keys[k] for k in table} == table
