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

Rewards come from `agent.reward` ('macro' by default). As in the SB3 agent, a KL penalty holds
the policy near the frozen BC policy; here it is exact (the categorical KL of every segment under
the masks of the sampled labelling) and added to the loss. The saved `policy.pt` is the same
`AttentionPolicy` as BC and PPO, so `predict_spans` loads it. With `autoregressive`, the policy
gains the previous-label head (`policy.PrevLabelHead`); its checkpoint records that kind, and
loading and prediction decode with the head.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import numpy as np
import numpy.typing as npt
import torch

from discourse_rl.core import rules
from discourse_rl.core.arrays import IntArray, Spans
from discourse_rl.core.common import atomic_write_text, config_to_toml, progress
from discourse_rl.core.data import Corpus
from discourse_rl.core.records import TrainedPolicy
from discourse_rl.decoders.agent.common import (
    FineTuneInputs,
    labelling_masks,
    pad_batch,
    tensorboard_writer,
    torch_threads,
)
from discourse_rl.decoders.agent.episode_loss import episode_loss
from discourse_rl.decoders.agent.policy import (
    AttentionPolicy,
    keep_best,
    load_policy,
    predict_actions,
    save_policy,
    score_policy,
)
from discourse_rl.decoders.agent.reward import (
    MacroReward,
    essay_counts,
    gold_table,
    labelling_counts,
    rewards,
)
from discourse_rl.decoders.segments import EssaySegments

Estimator = Literal["rloo", "self_critical", "ppo"]
EpisodeReward = Literal["macro", "f1", "jaccard"]
ESTIMATORS: tuple[str, ...] = get_args(Estimator)


@dataclass(frozen=True)
class EpisodeConfig:
    """Episode-level fine-tuning of the BC policy (one update per batch of whole essays)."""

    RUNTIME: ClassVar[frozenset[str]] = frozenset({"progress_bar", "torch_threads"})
    """How the trainer runs, not what it computes: left out of the step's key."""

    seed: int = 0
    """Seed for essay order and sampling (same seed, same result on CPU); a run sets it from
    `agent_seeds`, and a run config may not set it."""
    estimator: Estimator = "rloo"
    """Gradient estimator: 'rloo', 'self_critical' or 'ppo'."""
    reward: EpisodeReward = "macro"
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
    """Add a head that also sees the previous segment's label (recorded in the checkpoint)."""
    eval_every: int = 10
    """Updates between held-out evaluations and checkpoints."""
    progress_bar: bool = True
    """Show a progress bar."""
    torch_threads: int = 1
    """CPU threads for torch while training (one is fastest for this small model)."""

    def __post_init__(self) -> None:
        check_config(self)


_EPISODE_RULES = {
    "seed": rules.non_negative,
    "samples": rules.positive,
    "batch_essays": rules.positive,
    "passes": rules.positive,
    "max_seconds": rules.non_negative,
    "lr": rules.positive,
    "kl_beta": rules.non_negative,
    "ent_coef": rules.non_negative,
    "ppo_epochs": rules.positive,
    "clip_range": rules.positive,
    "max_grad_norm": rules.positive,
    "macro_momentum": rules.below_one,
    "eval_every": rules.positive,
    "torch_threads": rules.non_negative,
}


def check_config(cfg: EpisodeConfig) -> None:
    rules.check_fields(cfg, _EPISODE_RULES)
    if cfg.estimator == "rloo" and cfg.samples < 2:
        raise rules.ConfigValueError(
            "samples", cfg.samples, "must be >= 2 with estimator 'rloo' (leave-one-out baseline)"
        )


# ---------------------------------------------------------------------------------------------
# Training


def evaluate(policy: AttentionPolicy, segs: Sequence[EssaySegments], corpus: Corpus) -> float:
    """Held-out macro F1 of the greedy labelling (with the head, if any)."""
    return score_policy(policy, segs, corpus).macro_f1


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
    inputs: FineTuneInputs,
    cfg: EpisodeConfig,
    *,
    callback: Callable[[dict[str, float]], None] | None = None,
) -> TrainedPolicy:
    """Fine-tune the BC policy `inputs.bc_path` essay by essay; returns what it saved.

    The saved policy is the checkpoint with the best validation macro F1 (the BC policy itself
    counts as the first), or the last one without validation essays. `callback` receives each
    evaluation's row (benchmarks use it).
    """
    check_config(cfg)
    with torch_threads(cfg.torch_threads):
        return _train(inputs, cfg, callback)


