"""The agent's hyper-parameter search: values land in the right tables, inner folds are
seeded and leave nothing behind, and Optuna's first trial is the base itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.decoders.agent.episode import EpisodeConfig
from discourse_rl.decoders.agent.search import configure, inner_score, search
from tests.test_episode import TINY as EPISODE_TINY
from tests.test_episode import task
from tests.tiny import agent_with

# Three cloning epochs: the search's plumbing is under test, not what the policy learns.
TINY = agent_with(EPISODE_TINY, bc={"epochs": 3}, val_fraction=0.25)
EPISODE = EpisodeConfig(passes=1.0, batch_essays=8, samples=4, eval_every=2, progress_bar=False)


def test_configure_puts_each_value_in_its_table() -> None:
    agent, episode = configure(
        TINY, EPISODE, {"network.dropout": 0.25, "bc.lr": 0.002, "episode.kl_beta": 0.05}
    )
    assert agent.network.dropout == 0.25 and agent.bc.lr == 0.002
    assert episode.kl_beta == 0.05
    assert agent.bc.epochs == TINY.bc.epochs and episode.samples == EPISODE.samples
    with pytest.raises(DiscourseRLError, match=r"'ppo\.lr' names no"):
        configure(TINY, EPISODE, {"ppo.lr": 0.1})
    with pytest.raises(TypeError):
        configure(TINY, EPISODE, {"bc.no_such_field": 1})


@pytest.mark.slow
def test_inner_score_is_seeded_and_cleans_up(tmp_path: Path) -> None:
    corpus, segs = task()
    first = inner_score(segs[:24], corpus, TINY, EPISODE, 2, tmp_path / "a")
    again = inner_score(segs[:24], corpus, TINY, EPISODE, 2, tmp_path / "b")
    assert first == again
    assert 0.0 < first <= 1.0
    assert not any((tmp_path / "a").iterdir())  # every fold's policies removed after scoring
    with pytest.raises(DiscourseRLError, match="3 inner folds for 4 essays"):
        inner_score(segs[:4], corpus, TINY, EPISODE, 3, tmp_path / "c")


@pytest.mark.slow
def test_search_starts_from_the_base(tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    corpus, segs = task()
    space = {"bc.lr": ("log", 1e-4, 5e-4), "episode.samples": ("int", 2, 6)}
    best, history = search(
        segs[:16], corpus, (TINY, EPISODE), 2, tmp_path, space=space, log=lambda _: None
    )
    assert set(best) == set(space) and len(history) == 2
    assert history[0]["bc.lr"] == 5e-4  # the base's 1e-3 clipped into the range
    assert history[0]["episode.samples"] == 4
