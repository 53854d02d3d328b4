"""Episode-level RL: an essay is one decision whose action is a whole labelling of its segments.

The state of the step-wise environment is the essay's segments plus the index of the segment to
label, so one forward pass of the attention encoder gives every segment's action distribution.
This trainer exploits that: per batch of essays it runs the encoder once, samples several
complete labellings per essay (segment by segment only for the action mask, which lets
'continues k' follow a class-k segment), scores each with the per-essay metric, and updates the
summed per-segment log-probabilities with one of three estimators:

- "rloo": REINFORCE with the leave-one-out mean of the other samples of the same essay as
  baseline (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for free");
- "self_critical": the greedy labelling's reward as baseline (Rennie et al. 2017);
- "ppo": PPO's clipped surrogate on the ratio of summed log-probabilities, a few epochs per
  batch, with leave-one-out advantages.

As in the SB3 agent, a KL penalty holds the policy near the frozen BC policy; here it is exact
(the categorical KL of every segment under the masks of the sampled labelling) and added to the
loss. The saved policy is the same `AttentionPolicy` as BC and PPO, so `predict_spans` loads it.
With `autoregressive`, a small head also sees the label given to the previous segment
(`episode_ar.PrevLabelHead`); such a policy is saved with its head in `policy_ar.pt`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from tqdm.auto import tqdm

from discourse_rl import metric
from discourse_rl.agent.common import AgentConfig, pad_batch, torch_threads
from discourse_rl.agent.episode_ar import PrevLabelHead, greedy_ar, save_ar
from discourse_rl.agent.episode_loss import (
    episode_loss,
    labelling_masks,
    sample_labellings,
)
from discourse_rl.agent.policy import (
    AttentionPolicy,
    load_policy,
    save_policy,
    set_dropout,
)
from discourse_rl.common import atomic_write_text, config_to_toml
from discourse_rl.data import CLASSES, Corpus
from discourse_rl.env import Spans, gold_table
from discourse_rl.segments import EssaySegments, actions_to_spans, gold_frame, spans_frame

ESTIMATORS = ("rloo", "self_critical", "ppo")
REWARDS = ("f1", "jaccard", "macro")
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class EpisodeConfig:
    """Episode-level fine-tuning of the BC policy (one update per batch of whole essays)."""

    seed: int = 0
    """Seed for essay order and sampling (same seed, same result on CPU)."""
    estimator: str = "rloo"
    """Gradient estimator: 'rloo', 'self_critical' or 'ppo'."""
    reward: str = "macro"
    """'macro' (essay's first-order share of the macro F1), 'f1' (essay F-score) or 'jaccard'."""
    samples: int = 8
    """Labellings sampled per essay and batch."""
    batch_essays: int = 32
    """Essays per update."""
    passes: float = 20.0
    """Passes over the training essays."""
    max_seconds: float = 0.0
    """Stop after this much wall time, evaluations included (0 = no limit)."""
    lr: float = 1e-4
    """Adam learning rate."""
    kl_beta: float = 0.02
    """Weight of the summed per-segment KL to the frozen BC policy."""
    ent_coef: float = 0.0
    """Weight of the summed per-segment entropy bonus."""
    normalize_advantage: bool = False
    """Divide advantages by their standard deviation over the batch."""
    ppo_epochs: int = 4
    """Updates per batch with the 'ppo' estimator."""
    clip_range: float = 0.2
    """Ratio clipping of the 'ppo' estimator."""
    max_grad_norm: float = 1.0
    """Gradient norm clipping."""
    macro_momentum: float = 0.95
    """Moving-average momentum of the class statistics behind the 'macro' reward."""
    autoregressive: bool = False
    """Add a head that also sees the previous segment's label (saved as policy_ar.pt)."""
    eval_every: int = 10
    """Updates between held-out evaluations and checkpoints."""
    progress_bar: bool = True
    """Show a progress bar."""
    torch_threads: int = 1
    """CPU threads for torch while training (one is fastest for this small model)."""


def check_config(cfg: EpisodeConfig) -> None:
    if cfg.estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {cfg.estimator!r}")
    if cfg.reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {cfg.reward!r}")
    if cfg.samples < (2 if cfg.estimator == "rloo" else 1):
        raise ValueError(f"estimator {cfg.estimator!r} needs more samples, got {cfg.samples}")


# ---------------------------------------------------------------------------------------------
# Rewards


def labelling_counts(
    segs: Sequence[EssaySegments], actions: IntArray, gold: Mapping[str, Spans]
) -> IntArray:
    """(B, K, 7, 3) TP/FP/FN of K labellings (B, K, S) of each of B essays."""
    out = np.zeros((*actions.shape[:2], len(CLASSES), 3), np.int64)
    for i, seg in enumerate(segs):
        g = gold[seg.essay_id]
        for k in range(actions.shape[1]):
            spans = actions_to_spans(seg, actions[i, k, : seg.n_segments])
            out[i, k] = metric.essay_counts(*spans, *g)
    return out


class MacroReward:
    """An essay's first-order contribution to the corpus macro F1.

    With corpus totals D_c = 2 TP_c + FP_c + FN_c and F_c = 2 TP_c / D_c, adding an essay's
    (tp, fp, fn) moves F_c by about (2 tp (1 - F_c) - F_c (fp + fn)) / D_c. Averaged over the
    classes, with D_c per essay, this weighs a rare class's hits and misses as the macro mean
    does. F_c and D_c are moving averages over the sampled labellings.
    """

    def __init__(self, counts: IntArray, momentum: float) -> None:
        self.momentum = momentum
        self.stats = self._stats(counts)

    @staticmethod
    def _stats(counts: IntArray) -> npt.NDArray[np.float64]:
        """(7, 3) mean per-essay TP, FP, FN."""
        return np.asarray(counts.reshape(-1, len(CLASSES), 3).mean(0), dtype=np.float64)

    def update(self, counts: IntArray) -> None:
        m = self.momentum
        self.stats = m * self.stats + (1 - m) * self._stats(counts)

    def __call__(self, counts: IntArray) -> npt.NDArray[np.float64]:
        tp, fp, fn = self.stats.T
        d = 2 * tp + fp + fn
        live = d > 1e-9
        f = np.where(live, 2 * tp / np.maximum(d, 1e-9), 0.0)
        c = counts.astype(np.float64)
        gain = (2 * c[..., 0] * (1 - f) - f * (c[..., 1] + c[..., 2])) / np.maximum(d, 1e-9)
        return np.asarray(np.where(live, gain, 0.0).sum(-1) / max(int(live.sum()), 1))


def essay_rewards(
    counts: IntArray, kind: str, macro: MacroReward | None = None
) -> npt.NDArray[np.float64]:
    """Reward of each labelling from its (..., 7, 3) counts."""
    if kind == "macro":
        assert macro is not None
        return macro(counts)
    fn = metric.essay_f1 if kind == "f1" else metric.essay_jaccard
    flat = counts.reshape(-1, len(CLASSES), 3)
    return np.array([fn(c) for c in flat], np.float64).reshape(counts.shape[:-2])


# ---------------------------------------------------------------------------------------------
# Training


@dataclass
class _Model:
    """The policy being trained, its frozen reference and (autoregressive) its head."""

    policy: AttentionPolicy
    ref: AttentionPolicy
    head: PrevLabelHead | None

    def hidden_and_logits(
        self, features: torch.Tensor, mask: torch.Tensor, ref: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.ref if ref else self.policy
        h = p.encoder(features, mask)
        return h, p.action_net(h)

    def parameters(self) -> list[torch.nn.Parameter]:
        ps = list(self.policy.parameters())
        return ps + (list(self.head.parameters()) if self.head is not None else [])


def _greedy(model: _Model, h: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> IntArray:
    if model.head is not None:
        return greedy_ar(model.head, h, logits, mask)
    return sample_labellings(logits, mask, 1, None)[:, 0].numpy()


def _sample(
    model: _Model, h: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor, k: int, gen: Any
) -> IntArray:
    step = None if model.head is None else model.head.step_fn(h)
    return sample_labellings(logits, mask, k, gen, step_logits=step).numpy()


def evaluate(
    model: _Model, segs: Sequence[EssaySegments], corpus: Corpus, batch: int = 64
) -> float:
    """Held-out macro F1 of the greedy labelling."""
    actions: list[IntArray] = []
    with torch.no_grad():
        for k in range(0, len(segs), batch):
            chunk = segs[k : k + batch]
            b = pad_batch(chunk)
            h, logits = model.hidden_and_logits(b.features, b.mask)
            g = _greedy(model, h, logits, b.mask)
            actions += [g[i, : s.n_segments] for i, s in enumerate(chunk)]
    pred = spans_frame(segs, actions)
    return metric.score(pred, gold_frame(corpus, [s.essay_id for s in segs])).macro_f1


def _advantages(
    rewards: npt.NDArray[np.float64], baseline: npt.NDArray[np.float64] | None, normalize: bool
) -> torch.Tensor:
    """(B, K) advantages: reward minus the greedy baseline, or minus the others' mean."""
    k = rewards.shape[1]
    if baseline is not None:
        adv = rewards - baseline[:, None]
    elif k > 1:
        adv = (rewards - rewards.mean(1, keepdims=True)) * k / (k - 1)
    else:
        adv = rewards - rewards.mean()
    if normalize:
        adv = adv / (adv.std() + 1e-8)
    return torch.from_numpy(adv.astype(np.float32))


def train_episode(
    train_segs: Sequence[EssaySegments],
    corpus: Corpus,
    bc_path: str | Path,
    cfg: EpisodeConfig,
    out_dir: str | Path,
    *,
    val_segs: Sequence[EssaySegments] = (),
    tb_dir: str | Path | None = None,
    agent_cfg: AgentConfig | None = None,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> Path:
    """Fine-tune the BC policy at `bc_path` essay by essay; returns the saved policy's path.

    The saved policy is the checkpoint with the best validation macro F1 (the BC policy itself
    counts as the first), or the last one without `val_segs`. `agent_cfg` supplies the
    architecture written beside the weights (default: read back from the BC policy).
    `callback` receives each evaluation's row (benchmarks use it).
    """
    check_config(cfg)
    with torch_threads(cfg.torch_threads):
        return _train(
            train_segs, corpus, bc_path, cfg, out_dir, val_segs, tb_dir, agent_cfg, callback
        )


def _train(
    train_segs: Sequence[EssaySegments],
    corpus: Corpus,
    bc_path: str | Path,
    cfg: EpisodeConfig,
    out_dir: str | Path,
    val_segs: Sequence[EssaySegments],
    tb_dir: str | Path | None,
    agent_cfg: AgentConfig | None,
    callback: Callable[[dict[str, float]], None] | None,
) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    policy, ref = load_policy(bc_path), load_policy(bc_path)
    for p in ref.parameters():
        p.requires_grad_(False)
    set_dropout(policy, 0.0)
    arch = agent_cfg or _arch_of(policy)
    d_model = policy.encoder.norm.normalized_shape[0]
    model = _Model(policy, ref, PrevLabelHead(d_model) if cfg.autoregressive else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gold = gold_table(corpus, [s.essay_id for s in train_segs])
    macro = _init_macro(model, train_segs, gold, cfg) if cfg.reward == "macro" else None
    writer = _writer(tb_dir)

    def save(name: str) -> None:
        if model.head is None:
            save_policy(model.policy, out / name, arch)
        else:
            save_ar(model.policy, model.head, out / name.replace(".pt", "_ar.pt"), arch)

    history: list[dict[str, float]] = []
    best = -math.inf
    essays_seen = 0
    recent: list[dict[str, float]] = []  # update statistics since the last checkpoint
    train_s = 0.0

    def checkpoint(update: int) -> None:
        nonlocal best
        save("last.pt")
        if not val_segs:
            return
        f1 = evaluate(model, val_segs, corpus)
        row = {"update": update, "essays": essays_seen, "seconds": train_s, "val_macro_f1": f1}
        for key in ("reward", "greedy_reward", "kl", "entropy"):
            if recent:
                row[key] = float(np.mean([r[key] for r in recent]))
        recent.clear()
        history.append(row)
        if writer is not None:
            writer.add_scalar("eval/val_macro_f1", f1, essays_seen)
        if callback is not None:
            callback(row)
        if f1 > best:
            best = f1
            save("best.pt")

    checkpoint(0)
    total = round(cfg.passes * len(train_segs))
    n_updates = math.ceil(total / cfg.batch_essays)
    order: IntArray = np.zeros(0, np.int64)
    bar = tqdm(total=total, desc=f"episode RL ({cfg.estimator})", disable=not cfg.progress_bar)
    for update in range(1, n_updates + 1):
        t_up = time.perf_counter()
        if order.size < cfg.batch_essays:
            order = np.concatenate([order, rng.permutation(len(train_segs))])
        idx, order = order[: cfg.batch_essays], order[cfg.batch_essays :]
        segs = [train_segs[i] for i in idx]
        stats = _update(model, opt, segs, gold, cfg, gen, macro)
        recent.append(stats)
        essays_seen += len(segs)
        train_s += time.perf_counter() - t_up
        stats["essays_per_s"] = essays_seen / train_s
        bar.update(len(segs))
        bar.set_postfix({k: round(v, 4) for k, v in stats.items() if k in ("reward", "kl")})
        if writer is not None:
            for name, val in stats.items():
                writer.add_scalar(f"episode/{name}", val, essays_seen)
        over = cfg.max_seconds > 0 and time.perf_counter() - t0 >= cfg.max_seconds
        done = update == n_updates or over
        if update % cfg.eval_every == 0 or done:
            checkpoint(update)
        if done:
            break
    bar.close()
    if writer is not None:
        writer.close()
    suffix = "_ar.pt" if model.head is not None else ".pt"
    final = out / f"policy{suffix}"
    chosen = out / f"best{suffix}"
    final.write_bytes((chosen if chosen.exists() else out / f"last{suffix}").read_bytes())
    atomic_write_text(out / "config.toml", config_to_toml(cfg))
    summary = {
        "seconds": time.perf_counter() - t0,
        "train_seconds": train_s,
        "essays": essays_seen,
        "essays_per_second": essays_seen / max(train_s, 1e-9),
        "labellings_per_second": essays_seen * cfg.samples / max(train_s, 1e-9),
        "best_val_macro_f1": best if math.isfinite(best) else None,
        "history": history,
    }
    atomic_write_text(out / "history.json", json.dumps(summary, indent=2))
    return final


def _update(
    model: _Model,
    opt: torch.optim.Optimizer,
    segs: Sequence[EssaySegments],
    gold: Mapping[str, Spans],
    cfg: EpisodeConfig,
    gen: torch.Generator,
    macro: MacroReward | None,
) -> dict[str, float]:
    b = pad_batch(segs)
    with torch.no_grad():
        ref_logits = model.ref.action_net(model.ref.encoder(b.features, b.mask))
    h, logits = model.hidden_and_logits(b.features, b.mask)
    with torch.no_grad():
        actions = _sample(model, h, logits, b.mask, cfg.samples, gen)
        counts = labelling_counts(segs, actions, gold)
        rewards = essay_rewards(counts, cfg.reward, macro)
        baseline = None
        if cfg.estimator == "self_critical":
            g = _greedy(model, h, logits, b.mask)
            g_counts = labelling_counts(segs, g[:, None], gold)
            baseline = essay_rewards(g_counts, cfg.reward, macro)[:, 0]
    if macro is not None:
        macro.update(counts)
    adv = _advantages(rewards, baseline, cfg.normalize_advantage)
    act = torch.from_numpy(actions)
    amask = labelling_masks(act)
    head_logits = model.head.teacher_forced(h, act) if model.head is not None else None
    old_logp: torch.Tensor | None = None
    epochs = cfg.ppo_epochs if cfg.estimator == "ppo" else 1
    for epoch in range(epochs):
        if epoch > 0:  # the sampling pass serves the first epoch; later ones need fresh logits
            h, logits = model.hidden_and_logits(b.features, b.mask)
            head_logits = model.head.teacher_forced(h, act) if model.head is not None else None
        full = logits[:, None] if head_logits is None else logits[:, None] + head_logits
        parts = episode_loss(
            full,
            ref_logits[:, None],
            act,
            amask,
            b.mask,
            adv,
            kl_beta=cfg.kl_beta,
            ent_coef=cfg.ent_coef,
            clip_range=cfg.clip_range if cfg.estimator == "ppo" else None,
            old_logp=old_logp,
        )
        if cfg.estimator == "ppo" and old_logp is None:
            old_logp = parts.logp.detach()
        opt.zero_grad()
        parts.loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        if epoch == 0:
            first = parts
    return {
        "reward": float(rewards.mean()),
        "kl": float(first.kl.detach()),
        "entropy": float(first.entropy.detach()),
        "loss": float(first.loss.detach()),
        "greedy_reward": float(baseline.mean()) if baseline is not None else float("nan"),
    }


def _init_macro(
    model: _Model, segs: Sequence[EssaySegments], gold: Mapping[str, Spans], cfg: EpisodeConfig
) -> MacroReward:
    """Class statistics of the BC policy's greedy labelling of the training essays."""
    counts = []
    with torch.no_grad():
        for k in range(0, len(segs), 64):
            chunk = segs[k : k + 64]
            b = pad_batch(chunk)
            h, logits = model.hidden_and_logits(b.features, b.mask)
            counts.append(labelling_counts(chunk, _greedy(model, h, logits, b.mask)[:, None], gold))
    return MacroReward(np.concatenate(counts), cfg.macro_momentum)


def _arch_of(policy: AttentionPolicy) -> AgentConfig:
    """The architecture fields of an AgentConfig that rebuild `policy` in `save_policy`."""
    enc = policy.encoder
    layer: Any = enc.layers.layers[0]
    return AgentConfig(
        max_segments=enc.pos.num_embeddings,
        d_model=enc.pos.embedding_dim,
        n_heads=layer.self_attn.num_heads,
        n_layers=len(enc.layers.layers),
        dim_feedforward=layer.linear1.out_features,
    )


def _writer(log_dir: str | Path | None) -> Any:
    if log_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir))


__all__ = [
    "EpisodeConfig",
    "MacroReward",
    "essay_rewards",
    "evaluate",
    "labelling_counts",
    "train_episode",
]