def _train(
    inputs: FineTuneInputs,
    cfg: EpisodeConfig,
    callback: Callable[[dict[str, float]], None] | None,
) -> TrainedPolicy:
    out = inputs.out_dir
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    # Loading reseeds torch's global generator, so the new head's initialisation (after both
    # loads) does not depend on cfg.seed; kept so that same-seed runs repeat earlier ones.
    policy, ref = load_policy(inputs.bc_path), load_policy(inputs.bc_path)
    ref.requires_grad_(False)
    if cfg.autoregressive and policy.head is None:
        policy.add_head()
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    gold = gold_table(inputs.corpus, [s.essay_id for s in inputs.train_segs])
    macro = _init_macro(policy, inputs.train_segs, gold, cfg) if cfg.reward == "macro" else None
    writer = tensorboard_writer(inputs.tb_dir)

    history: list[dict[str, float]] = []
    best = -math.inf
    essays_seen = 0
    recent: list[dict[str, float]] = []  # update statistics since the last checkpoint
    train_s = 0.0

    def checkpoint(update: int) -> None:
        nonlocal best
        save_policy(policy, out / "last.pt")
        if not inputs.val_segs:
            return
        f1 = evaluate(policy, inputs.val_segs, inputs.corpus)
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
            save_policy(policy, out / "best.pt")

    checkpoint(0)
    total = round(cfg.passes * len(inputs.train_segs))
    n_updates = math.ceil(total / cfg.batch_essays)
    order: IntArray = np.zeros(0, np.int64)
    bar = progress(total=total, desc=f"episode RL ({cfg.estimator})", disable=not cfg.progress_bar)
    for update in range(1, n_updates + 1):
        t_up = time.perf_counter()
        if order.size < cfg.batch_essays:
            order = np.concatenate([order, rng.permutation(len(inputs.train_segs))])
        idx, order = order[: cfg.batch_essays], order[cfg.batch_essays :]
        segs = [inputs.train_segs[i] for i in idx]
        stats = _update(policy, ref, opt, segs, gold, cfg, gen, macro)
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
    final = keep_best(out)
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
    return TrainedPolicy.from_summary("episode", final, summary)


def _update(
    policy: AttentionPolicy,
    ref: AttentionPolicy,
    opt: torch.optim.Optimizer,
    segs: Sequence[EssaySegments],
    gold: Mapping[str, Spans],
    cfg: EpisodeConfig,
    gen: torch.Generator,
    macro: MacroReward | None,
) -> dict[str, float]:
    b = pad_batch(segs)
    with torch.no_grad():
        _, ref_logits = ref.hidden_and_logits(b.features, b.mask)
    h, logits = policy.hidden_and_logits(b.features, b.mask)
    with torch.no_grad():
        actions = policy.labellings(h, logits, b.mask, cfg.samples, gen).numpy()
        counts = labelling_counts(segs, actions, gold)
        reward = rewards(counts, cfg.reward, macro)
        baseline = None
        if cfg.estimator == "self_critical":
            greedy = policy.labellings(h, logits, b.mask, 1, None).numpy()
            baseline = rewards(labelling_counts(segs, greedy, gold), cfg.reward, macro)[:, 0]
    if macro is not None:
        macro.update(counts)
    adv = _advantages(reward, baseline, cfg.normalize_advantage)
    act = torch.from_numpy(actions)
    amask = labelling_masks(act)
    old_logp: torch.Tensor | None = None
    epochs = cfg.ppo_epochs if cfg.estimator == "ppo" else 1
    for epoch in range(epochs):
        if epoch > 0:  # the sampling pass serves the first epoch; later ones need fresh logits
            h, logits = policy.hidden_and_logits(b.features, b.mask)
        parts = episode_loss(
            policy.labelling_logits(h, logits, act),
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
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        opt.step()
        if epoch == 0:
            first = parts
    return {
        "reward": float(reward.mean()),
        "kl": float(first.kl.detach()),
        "entropy": float(first.entropy.detach()),
        "loss": float(first.loss.detach()),
        "greedy_reward": float(baseline.mean()) if baseline is not None else float("nan"),
    }


def _init_macro(
    policy: AttentionPolicy,
    segs: Sequence[EssaySegments],
    gold: Mapping[str, Spans],
    cfg: EpisodeConfig,
) -> MacroReward:
    """Class statistics of the BC policy's greedy labelling of the training essays."""
    pairs = zip(segs, predict_actions(policy, segs), strict=True)
    counts = np.stack([essay_counts(s, a, gold[s.essay_id]) for s, a in pairs])
    return MacroReward(counts, cfg.macro_momentum)


__all__ = ["EpisodeConfig", "evaluate", "train_episode"]
