"""A very long essay in predict: memory stays bounded (groups of words, pieces of long essays,
encoder batches capped by `encode_tokens`), and ordinary essays get the same probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from discourse_rl.core.data import NUM_LABELS, Essay, load_corpus
from discourse_rl.ner import inference
from discourse_rl.ner.inference import essay_pieces
from discourse_rl.ner.predict import NerPredictor
from tests.tiny_run import make_tiny_run


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> NerPredictor:
    return NerPredictor.load(make_tiny_run(tmp_path_factory.mktemp("long")), threads=1)


def _long_essay(n_paragraphs: int) -> Essay:
    texts = [e.text for e in load_corpus().essays.values()]
    text = "\n\n".join(texts[k % len(texts)] for k in range(n_paragraphs))
    return Essay.from_text("long", text)


def test_pieces_keep_every_word_in_order() -> None:
    essay = _long_essay(12)
    pieces = essay_pieces(essay, 700)
    assert len(pieces) == -(-essay.n_words // 700) > 1
    assert [w for p in pieces for w in p.words] == list(essay.words)
    assert all(p.n_words <= 700 for p in pieces)
    assert essay_pieces(pieces[0], 700) == [pieces[0]]


def test_long_essay_is_predicted_in_bounded_batches(
    predictor: NerPredictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inference, "PIECE_WORDS", 1000)
    monkeypatch.setattr(inference, "GROUP_WORDS", 1500)
    essay = _long_essay(20)
    short = next(iter(load_corpus().essays.values()))
    assert essay.n_words > 5 * 1000

    group_words: list[int] = []
    original = NerPredictor._predict

    def counting(self: NerPredictor, listed: list[Essay], bar: Any) -> Any:
        group_words.append(sum(e.n_words for e in listed))
        return original(self, listed, bar)

    monkeypatch.setattr(NerPredictor, "_predict", counting)
    tokens: list[int] = []

    def count_tokens(_module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        tokens.append(int(kwargs["input_ids"].numel()))

    assert predictor.encoder is not None
    hook = predictor.encoder.register_forward_pre_hook(count_tokens, with_kwargs=True)
    try:
        probs = predictor.predict({"long": essay, "short": short})
        alone = predictor.predict({"short": short})
    finally:
        hook.remove()

    assert probs["long"].shape == (essay.n_words, NUM_LABELS)
    assert np.allclose(probs["long"].sum(1), 1.0, atol=1e-3)
    # Every call held at most GROUP_WORDS words, and every encoder batch at most encode_tokens.
    assert len(group_words) >= essay.n_words // 1500 and max(group_words) <= 1500
    assert tokens and max(tokens) <= predictor.cfg.encode_tokens
    # An ordinary essay's probabilities do not depend on what it was predicted with.
    torch.testing.assert_close(torch.from_numpy(probs["short"]), torch.from_numpy(alone["short"]))
