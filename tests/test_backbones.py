"""Backbone families beyond BERT: tiny random RoBERTa (byte-level BPE), DeBERTa-v2 (unigram,
sentencepiece-style), Longformer (local + global attention) and MPNet (WordPiece), each with a
tokenizer trained here on the embedded sample (no hub), through the same code: alignment,
paragraph markers, freezing lower layers, windows, a few training steps and prediction."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import NUM_LABELS, Corpus, load_corpus, load_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.ner import NerPredictor, train_ner
from discourse_rl.ner.backbone import (
    check_marker,
    freeze_lower,
    layer_stack,
    load_encoder,
    load_tokenizer,
    special_ids,
)
from discourse_rl.ner.model import NerModel
from discourse_rl.ner.tokens import essay_windows, tokenize_essays, word_layout
from tests.tiny import tiny_cfg

ROBERTA_SPECIAL = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "cls_token": "<s>",
    "sep_token": "</s>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
BERT_SPECIAL = {
    "bos_token": "[CLS]",
    "eos_token": "[SEP]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "mask_token": "[MASK]",
}
SMALL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}


def _texts() -> list[str]:
    return [e.text for e in load_corpus().essays.values()][:120]


def _byte_bpe(special: dict[str, str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=list(dict.fromkeys(special.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_texts(), trainer)
    return tok


def _unigram(special: dict[str, str]) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=600,
        special_tokens=list(dict.fromkeys(special.values())),
        unk_token=special["unk_token"],
        initial_alphabet=["¶"],
    )
    tok.train_from_iterator(_texts(), trainer)
    return tok


def _wordpiece(special: dict[str, str], alphabet: tuple[str, ...] = ("¶",)) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token=special["unk_token"]))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=600,
        special_tokens=list(dict.fromkeys(special.values())),
        initial_alphabet=list(alphabet),
    )
    tok.train_from_iterator(_texts(), trainer)
    return tok


def _save(folder: Path, tok: Any, special: dict[str, str], cls_name: str, config: Any) -> str:
    """The tokenizer as the family's class would load it, and a random model."""
    import torch
    from transformers import AutoModel, PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    fast.save_pretrained(str(folder))
    meta = folder / "tokenizer_config.json"
    saved = json.loads(meta.read_text())
    meta.write_text(json.dumps({**saved, "tokenizer_class": cls_name}))
    config.vocab_size = fast.vocab_size
    config.pad_token_id = fast.pad_token_id
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(str(folder))
    return str(folder)


def roberta(folder: Path) -> str:
    from transformers import RobertaConfig

    cfg = RobertaConfig(**SMALL, max_position_embeddings=130, bos_token_id=0, eos_token_id=2)
    return _save(folder, _byte_bpe(ROBERTA_SPECIAL), ROBERTA_SPECIAL, "RobertaTokenizer", cfg)


def deberta_v2(folder: Path) -> str:
    from transformers import DebertaV2Config

    cfg = DebertaV2Config(
        **SMALL,
        max_position_embeddings=128,
        relative_attention=True,
        position_buckets=16,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
    )
    return _save(folder, _unigram(BERT_SPECIAL), BERT_SPECIAL, "DebertaV2Tokenizer", cfg)


def longformer(folder: Path) -> str:
    from transformers import LongformerConfig

    cfg = LongformerConfig(
        **SMALL, attention_window=[16, 16], max_position_embeddings=130, sep_token_id=2
    )
    return _save(folder, _byte_bpe(ROBERTA_SPECIAL), ROBERTA_SPECIAL, "LongformerTokenizer", cfg)


def mpnet(folder: Path) -> str:
    from transformers import MPNetConfig

    cfg = MPNetConfig(**SMALL, max_position_embeddings=130)
    return _save(folder, _wordpiece(ROBERTA_SPECIAL), ROBERTA_SPECIAL, "MPNetTokenizer", cfg)


