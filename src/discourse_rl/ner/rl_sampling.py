"""Whole label sequences drawn from the tagger's word distributions, their log-probabilities,
and their rewards: the hot path of the RL phase (`ner.rl`), vectorised over essays and samples.

Two samplers, both over valid sequences only (an I-x follows B-x or I-x; a sequence never
starts with I-x):

* **masked** (`sample_masked`): word by word, each word's 15-label distribution renormalised
  over the labels its predecessor allows. The policy's probability of a sequence is the product
  of those renormalised probabilities (`masked_log_prob`).
* **lattice** (`sample_lattice`): the constrained decoder's lattice (`constrained.py`: label plus
  one "already used" bit per class limited to one span per essay), sampled exactly from the
  distribution proportional to the product of the word probabilities over the valid paths by
  forward filtering, backward sampling. A sequence's probability is that product divided by the
  lattice's partition function (`lattice_log_prob`); its greedy counterpart is the Viterbi
  sequence of the constrained decoder.

Labels are 0 = O, 1 + 2c = B-c, 2 + 2c = I-c (`data.LABELS`). Every function takes padded
(B, N, 15) log-probabilities with per-essay `lengths`; sequences come back as (B, K, N) int64
tensors with O (0) after each essay's end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from discourse_rl.core import metric
from discourse_rl.core.arrays import IntArray, Spans
from discourse_rl.core.data import CLASSES, NUM_LABELS, labels_to_spans
from discourse_rl.core.rewards import MacroReward, rewards

N_CLASSES = len(CLASSES)
START = NUM_LABELS
"""Row of `transition_mask` for the word before the first (a sequence starts as after O)."""


def transition_mask() -> torch.Tensor:
    """(16, 15) bool: may label `j` follow label `i` (row 15: the first word)?"""
    allowed = torch.ones(NUM_LABELS + 1, NUM_LABELS, dtype=torch.bool)
    for c in range(N_CLASSES):
        inside = 2 + 2 * c
        allowed[:, inside] = False
        allowed[1 + 2 * c, inside] = True
        allowed[inside, inside] = True
    return allowed


_ALLOWED = transition_mask()


def _gumbel(shape: Sequence[int], rng: np.random.Generator | None) -> np.ndarray:
    return (rng or np.random.default_rng()).gumbel(size=tuple(shape))


def _word_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    return torch.arange(n)[None, :] < lengths[:, None]


# ---------------------------------------------------------------------------------------------
# Masked word-by-word sampling


def sample_masked(
    logp: torch.Tensor,
    lengths: torch.Tensor,
    k: int,
    rng: np.random.Generator | None = None,
    greedy: bool = False,
) -> torch.Tensor:
    """K sequences per essay drawn word by word under the transition mask (Gumbel-max: the noise
    of every word is drawn at once, the loop is an argmax over 15 scores per word); `greedy`:
    one noiseless sequence per essay (the masked argmax), K ignored."""
    b, n, _ = logp.shape
    k = 1 if greedy else k
    # The loop runs in numpy: on arrays this small torch's per-call cost dominates.
    scores = np.broadcast_to(logp.detach().double().numpy()[:, None], (b, k, n, NUM_LABELS))
    if not greedy:
        scores = scores + _gumbel((b, k, n, NUM_LABELS), rng)
    live = _word_mask(lengths, n).numpy()
    out = np.zeros((b, k, n), dtype=np.int64)
    prev = np.full((b, k), START, dtype=np.int64)
    blocked = np.where(_ALLOWED.numpy(), 0.0, -np.inf)
    for t in range(n):
        lab = (scores[:, :, t] + blocked[prev]).argmax(-1)
        lab = np.where(live[:, t, None], lab, 0)
        out[:, :, t] = lab
        prev = lab
    return torch.from_numpy(out)


def masked_log_prob(
    logp: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor
) -> torch.Tensor:
    """(B, K) log-probability of each sequence under the masked sampler (differentiable in
    `logp`): per word, its label's log-probability minus the log of the mass its predecessor
    allows, summed over the essay's words."""
    b, k, n = labels.shape
    prev = torch.cat([torch.full((b, k, 1), START, dtype=torch.int64), labels[:, :, :-1]], -1)
    allowed = _ALLOWED[prev]  # (B, K, N, 15)
    expanded = logp[:, None].expand(b, k, n, NUM_LABELS)
    norm = torch.logsumexp(expanded.masked_fill(~allowed, -torch.inf), -1)
    chosen = expanded.gather(-1, labels[..., None])[..., 0]
    live = _word_mask(lengths, n)[:, None]
    return torch.where(live, chosen - norm, 0.0).sum(-1)


