"""The NER stage's model side on a tiny randomly initialised BERT (hidden 32, 2 layers) with
MiniLM's tokenizer: words to sub-tokens, windows, the head, batched inference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import NUM_LABELS, Essay, load_corpus
from discourse_rl.ner.backbone import freeze_lower, load_encoder, load_tokenizer, special_ids
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.inference import (
    Reading,
    bf16_encoder_copy,
    encode_word_vectors,
    reuse_shared_layers,
    shared_depth,
    window_probs,
)
from discourse_rl.ner.model import NerHead, NerModel, pool_words
from discourse_rl.ner.tokens import (
    essay_windows,
    tokenize_essays,
    window_bounds,
    word_features,
    word_layout,
)
from tests.tiny import tiny_cfg

TEXT = "Dear Senator,\n\nI think cars are bad. They pollute!\nSo we must act.\n\nThanks"


def test_word_layout_marks_paragraphs_and_sentences() -> None:
    essay = Essay.from_text("x", TEXT)
    para, sent = word_layout(essay)
    words = essay.words
    assert [w for w, p in zip(words, para, strict=True) if p] == ["Dear", "I", "So", "Thanks"]
    assert [w for w, s in zip(words, sent, strict=True) if s] == [
        "Dear", "I", "They", "So", "Thanks"
    ]  # fmt: skip
    feats = word_features(essay)
    assert feats.shape == (len(words), 6)
    assert feats[0, 0] == 0 and feats[-1, 0] == 1
    assert feats[:, 4].sum() == 2 and feats[-1, 5] == 1  # first paragraph: "Dear Senator,"


def test_every_word_gets_subtokens_and_markers_separate_paragraphs(tiny_backbone: str) -> None:
    tok = load_tokenizer(tiny_backbone)
    # U+200B is not whitespace for str.split but the tokenizer drops it: it must become [UNK].
    essay = Essay.from_text("x", TEXT + " \u200b end")
    (tokens,) = tokenize_essays(tok, [essay], marker="¶")
    assert set(tokens.token_word[tokens.token_word >= 0]) == set(range(essay.n_words))
    assert np.all(np.diff(tokens.token_word[tokens.token_word >= 0]) >= 0)
    marker_id = tok.convert_tokens_to_ids("¶")
    assert list(tokens.input_ids[tokens.token_word < 0]) == [marker_id] * 3
    assert tok.unk_token_id in tokens.input_ids
    (plain,) = tokenize_essays(tok, [essay], marker="")
    assert np.all(plain.token_word >= 0)


@pytest.mark.parametrize("spread", [False, True])
@pytest.mark.parametrize("n", [1, 5, 48, 49, 50, 83, 84, 85, 200, 333, 1001])
def test_windows_cover_every_token(n: int, spread: bool) -> None:
    bounds = window_bounds(n, 48, 12, spread)
    covered = np.zeros(n, dtype=bool)
    for s, e in bounds:
        assert 0 <= s < e <= n and e - s <= 48
        covered[s:e] = True
    assert covered.all()
    for (_, e0), (s1, _) in itertools.pairwise(bounds):
        assert e0 - s1 >= 12  # consecutive windows overlap
    with pytest.raises(DiscourseRLError):
        window_bounds(10, 8, 8, spread)


@pytest.mark.parametrize("n", [49, 50, 83, 84, 85, 200, 333, 1001])
def test_spread_windows_are_as_many_equal_and_no_longer(n: int) -> None:
    # Prediction's windows: the training cut's count, one length, and fewer tokens encoded.
    full, spread = window_bounds(n, 48, 12), window_bounds(n, 48, 12, spread=True)
    assert len(spread) == len(full) > 1
    assert len({e - s for s, e in spread}) == 1
    assert spread[0][0] == 0 and spread[-1][1] == n
    assert sum(e - s for s, e in spread) <= sum(e - s for s, e in full)
    # No slack: one token shorter and some pair would share less than the overlap.
    length = spread[0][1] - spread[0][0]
    assert length == 48 or (length - 1) * len(spread) < n + (len(spread) - 1) * 12


def test_essay_windows_cover_every_word(tiny_backbone: str) -> None:
    tok = load_tokenizer(tiny_backbone)
    essay = load_corpus().essays[sorted(load_corpus().essays)[0]]
    (tokens,) = tokenize_essays(tok, [essay])
    cls_id, sep_id, _ = special_ids(tok)
    windows = essay_windows(tokens, 0, 40, 10, cls_id, sep_id)
    # 38 sub-tokens a window (40 less CLS and SEP), starts 38 - 10 = 28 apart, the last one
    # pulled back to end with the essay.
    n = len(tokens.input_ids)
    starts = [*range(0, n - 38, 28), n - 38]
    assert len(starts) > 3 and [len(w.input_ids) for w in windows] == [40] * len(starts)
    for w, s in zip(windows, starts, strict=True):
        assert w.input_ids[1:-1].tolist() == tokens.input_ids[s : s + 38].tolist()
    seen = np.zeros(essay.n_words, dtype=bool)
    for w in windows:
        assert len(w.input_ids) <= 40 and w.input_ids[0] == cls_id and w.input_ids[-1] == sep_id
        local = w.token_word[w.token_word >= 0]
        seen[w.word_start + local] = True
        assert local.max() < w.word_end - w.word_start
    assert seen.all()


def test_pool_words_means_subtokens() -> None:
    hidden = torch.arange(12, dtype=torch.float32).view(1, 4, 3)
    token_word = torch.tensor([[-1, 0, 0, 1]])
    pooled = pool_words(hidden, token_word, 3)
    assert torch.allclose(pooled[0, 0], (hidden[0, 1] + hidden[0, 2]) / 2)
    assert torch.allclose(pooled[0, 1], hidden[0, 3])
    assert torch.all(pooled[0, 2] == 0)


def test_encoder_dropout_override_and_freezing(tiny_backbone: str) -> None:
    """Attention dropout 0 must reach the attention modules (that is what lets PyTorch pick its
    fused kernel); None keeps the backbone's own; freezing stops gradients below the cut."""
    own = load_encoder(tiny_backbone)
    enc = load_encoder(tiny_backbone, attention_dropout=0.0, hidden_dropout=0.05)
    assert own.config.attention_probs_dropout_prob == 0.1
    assert enc.config.attention_probs_dropout_prob == 0.0
    assert enc.config.hidden_dropout_prob == 0.05
    assert all(m.p == 0.05 for n, m in enc.named_modules() if n.endswith("output.dropout"))
    model = NerModel(enc, NerConfig(head_hidden=8))
    freeze_lower(model, 1)
    trainable = {n for n, p in model.encoder.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("encoder.layer.1.") or "pooler" in n for n in trainable)
    assert all(p.requires_grad for p in model.head.parameters())