FAMILIES: dict[str, Callable[[Path], str]] = {
    "roberta": roberta,
    "deberta-v2": deberta_v2,
    "longformer": longformer,
    "mpnet": mpnet,
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def backbone(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    return FAMILIES[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    c = load_corpus()
    return c.subset(sorted(c.essays)[:4])


def test_alignment_markers_windows_and_freezing(backbone: str, corpus: Corpus) -> None:
    tokenizer = load_tokenizer(backbone)
    essays = list(corpus.essays.values())
    check_marker(tokenizer, "¶")
    tokens = tokenize_essays(tokenizer, essays, "¶")
    for essay, t in zip(essays, tokens, strict=True):
        # Every word owns a sub-token; each paragraph after the first gets a marker.
        assert set(t.token_word[t.token_word >= 0].tolist()) == set(range(essay.n_words))
        starts = np.flatnonzero(word_layout(essay)[0][1:]) + 1
        before = {int(t.token_word[k + 1]) for k in np.flatnonzero(t.token_word[:-1] < 0)}
        assert set(starts.tolist()) <= before
    # Pre-split words get the sub-tokens they have in running text (byte-level BPE: a space
    # before each word, `add_prefix_space`).
    split = tokenizer(["the", "essay"], is_split_into_words=True, add_special_tokens=False)
    running = tokenizer("the essay", add_special_tokens=False)
    n_first = split.word_ids().count(0)
    assert (
        split["input_ids"][n_first:] == running["input_ids"][-(len(split["input_ids"]) - n_first) :]
    )
    cls_id, sep_id, _ = special_ids(tokenizer)
    windows = essay_windows(tokens[0], 0, 64, 16, cls_id, sep_id)
    assert len(windows) > 1 and all(len(w.input_ids) <= 64 for w in windows)
    assert windows[0].input_ids[0] == cls_id and windows[-1].word_end == essays[0].n_words

    model = NerModel(load_encoder(backbone), tiny_cfg(backbone))
    freeze_lower(model, 1)
    stack = layer_stack(model.encoder)
    assert stack is not None and len(stack[1]) == 2
    assert not any(p.requires_grad for p in stack[1][0].parameters())
    assert all(p.requires_grad for p in stack[1][1].parameters())
    embeddings = getattr(model.encoder, "embeddings")  # noqa: B009
    assert not any(p.requires_grad for p in embeddings.parameters())
    with pytest.raises(DiscourseRLError, match="has 2 layers"):
        freeze_lower(model, 3)

    # Fold models share their frozen lower layers only when everything outside the layer stack
    # (embeddings, DeBERTa's and MPNet's relative position tables) is equal too.
    import torch

    from discourse_rl.ner.inference import shared_depth

    other = NerModel(load_encoder(backbone), tiny_cfg(backbone))
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        stack_b = layer_stack(other.encoder)
        assert stack_b is not None
        next(stack_b[1][1].parameters()).add_(1.0)
    assert shared_depth([model, other]) == 1
    shared = [n for n, _ in other.encoder.named_parameters() if "rel" in n and "layer." not in n]
    if shared:
        with torch.no_grad():
            other.encoder.get_parameter(shared[0]).add_(1.0)
        assert shared_depth([model, other]) == 0


def test_training_steps_and_prediction(backbone: str, corpus: Corpus, tmp_path: Path) -> None:
    cfg = tiny_cfg(
        backbone, mode="finetune", epochs=1.0, freeze_layers=1, lr=1e-3, bf16=False, save_every=100
    )
    result = train_ner(corpus, cfg, tmp_path, seed=0)
    oof = load_word_probs(result.oof_path)
    assert {i: p.shape for i, p in oof.items()} == {
        i: (e.n_words, NUM_LABELS) for i, e in corpus.essays.items()
    }
    for p in oof.values():
        np.testing.assert_allclose(p.sum(1), 1, atol=2e-3)
    essays = dict(list(load_corpus().test_essays.items())[:2])
    probs = NerPredictor.load(RunLayout(tmp_path).root).predict(essays)
    assert {i: p.shape for i, p in probs.items()} == {
        i: (e.n_words, NUM_LABELS) for i, e in essays.items()
    }


def test_a_marker_the_tokenizer_does_not_know_is_one_clear_error(tmp_path: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=_wordpiece(BERT_SPECIAL, alphabet=()), **BERT_SPECIAL
    )
    with pytest.raises(DiscourseRLError, match="paragraph_marker = '¶' is unknown"):
        check_marker(tok, "¶")
    check_marker(tok, "")


def test_mpnet_parts_loader_checks_what_it_reassembles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The PyPI parts of all-mpnet-base-v2: a missing part, or parts whose concatenation is not
    the published zip, are one clear error and leave no model folder behind."""
    from discourse_rl.ner import mpnet_parts
    from discourse_rl.ner.backbone import resolve_backbone

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    if not all(_installed(p) for p in mpnet_parts.PARTS):
        with pytest.raises(DiscourseRLError, match=r"is not installed.*--no-deps"):
            resolve_backbone(mpnet_parts.NAME)
    fake = [tmp_path / f"all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)]
    for p in fake:
        p.write_bytes(b"not the weights")
    monkeypatch.setattr(mpnet_parts, "part_files", lambda: fake)
    with pytest.raises(DiscourseRLError, match=r"SHA-256 is .* not the published"):
        resolve_backbone(mpnet_parts.NAME)
    assert not mpnet_parts.cache_dir().joinpath("model").exists()
    assert [p.name for p in mpnet_parts.cache_dir().iterdir()] == []


def _installed(name: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True
