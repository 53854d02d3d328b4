"""The RL phase's samplers, log-probabilities, spans and rewards (`ner.rl_sampling`)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from discourse_rl.core import metric
from discourse_rl.core.data import NUM_LABELS, labels_to_spans
from discourse_rl.decoders.constrained import valid_labels, viterbi
from discourse_rl.ner import rl_sampling as rs


def _logp(b: int, n: int, seed: int = 0, sharp: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharp * torch.randn(b, n, NUM_LABELS, generator=g), -1)


def _all_sequences(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(NUM_LABELS), repeat=n)), dtype=torch.int64)


def test_transition_mask_is_the_constrained_decoders() -> None:
    allowed = rs.transition_mask()
    for a in range(NUM_LABELS):
        for b in range(NUM_LABELS):
            # A valid way to reach label a first (I-x needs its B-x before it).
            prefix = [a - 1, a] if a > 0 and a % 2 == 0 else [a]
            assert bool(allowed[a, b]) == valid_labels([*prefix, b])
    for b in range(NUM_LABELS):
        assert bool(allowed[rs.START, b]) == valid_labels([b])


def test_masked_samples_are_valid_and_padded_with_o() -> None:
    logp = _logp(3, 40)
    lengths = torch.tensor([40, 17, 1])
    labels = rs.sample_masked(logp, lengths, 5, np.random.default_rng(1))
    assert labels.shape == (3, 5, 40)
    for b in range(3):
        for k in range(5):
            n = int(lengths[b])
            assert valid_labels(labels[b, k, :n].numpy())
            assert (labels[b, k, n:] == 0).all()


def test_masked_log_prob_is_a_distribution_and_matches_the_sampler() -> None:
    n = 3
    logp = _logp(1, n, seed=2, sharp=2.0)
    lengths = torch.tensor([n])
    seqs = _all_sequences(n)
    valid = torch.tensor([valid_labels(s.numpy()) for s in seqs])
    lp = rs.masked_log_prob(logp, seqs[valid][None], lengths)[0]
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    draws = rs.sample_masked(logp, lengths, 20000, np.random.default_rng(3))[0]
    index = {tuple(s.tolist()): j for j, s in enumerate(seqs[valid])}
    freq = np.bincount([index[tuple(d.tolist())] for d in draws], minlength=len(index)) / 20000
    assert np.abs(freq - lp.exp().numpy()).max() < 0.02


def test_masked_greedy_is_the_masked_argmax() -> None:
    logp = _logp(2, 30, seed=4)
    lengths = torch.tensor([30, 12])
    greedy = rs.sample_masked(logp, lengths, 3, greedy=True)
    assert greedy.shape == (2, 1, 30)
    for b in range(2):
        prev = rs.START
        for t in range(int(lengths[b])):
            allowed = rs.transition_mask()[prev]
            want = int(torch.where(allowed, logp[b, t], -torch.inf).argmax())
            assert int(greedy[b, 0, t]) == want
            prev = want


@pytest.mark.parametrize("unique", [(), (0, 6)])
def test_lattice_log_prob_is_a_distribution_over_valid_paths(unique: tuple[int, ...]) -> None:
    n = 3
    lat = rs.lattice(unique)
    logp = _logp(1, n, seed=5, sharp=1.5)
    lengths = torch.tensor([n])
    seqs = _all_sequences(n)
    valid = torch.tensor([valid_labels(s.numpy(), unique) for s in seqs])
    # The partition function is the summed product over the valid paths.
    p = logp.exp()[0]
    total = sum(float(p[torch.arange(n), s].prod()) for s in seqs[valid])
    assert float(rs.lattice_log_partition(logp, lengths, lat)[0].exp()) == pytest.approx(total)
    lp = rs.lattice_log_prob(logp, seqs[valid][None], lengths, lat)[0]
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    draws = rs.sample_lattice(logp, lengths, 20000, lat, np.random.default_rng(6))[0]
    index = {tuple(s.tolist()): j for j, s in enumerate(seqs[valid])}
    assert all(tuple(d.tolist()) in index for d in draws)  # valid, limits kept
    freq = np.bincount([index[tuple(d.tolist())] for d in draws], minlength=len(index)) / 20000
    assert np.abs(freq - lp.exp().numpy()).max() < 0.02
    # Viterbi's path is the most probable one under the same distribution.
    best = rs.lattice_greedy([p.numpy()], lat)[0]
    assert tuple(best.tolist()) == tuple(seqs[valid][int(lp.argmax())].tolist())


def test_lattice_samples_respect_lengths_and_limits() -> None:
    lat = rs.lattice((0, 1, 6))
    logp = _logp(3, 50, seed=7)
    lengths = torch.tensor([50, 9, 1])
    labels = rs.sample_lattice(logp, lengths, 4, lat, np.random.default_rng(8))
    for b in range(3):
        n = int(lengths[b])
        for k in range(4):
            assert valid_labels(labels[b, k, :n].numpy(), (0, 1, 6))
            assert (labels[b, k, n:] == 0).all()
    # A padded essay's sequences and log-probabilities equal its own, unpadded.
    alone = rs.lattice_log_prob(logp[1:2, :9], labels[1:2, :, :9], lengths[1:2], lat)
    padded = rs.lattice_log_prob(logp, labels, lengths, lat)[1:2]
    assert torch.allclose(alone, padded)


def test_log_probs_have_gradients() -> None:
    logits = torch.randn(2, 8, NUM_LABELS, requires_grad=True)
    logp = torch.log_softmax(logits, -1)
    lengths = torch.tensor([8, 5])
    labels = rs.sample_masked(logp, lengths, 3, np.random.default_rng(0))
    lat = rs.lattice((0,))
    lab2 = rs.sample_lattice(logp, lengths, 3, lat, np.random.default_rng(0))
    loss = rs.masked_log_prob(logp, labels, lengths).sum()
    loss = loss + rs.lattice_log_prob(logp, lab2, lengths, lat).sum()
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert (logits.grad[1, 5:] == 0).all()  # padding gets no gradient


def test_batch_spans_and_counts_agree_with_the_metric() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, NUM_LABELS, size=(6, 25))
    lengths = np.array([25, 3, 0, 10, 25, 1])
    spans = rs.batch_spans(labels, lengths)
    for row, (cls, start, end) in enumerate(spans):
        want = labels_to_spans(labels[row, : lengths[row]])
        for got, exp in zip((cls, start, end), want, strict=True):
            assert np.array_equal(got, exp)
    gold = [labels_to_spans(rng.integers(0, NUM_LABELS, size=25)) for _ in range(2)]
    seqs = torch.from_numpy(labels.reshape(2, 3, 25))
    lens = torch.tensor([25, 10])
    counts = rs.sequence_counts(seqs, lens, gold)
    for b in range(2):
        for k in range(3):
            n = int(lens[b])
            want = metric.essay_counts(*labels_to_spans(labels[3 * b + k, :n]), *gold[b])
            assert np.array_equal(counts[b, k], want)


def test_advantages() -> None:
    r = np.array([[1.0, 0.0, 0.5], [0.2, 0.2, 0.2]])
    adv = rs.advantages(r, "rloo")
    assert np.allclose(adv[0], [1 - 0.25, 0 - 0.75, 0.5 - 0.5])
    assert np.allclose(adv[1], 0)
    adv = rs.advantages(r, "greedy", np.array([0.5, 0.1]))
    assert np.allclose(adv, r - np.array([[0.5], [0.1]]))
    with pytest.raises(ValueError):
        rs.advantages(r[:, :1], "rloo")


@pytest.mark.parametrize("unique", [(), (0, 1, 6)])
def test_the_lattice_mode_is_the_constrained_viterbi(unique: tuple[int, ...]) -> None:
    lat = rs.lattice(unique)
    probs = _logp(3, 200, seed=9, sharp=3.0).exp().numpy()
    probs[1, :50] = probs[0, :50] ** 4  # sharper stretches
    for p, got in zip(probs, rs.lattice_greedy(list(probs), lat), strict=True):
        assert np.array_equal(got, viterbi(p, unique))
    assert rs.lattice_greedy([probs[0, :0]], lat)[0].size == 0


def test_limited_classes_are_the_constrained_decoders() -> None:
    from discourse_rl.core.data import load_corpus
    from discourse_rl.core.data import unique_classes as lattice_classes
    from discourse_rl.decoders.constrained import ConstrainedConfig, unique_classes

    corpus = load_corpus()
    ids = sorted(corpus.essays)[:120]
    for share, most in ((0.99, 3), (0.9, 2), (0.5, 7)):
        want = unique_classes(corpus, ids, ConstrainedConfig(unique_share=share, max_unique=most))
        assert lattice_classes(corpus, ids, share, most) == want


@pytest.mark.parametrize("unique", [(), (0, 6)])
def test_lattice_gradient_is_the_autograd_one(unique: tuple[int, ...]) -> None:
    """The surrogate's gradient (forward-backward marginals) equals autograd through a plain
    torch forward pass."""
    lat = rs.lattice(unique)
    logits = torch.randn(2, 7, NUM_LABELS, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([7, 4])
    logp = torch.log_softmax(logits, -1)
    rs.lattice_log_partition(logp, lengths, lat).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    emit = torch.log_softmax(logits, -1).exp()[:, :, lat.label]
    total = torch.zeros(())
    for b in range(2):
        alpha = emit[b, 0] * lat.first.double()
        for t in range(1, int(lengths[b])):
            alpha = (alpha @ lat.step.double()) * emit[b, t]
        total = total + alpha.sum().log()
    total.backward()
    assert torch.allclose(ours, logits.grad, atol=1e-8)
