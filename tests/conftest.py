"""Fixtures shared by test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from discourse_rl.core.data import Corpus, load_corpus
from tests.tiny import save_tiny_bert


@pytest.fixture(scope="session", autouse=True)
def precision_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The precision probe's cache in a folder of the session (child processes inherit it),
    not the user's ~/.cache."""
    os.environ["DISCOURSE_RL_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer BERT of hidden size 32 (a module may override it with its own)."""
    return str(save_tiny_bert(tmp_path_factory.mktemp("tiny"), 32, 2, 128))


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    """The embedded sample (a module may override it with its own)."""
    return load_corpus(None)


@pytest.fixture(scope="session")
def corpus_small() -> Corpus:
    """The first 8 essays of the embedded sample."""
    corpus = load_corpus()
    return corpus.subset(sorted(corpus.essays)[:8])


@pytest.fixture(scope="session")
def served_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run folder for the web server's and the page's tests."""
    from tests.tiny_run import make_tiny_run

    return make_tiny_run(tmp_path_factory.mktemp("served"))