def test_word_vectors_same_with_short_and_long_windows(tiny_backbone: str) -> None:
    """Window overlap averaging keeps vectors close to the one-window result (tiny model, short
    context): the combination is a mean, not a sum, and covers every word."""
    tok = load_tokenizer(tiny_backbone)
    enc = load_encoder(tiny_backbone)
    essays = [load_corpus().essays[i] for i in sorted(load_corpus().essays)[:2]]
    long = encode_word_vectors(
        enc, essays, Reading(tok, tiny_cfg(tiny_backbone, window=128), torch.device("cpu"))
    )
    short = encode_word_vectors(
        enc,
        essays,
        Reading(tok, tiny_cfg(tiny_backbone, window=32, overlap=8), torch.device("cpu")),
    )
    for e, a, b in zip(essays, long, short, strict=True):
        assert a.shape == b.shape == (e.n_words, 32)
        assert np.isfinite(b).all() and (np.abs(b).sum(1) > 0).all()
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1), rtol=0.5)


@pytest.mark.parametrize("kind", ["sentence", "gru", "mlp", "conv"])
def test_head_ignores_padding(kind: str) -> None:
    torch.manual_seed(0)
    conv = 3 if kind == "conv" else 0
    cfg = NerConfig(head="sentence" if conv else kind, head_hidden=6, dropout=0.0, word_conv=conv)
    head = NerHead(8, cfg).eval()
    vec = torch.randn(1, 7, 8)
    feat = torch.zeros(1, 7, 6)
    feat[0, [0, 3], 2] = 1  # two sentences
    alone = head(vec[:, :5], feat[:, :5], torch.tensor([5]))
    padded = head(torch.cat([vec[:, :5], torch.full((1, 2, 8), 9.0)], 1), feat, torch.tensor([5]))
    assert alone.shape == (1, 5, NUM_LABELS)
    torch.testing.assert_close(alone, padded[:, :5])


def test_bf16_inference_copy_leaves_the_model_alone(tiny_backbone: str) -> None:
    model = NerModel(load_encoder(tiny_backbone), NerConfig(head_hidden=8)).train()
    fast = bf16_encoder_copy(model)
    assert all(p.dtype == torch.float32 for p in model.parameters()) and model.training
    assert all(p.dtype == torch.bfloat16 for p in fast.encoder.parameters())
    assert all(p.dtype == torch.float32 for p in fast.head.parameters()) and not fast.training
    ids = torch.tensor([[101, 2000, 2001, 2002, 102]])
    args = (torch.ones_like(ids, dtype=torch.bool), torch.tensor([[-1, 0, 1, 2, -1]]))
    rest = (torch.zeros(1, 3, 6), torch.tensor([3]))
    with torch.inference_mode():
        ref = torch.softmax(model.eval()(ids, *args, *rest)["logits"], -1)
        out = torch.softmax(fast(ids, *args, *rest)["logits"], -1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.02, rtol=0)


def test_fold_models_run_their_shared_frozen_layers_once(
    tiny_backbone: str,
    corpus_small,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    torch.manual_seed(0)
    cfg = tiny_cfg(tiny_backbone, bf16=False)
    a = NerModel(load_encoder(tiny_backbone), cfg).eval()
    b = NerModel(load_encoder(tiny_backbone), cfg).eval()
    with torch.no_grad():  # the upper of the two layers differs, as after fine-tuning it
        for p in b.encoder.encoder.layer[1].parameters():
            p.add_(0.1 * torch.randn_like(p))
    assert shared_depth([a, b]) == 1
    assert shared_depth([a, NerModel(load_encoder(tiny_backbone), cfg)]) == 2
    originals = list(b.encoder.encoder.layer)
    with reuse_shared_layers([a, b]) as depth:
        assert depth == 1 and b.encoder.encoder.layer[0] is not originals[0]
    assert list(b.encoder.encoder.layer) == originals

    tok = load_tokenizer(tiny_backbone)
    essays = list(corpus_small.essays.values())[:4]
    cpu = torch.device("cpu")
    fast = window_probs([a, b], essays, Reading(tok, cfg, cpu))
    monkeypatch.setattr("discourse_rl.ner.inference.shared_depth", lambda models: 0)
    plain = window_probs([a, b], essays, Reading(tok, cfg, cpu))
    alone_b = window_probs([b], essays, Reading(tok, cfg, cpu))
    for f, p, o in zip(fast, plain, alone_b, strict=True):
        np.testing.assert_allclose(f, p, atol=1e-6)
        assert not np.allclose(f, o, atol=1e-3)  # b really contributes its own upper layer