# ---------------------------------------------------------------------------------------------
# The constrained decoder's lattice: forward filtering, backward sampling


@dataclass(frozen=True)
class Lattice:
    """States ``mask * 15 + label`` of the constrained decoder for the limited classes `unique`:
    `step[i, j]` says whether state j may follow state i, `first` which states may open an
    essay, `label` each state's label."""

    unique: tuple[int, ...]
    step: torch.Tensor
    first: torch.Tensor
    label: torch.Tensor

    @property
    def n_states(self) -> int:
        return int(self.label.numel())


def lattice(unique: Sequence[int] = ()) -> Lattice:
    """The valid transitions between the constrained decoder's states (`constrained.viterbi`
    computes the best path over the same ones)."""
    unique = tuple(int(c) for c in unique)
    n_masks = 1 << len(unique)
    bit = [0] * N_CLASSES
    for j, c in enumerate(unique):
        bit[c] = 1 << j
    n = n_masks * NUM_LABELS
    step = torch.zeros(n, n, dtype=torch.bool)
    first = torch.zeros(n, dtype=torch.bool)
    for m in range(n_masks):
        row = m * NUM_LABELS
        for prev in range(NUM_LABELS + 1):
            src = row + prev if prev < NUM_LABELS else -1
            for lab in range(NUM_LABELS):
                if not _ALLOWED[prev, lab]:
                    continue
                dest_mask = m
                if lab % 2 == 1 and bit[(lab - 1) // 2]:
                    if m & bit[(lab - 1) // 2]:
                        continue  # a limited class's second span
                    dest_mask = m | bit[(lab - 1) // 2]
                dest = dest_mask * NUM_LABELS + lab
                if src < 0:
                    if m == 0:
                        first[dest] = True
                else:
                    step[src, dest] = True
    label = torch.arange(n, dtype=torch.int64) % NUM_LABELS
    return Lattice(unique, step, first, label)


_FLOOR = 1e-12  # as `constrained.viterbi`: no label is impossible in the emissions


def _emissions(logp: torch.Tensor, lat: Lattice) -> np.ndarray:
    """(B, N, S) float64 probability of each state's label, floored."""
    probs = np.maximum(logp.detach().double().exp().numpy(), _FLOOR)
    return np.asarray(probs[:, :, lat.label.numpy()])


def _forward(emit: np.ndarray, lengths: np.ndarray, lat: Lattice) -> tuple[np.ndarray, np.ndarray]:
    """Forward messages (B, N, S), each normalised to sum 1, and the log partition function (B,).
    Past an essay's end the messages stay as they were."""
    b, n, _ = emit.shape
    step = lat.step.numpy().astype(np.float64)
    msgs = np.empty_like(emit)
    alpha = emit[:, 0] * lat.first.numpy()
    log_z = np.zeros(b)
    for t in range(n):
        if t:
            alpha = (alpha @ step) * emit[:, t]
        norm = alpha.sum(-1, keepdims=True)
        on = (t < lengths)[:, None]
        alpha = np.where(on, alpha / norm, msgs[:, t - 1] if t else alpha)
        log_z += np.where(on[:, 0], np.log(norm[:, 0]), 0.0)
        msgs[:, t] = alpha
    return msgs, log_z


def _marginals(emit: np.ndarray, msgs: np.ndarray, lengths: np.ndarray, lat: Lattice) -> np.ndarray:
    """(B, N, 15) posterior probability of each label at each word over the valid paths (zero
    past an essay's end): the gradient of the log partition function in the log-probabilities."""
    b, n, s = emit.shape
    step = lat.step.numpy().astype(np.float64)
    beta = np.ones((b, s))
    out = np.zeros((b, n, NUM_LABELS))
    for t in range(n - 1, -1, -1):
        if t < n - 1:
            nxt = step @ (emit[:, t + 1] * beta).T  # (S, B)
            nxt = nxt.T / nxt.sum(0)[:, None]
            beta = np.where((t < lengths - 1)[:, None], nxt, 1.0)
        post = msgs[:, t] * beta
        post = post / post.sum(-1, keepdims=True)
        post = np.where((t < lengths)[:, None], post, 0.0)
        out[:, t] = post.reshape(b, -1, NUM_LABELS).sum(1)
    return out


def lattice_log_partition(logp: torch.Tensor, lengths: torch.Tensor, lat: Lattice) -> torch.Tensor:
    """(B,) log of the summed product of word probabilities over every valid path. Computed in
    numpy by forward filtering; its gradient in `logp` is the posterior label marginals
    (forward-backward), attached through a surrogate with the same value."""
    emit = _emissions(logp, lat)
    lens = lengths.numpy()
    msgs, log_z = _forward(emit, lens, lat)
    value = torch.from_numpy(log_z).to(logp.dtype)
    if not logp.requires_grad:
        return value
    marg = torch.from_numpy(_marginals(emit, msgs, lens, lat)).to(logp.dtype)
    return value + (marg * (logp - logp.detach())).sum((1, 2))


def sample_lattice(
    logp: torch.Tensor,
    lengths: torch.Tensor,
    k: int,
    lat: Lattice,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """K sequences per essay drawn exactly from the lattice's path distribution (forward
    filtering, then backward sampling of each state given the next)."""
    b, n, _ = logp.shape
    msgs, _ = _forward(_emissions(logp, lat), lengths.numpy(), lat)
    step_t = lat.step.T.numpy().astype(np.float64)  # [dest, src]
    # Inverse-CDF draws: one uniform per word and sample instead of Gumbel noise per state.
    uniform = (rng or np.random.default_rng()).random((n, b, k))
    labels = lat.label.numpy()
    state = np.zeros((b, k), dtype=np.int64)
    out = np.zeros((b, k, n), dtype=np.int64)
    last: np.ndarray = (lengths - 1).numpy()[:, None]
    for t in range(n - 1, -1, -1):
        at_end = np.equal(last, t)[..., None]
        weights = msgs[:, t][:, None] * np.where(at_end, 1.0, step_t[state])
        cum = np.cumsum(weights, -1)
        pick = (cum < (uniform[t] * cum[..., -1])[..., None]).sum(-1)
        live = t <= last
        state = np.where(live, np.minimum(pick, lat.n_states - 1), state)
        out[:, :, t] = np.where(live, labels[state], 0)
    return torch.from_numpy(out)


def lattice_states(labels: torch.Tensor, lat: Lattice) -> torch.Tensor:
    """The lattice states a valid label sequence passes through (its mask bits follow from its
    own B- labels)."""
    bits = torch.zeros(NUM_LABELS, dtype=torch.int64)
    for j, c in enumerate(lat.unique):
        bits[1 + 2 * c] = 1 << j
    masks = torch.cumsum(bits[labels], -1)
    return masks * NUM_LABELS + labels


def lattice_log_prob(
    logp: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, lat: Lattice
) -> torch.Tensor:
    """(B, K) log-probability of each valid sequence under the lattice sampler: its summed word
    log-probabilities (floored as in the forward pass) minus the log partition function."""
    b, k, n = labels.shape
    log_z = lattice_log_partition(logp, lengths, lat)
    # The floor of the forward pass, kept out of the gradient (as there).
    floored = torch.maximum(logp, torch.full_like(logp, np.log(_FLOOR)))
    emit = floored[:, None].expand(b, k, n, NUM_LABELS)
    chosen = emit.gather(-1, labels[..., None])[..., 0]
    live = _word_mask(lengths, n)[:, None]
    return torch.where(live, chosen, 0.0).sum(-1) - log_z[:, None]


def lattice_greedy(probs: Sequence[np.ndarray], lat: Lattice) -> list[IntArray]:
    """The most probable valid path per essay (max-product over the lattice, word
    probabilities floored as in the forward pass): the constrained decoder's Viterbi sequence,
    computed here so that the tagger's layer needs no decoder (a test checks they agree)."""
    log_step = np.where(lat.step.numpy(), 0.0, -np.inf)
    first = np.where(lat.first.numpy(), 0.0, -np.inf)
    label = lat.label.numpy()
    out = []
    for p in probs:
        n = p.shape[0]
        if n == 0:
            out.append(np.zeros(0, dtype=np.int64))
            continue
        emit = np.log(np.maximum(np.asarray(p, dtype=np.float64), _FLOOR))[:, label]
        back = np.zeros((n, lat.n_states), dtype=np.int64)
        score = first + emit[0]
        for t in range(1, n):
            cand = score[:, None] + log_step  # [src, dest]
            back[t] = cand.argmax(0)
            score = cand.max(0) + emit[t]
        state = int(score.argmax())
        path = np.empty(n, dtype=np.int64)
        for t in range(n - 1, -1, -1):
            path[t] = label[state]
            state = int(back[t, state])
        out.append(path)
    return out


# ---------------------------------------------------------------------------------------------
# Spans and rewards of many sequences


def batch_spans(labels: np.ndarray, lengths: np.ndarray) -> list[Spans]:
    """The spans of every row of an (M, N) label array (`data.labels_to_spans` on each row's
    first `lengths[m]` labels), from one pass over all of them."""
    m, n = labels.shape
    padded = np.zeros((m, n + 1), dtype=np.int64)
    live = np.arange(n)[None, :] < lengths[:, None]
    padded[:, :n] = np.where(live, labels, 0)
    cls, start, end = labels_to_spans(padded.ravel())
    row = start // (n + 1)
    offset = row * (n + 1)
    cuts = np.searchsorted(row, np.arange(m + 1))
    s, e = start - offset, end - offset
    return [
        (cls[a:b], s[a:b], e[a:b])
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True)
    ]


def sequence_counts(labels: torch.Tensor, lengths: torch.Tensor, gold: Sequence[Spans]) -> IntArray:
    """(B, K, 7, 3) TP / FP / FN per class of each sampled sequence's spans against its essay's
    true spans (`metric.essay_counts`, the metric's own matching)."""
    b, k, n = labels.shape
    flat = labels.reshape(b * k, n).numpy()
    lens = np.repeat(lengths.numpy(), k)
    spans = batch_spans(flat, lens)
    out = np.zeros((b * k, N_CLASSES, 3), dtype=np.int64)
    for r, (cls, start, end) in enumerate(spans):
        out[r] = metric.essay_counts(cls, start, end, *gold[r // k])
    return out.reshape(b, k, N_CLASSES, 3)


def sequence_rewards(counts: IntArray, kind: str, macro: MacroReward | None = None) -> np.ndarray:
    """Rewards of (..., 7, 3) counts with the project's one reward module (`core.rewards`):
    'f1', 'jaccard' or 'macro' (the macro-aligned reward; needs `macro`)."""
    return rewards(counts, kind, macro)


def advantages(reward: np.ndarray, baseline: str, greedy: np.ndarray | None = None) -> np.ndarray:
    """(B, K) advantages: 'rloo' subtracts the mean reward of the essay's other K - 1 samples;
    'greedy' (self-critical) the reward of its greedy sequence (`greedy`, (B,))."""
    if baseline == "rloo":
        k = reward.shape[1]
        if k < 2:
            raise ValueError("the leave-one-out baseline needs at least 2 samples per essay")
        out: np.ndarray = reward - (reward.sum(1, keepdims=True) - reward) / (k - 1)
        return out
    if baseline == "greedy":
        if greedy is None:
            raise ValueError("the greedy baseline needs the greedy sequences' rewards")
        sc: np.ndarray = reward - greedy[:, None]
        return sc
    raise ValueError(f"baseline must be 'rloo' or 'greedy', got {baseline!r}")


def gold_of(gold: Mapping[str, Spans], ids: Sequence[str]) -> list[Spans]:
    return [gold[i] for i in ids]
