"""Fixtures shared by test modules."""

from __future__ import annotations

import pytest

from discourse_rl.core.data import Corpus, load_corpus
from tests.tiny import save_tiny_bert


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer BERT of hidden size 32 (a module may override it with its own)."""
    return str(save_tiny_bert(tmp_path_factory.mktemp("tiny"), 32, 2, 128))


@pytest.fixture(scope="session")
def corpus_small() -> Corpus:
    """The first 8 essays of the embedded sample."""
    corpus = load_corpus()
    return corpus.subset(sorted(corpus.essays)[:8])
