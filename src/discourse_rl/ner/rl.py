"""The tagger trained by RL on the metric (`ner-rl`), after its cross-entropy epochs.

Per fold, on that fold's training essays only (its out-of-fold probabilities stay honest), the
fine-tuned fold model is the policy: per word, the 15-label distribution that prediction reads
(the mean of the softmax over the windows that see the word). An action is a whole label
sequence for an essay, drawn by one of `ner.rl_sampling`'s samplers (masked word by word, or
from the constrained decoder's lattice); its reward is the essay's score of the sequence's
spans against the true ones (`core.rewards`: the macro-aligned reward or the essay F-score).
K sequences per essay come from one forward pass; the update is REINFORCE with a leave-one-out
(RLOO) or greedy ("self-critical") baseline, plus a KL penalty per word to the frozen
cross-entropy tagger and optionally a small cross-entropy term. Only the unfrozen layers and
the head train; with `ner.cache_frozen` the frozen layers' states come from the stage's cache.

`control = true` also trains the honest control: the same fold model trained on by
cross-entropy from the same checkpoint for the same wall time as its RL phase took.

Files (per fold, under RUN/ner/fold<k>/): `rl/` and `control/` (model.safetensors, oof.npz,
checkpoint.pt, done.json, history.json, tensorboard/); per run: RUN/ner/rl/ and
RUN/ner/control/ (oof.npz; curves.png under rl/).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from discourse_rl.core.arrays import Spans
from discourse_rl.core.common import DiscourseRLError, atomic_save, progress, read_json
from discourse_rl.core.data import (
    NUM_LABELS,
    Corpus,
    labels_to_spans,
    load_word_probs,
    save_word_probs,
    spans_to_frame,
    unique_classes,
)
from discourse_rl.core.layout import FoldLayout, RunLayout
from discourse_rl.core.metric import score
from discourse_rl.core.rewards import MacroReward, gold_table
from discourse_rl.launch.workers import Job, run_jobs
from discourse_rl.ner import precision
from discourse_rl.ner import rl_sampling as rs
from discourse_rl.ner.backbone import encoder_from_config, freeze_lower
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.finetune import _prepare, _Prepared, _state_cache, fold_workers
from discourse_rl.ner.frozen_states import StateCache, UpperModel, drop_state_cache
from discourse_rl.ner.inference import Reading, autocast, default_device, window_probs
from discourse_rl.ner.model import NerModel
from discourse_rl.ner.rl_config import (  # noqa: F401  (re-exported: the phase's settings)
    BASELINES,
    FEEDS,
    RL_REWARDS,
    SAMPLERS,
    Baseline,
    Feeds,
    NerRlConfig,
    Reward,
    Sampler,
)
from discourse_rl.ner.run import _weights, fold_split, write_json
from discourse_rl.ner.tokens import window_inputs

# ---------------------------------------------------------------------------------------------
# Paths


def rl_fold(layout: RunLayout, k: int) -> FoldLayout:
    """Fold `k`'s RL phase."""
    return FoldLayout(layout.ner_fold(k) / "rl")


def control_fold(layout: RunLayout, k: int) -> FoldLayout:
    """Fold `k`'s control (more cross-entropy for the same wall time)."""
    return FoldLayout(layout.ner_fold(k) / "control")


def arm_dir(layout: RunLayout, arm: str) -> Path:
    """RUN/ner/rl or RUN/ner/control: the arm's out-of-fold probabilities and metrics."""
    return layout.ner / arm


def arm_oof(layout: RunLayout, arm: str) -> Path:
    return arm_dir(layout, arm) / "oof.npz"


def feed_oof(layout: RunLayout, feeds: str) -> Path:
    """The out-of-fold probabilities the later stages read under `[ner_rl] feeds`."""
    return layout.oof if feeds == "ce" else arm_oof(layout, feeds)


# ---------------------------------------------------------------------------------------------
# The policy over whole essays


class _Essays:
    """A fold's essays as the RL phase sees them: windows (training's cut), cached frozen
    states, word features, true spans."""

    def __init__(
        self, data: _Prepared, cache: StateCache | None, cfg: NerConfig, device: torch.device
    ) -> None:
        self.data = data
        self.cache = cache
        self.cfg = cfg
        self.device = device
        # The precision the cross-entropy epochs trained in ("auto" is measured, `precision`):
        # a CPU without native bf16 emulates it about 15x slower than fp32.
        self.bf16 = precision.train_bf16(cfg, device)

    def logp(self, model: NerModel, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, 15) log of each word's label distribution (the mean over its windows of their
        softmax, as prediction computes it; O = 1 past an essay's end) and the (B,) lengths."""
        data = self.data
        windows, rows, owner = [], [], []
        for b, p in enumerate(positions):
            for j, w in enumerate(data.per_essay[p]):
                windows.append(w)
                rows.append(data.first_row[p] + j)
                owner.append(b)
        inputs = window_inputs(windows, data.feats, data.pad_id)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with autocast(self.device, self.bf16):
            if self.cache is not None:
                t = inputs["input_ids"].shape[1]
                lengths = [len(w.input_ids) for w in windows]
                hidden = self.cache.padded(rows, lengths, t).to(self.device)
                upper = UpperModel(model, self.cfg.freeze_layers)
                out = upper(hidden=hidden, **{k: v for k, v in inputs.items() if k != "input_ids"})
            else:
                out = model(**inputs)
        probs = torch.softmax(out["logits"].float(), -1)  # (W, n_local, 15)
        n_words = [data.essays[p].n_words for p in positions]
        n = max(max(n_words), 1)
        local = torch.arange(probs.shape[1])
        count = inputs["word_count"].cpu()
        start = torch.tensor([w.word_start for w in windows])
        target = torch.tensor(owner)[:, None] * n + start[:, None] + local[None, :]
        valid = local[None, :] < count[:, None]
        idx = target[valid].to(self.device)
        sums = probs.new_zeros(len(positions) * n, NUM_LABELS).index_add(0, idx, probs[valid])
        seen = torch.bincount(idx, minlength=len(positions) * n).to(probs.dtype)
        pad = torch.zeros(NUM_LABELS, device=probs.device)
        pad[0] = 1.0
        mean = torch.where(
            (seen > 0)[:, None], sums / seen.clamp(min=1)[:, None], pad.expand_as(sums)
        )
        logp = mean.clamp_min(1e-30).log().view(len(positions), n, NUM_LABELS)
        return logp, torch.tensor(n_words)


def _kl_per_word(logp: torch.Tensor, ref: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(B, N) KL(policy || reference) of each word's 15-label distribution (0 past the end)."""
    kl = (logp.exp() * (logp - ref)).sum(-1)
    live = torch.arange(logp.shape[1])[None, :] < lengths[:, None]
    return torch.where(live.to(kl.device), kl, 0.0)


def _entropy_per_word(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


# ---------------------------------------------------------------------------------------------
# One update


@dataclass
class _Policy:
    """What an update needs besides the batch."""

    model: NerModel
    reference: NerModel
    essays: _Essays
    cfg: NerRlConfig
    gold: list[Spans]
    """True spans, by essay position."""
    labels: list[np.ndarray]
    """True word labels, by essay position (the optional cross-entropy term)."""
    lattice: rs.Lattice | None
    macro: MacroReward | None


def sample(
    logp: torch.Tensor,
    lengths: torch.Tensor,
    cfg: NerRlConfig,
    lattice: rs.Lattice | None,
    rng: np.random.Generator,
) -> torch.Tensor:
    """K sequences per essay with the configured sampler."""
    if cfg.sampler == "lattice":
        assert lattice is not None
        return rs.sample_lattice(logp, lengths, cfg.samples, lattice, rng)
    return rs.sample_masked(logp, lengths, cfg.samples, rng)


def greedy(logp: torch.Tensor, lengths: torch.Tensor, lattice: rs.Lattice | None) -> torch.Tensor:
    """(B, 1, N) the sampler's greedy sequence per essay."""
    if lattice is None:
        return rs.sample_masked(logp, lengths, 1, greedy=True)
    probs = logp.detach().exp().double().numpy()
    out = torch.zeros(logp.shape[0], 1, logp.shape[1], dtype=torch.int64)
    for b, path in enumerate(
        rs.lattice_greedy([probs[b, : int(n)] for b, n in enumerate(lengths)], lattice)
    ):
        out[b, 0, : path.size] = torch.from_numpy(path)
    return out


def sequence_log_prob(
    logp: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor, lattice: rs.Lattice | None
) -> torch.Tensor:
    if lattice is None:
        return rs.masked_log_prob(logp, labels, lengths)
    return rs.lattice_log_prob(logp, labels, lengths, lattice)


def rl_loss(
    logp: torch.Tensor,
    ref: torch.Tensor,
    lengths: torch.Tensor,
    pol: _Policy,
    positions: Sequence[int],
    rng: np.random.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch and its statistics: REINFORCE with the configured baseline on
    K sampled sequences per essay, + kl_beta x the summed per-word KL to the reference,
    + ce_weight x the summed cross-entropy on the true labels (both averaged over essays)."""
    cfg = pol.cfg
    # The policy that acts: the word distributions at the sampling temperature.
    act = logp if cfg.temperature == 1.0 else torch.log_softmax(logp / cfg.temperature, -1)
    lp_cpu = act.detach().cpu()
    seqs = sample(lp_cpu, lengths, cfg, pol.lattice, rng)
    gold = [pol.gold[p] for p in positions]
    counts = rs.sequence_counts(seqs, lengths, gold)
    if pol.macro is None and cfg.reward == "macro":
        pol.macro = MacroReward(counts, cfg.macro_momentum)
    reward = rs.sequence_rewards(counts, cfg.reward, pol.macro)
    stats: dict[str, float] = {}
    base = None
    if cfg.baseline == "greedy":
        g_counts = rs.sequence_counts(greedy(lp_cpu, lengths, pol.lattice), lengths, gold)
        base = rs.sequence_rewards(g_counts, cfg.reward, pol.macro)[:, 0]
        stats["greedy_reward"] = float(base.mean())
    adv = rs.advantages(reward, cfg.baseline, base)
    if pol.macro is not None:
        pol.macro.update(counts)
    seq_lp = sequence_log_prob(act.cpu(), seqs, lengths, pol.lattice)
    pg = -(torch.from_numpy(adv).to(seq_lp.dtype) * seq_lp).mean()
    kl_word = _kl_per_word(logp, ref, lengths)
    loss = pg.to(logp.device) + cfg.kl_beta * kl_word.sum(1).mean()
    if cfg.ce_weight > 0:
        lab = torch.zeros(logp.shape[:2], dtype=torch.int64)
        for b, p in enumerate(positions):
            lab[b, : int(lengths[b])] = torch.from_numpy(np.asarray(pol.labels[p], dtype=np.int64))
        nll = -logp.gather(-1, lab.to(logp.device)[..., None])[..., 0]
        live = (torch.arange(logp.shape[1])[None, :] < lengths[:, None]).to(logp.device)
        loss = loss + cfg.ce_weight * torch.where(live, nll, 0.0).sum(1).mean()
    words = float(lengths.sum())
    live = torch.arange(logp.shape[1])[None, :] < lengths[:, None]
    f1 = rs.sequence_rewards(counts, "f1")
    stats.update(
        reward=float(reward.mean()),
        reward_spread=float(reward.std(1).mean()),
        sample_f1=float(f1.mean()),
        kl=float(kl_word.detach().sum()) / words,
        entropy=float(torch.where(live, _entropy_per_word(lp_cpu), 0.0).sum()) / words,
        loss=float(loss.detach()),
    )
    return loss, stats


# ---------------------------------------------------------------------------------------------
# A fold's RL phase and control


def _param_groups(model: NerModel, lr: float, head_lr: float, wd: float) -> list[dict[str, Any]]:
    encoder = [p for p in model.encoder.parameters() if p.requires_grad]
    head = [p for p in model.head.parameters() if p.requires_grad]
    return [
        {"params": encoder, "lr": lr, "weight_decay": wd},
        {"params": head, "lr": head_lr or lr, "weight_decay": wd},
    ]


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in names}


def _load_fold_model(
    layout: RunLayout, cfg: NerConfig, k: int, weights: Path | None = None
) -> NerModel:
    """Fold `k`'s model: the cross-entropy tagger, or the `weights` file given (an arm's)."""

    encoder = encoder_from_config(layout.ner_encoder, cfg.attention_dropout, cfg.hidden_dropout)
    model = NerModel(encoder, cfg)
    model.load_state_dict(_weights(layout.fold(k).model if weights is None else weights))
    freeze_lower(model, cfg.freeze_layers)
    return model


def _order(n: int, batch: int, seed: int, step: int) -> list[int]:
    """The indices of update `step`'s batch: epochs of seeded permutations, so a resumed phase
    draws what an uninterrupted one would."""
    per_epoch = max(n // batch, 1)
    epoch, j = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    chosen: list[int] = perm[j * batch : (j + 1) * batch].tolist() or perm[:batch].tolist()
    return chosen


@dataclass(frozen=True)
class _Arm:
    """What both arms (RL, control) of a fold share."""

    layout: RunLayout
    ner: NerConfig
    cfg: NerRlConfig
    essays: _Essays
    k: int
    train: list[int]
    """Positions of the fold's training essays."""
    held: list[str]
    """The fold's held-out essays (ids)."""
    corpus: Corpus
    seed: int


def _evaluate(model: NerModel, arm: _Arm) -> float:
    """Naive macro F1 of the model on the first `eval_essays` of a seeded draw of the fold's
    held-out essays (curves only)."""
    n = min(arm.cfg.eval_essays, len(arm.held))
    if n == 0:
        return float("nan")
    ids = sorted(np.random.default_rng(arm.seed).permutation(sorted(arm.held))[:n].tolist())
    data = arm.essays.data
    essays = [data.essays[data.position[i]] for i in ids]
    probs = window_probs([model], essays, Reading(data.tokenizer, arm.ner, arm.essays.device))
    model.train()
    return naive_macro_f1(dict(zip(ids, probs, strict=True)), arm.corpus)


def naive_macro_f1(probs: dict[str, np.ndarray], corpus: Corpus) -> float:
    """Macro F1 of the argmax labels' spans (ner-naive's decoding) over the essays of `probs`."""
    parts = [(i, *labels_to_spans(p.argmax(1))) for i, p in probs.items()]
    pred = spans_to_frame(
        [i for i, c, _, _ in parts for _ in range(c.size)],
        *(
            np.concatenate([q[j] for q in parts]) if parts else np.zeros(0, np.int64)
            for j in (1, 2, 3)
        ),
    )
    gt = corpus.elements[corpus.elements["id"].isin(set(probs))]
    return score(pred, gt).macro_f1


def _finish_fold(model: NerModel, arm: _Arm, out: FoldLayout, done: dict[str, Any]) -> None:
    """Write the fold's model and its held-out essays' probabilities, then done.json."""
    # safetensors is needed only when a fold is written (as in the cross-entropy trainer).
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_save(out.model, lambda p: save_file(weights, str(p)))
    data = arm.essays.data
    held = [data.essays[data.position[i]] for i in arm.held]
    probs = window_probs([model], held, Reading(data.tokenizer, arm.ner, arm.essays.device))
    save_word_probs(out.oof, dict(zip(arm.held, probs, strict=True)))
    write_json(out.done, done)


def _is_done(out: FoldLayout, identity: dict[str, Any]) -> bool:
    done = read_json(out.done, None)
    if not (out.model.is_file() and out.oof.is_file() and isinstance(done, dict)):
        return False
    return {k: done.get(k) for k in identity} == identity


def _run_loop(
    arm: _Arm,
    out: FoldLayout,
    name: str,
    model: NerModel,
    update: Any,
    identity: dict[str, Any],
    budget_steps: int,
    budget_seconds: float,
    extra_state: dict[str, Any],
) -> dict[str, Any]:
    """The loop both arms share: AdamW (warm-up, then constant), `update(step) -> (loss,
    stats)` per step, TensorBoard, evaluation every `eval_every`, a checkpoint every
    `save_every` that a killed phase resumes from; stops at `budget_steps` or once its training
    time reaches `budget_seconds` (0 = none). Returns the history."""
    # TensorBoard's writer pulls in its protobuf stack: only when a phase trains.
    from torch.utils.tensorboard import SummaryWriter

    cfg = arm.cfg
    opt = torch.optim.AdamW(_param_groups(model, cfg.lr, cfg.head_lr, cfg.weight_decay))
    warm = max(cfg.warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (warm + 1)))
    step, seconds, history = 0, 0.0, []
    state = torch.load(out.checkpoint, weights_only=False) if out.checkpoint.is_file() else None
    if state is not None and state.get("identity") == identity:
        model.load_state_dict(state["trainable"], strict=False)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, seconds, history = int(state["step"]), float(state["seconds"]), state["history"]
        extra_state.update(state.get("extra", {}))
    out.root.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(str(out.tensorboard))
    if step == 0 and cfg.eval_essays:
        f1 = _evaluate(model, arm)
        history.append({"step": 0, "seconds": 0.0, "eval_macro_f1": f1})
        writer.add_scalar("eval/macro_f1_naive", f1, 0)

    def save() -> None:
        snap = {
            "trainable": _trainable_state(model),
            "opt": opt.state_dict(),
            "sched": sched.state_dict(),
            "step": step,
            "seconds": seconds,
            "history": history,
            "extra": extra_state,
            "identity": identity,
        }
        atomic_save(out.checkpoint, lambda p: torch.save(snap, p))

    def more() -> bool:
        if budget_seconds > 0 and seconds >= budget_seconds:
            return False
        return step < budget_steps

    total = budget_steps if budget_seconds <= 0 else None
    bar = progress(desc=f"fold {arm.k} {name}", total=total, initial=step, unit="step")
    model.train()
    while more():
        t0 = time.perf_counter()
        loss, stats = update(step)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        step += 1
        seconds += time.perf_counter() - t0
        bar.update(1)
        for key, value in stats.items():
            writer.add_scalar(f"{name}/{key}", value, step)
        writer.add_scalar(f"{name}/seconds", seconds, step)
        row = {"step": step, "seconds": round(seconds, 2), **stats}
        if cfg.eval_essays and step % cfg.eval_every == 0:
            row["eval_macro_f1"] = _evaluate(model, arm)
            writer.add_scalar("eval/macro_f1_naive", row["eval_macro_f1"], step)
        history.append(row)
        if step % cfg.save_every == 0:
            save()
    bar.close()
    if cfg.eval_essays and (not history or "eval_macro_f1" not in history[-1]):
        history.append({"step": step, "seconds": seconds, "eval_macro_f1": _evaluate(model, arm)})
        writer.add_scalar("eval/macro_f1_naive", history[-1]["eval_macro_f1"], step)
    writer.close()
    save()
    return {"steps": step, "seconds": seconds, "history": history}


def train_fold_rl(arm: _Arm) -> dict[str, Any]:
    """Fold `arm.k`'s RL phase (skipped when finished); returns its done record."""
    out = rl_fold(arm.layout, arm.k)
    identity = {
        "rl": arm.cfg.identity(),
        "seed": arm.seed + arm.k,
        "train": len(arm.train),
        "held": len(arm.held),
    }
    if _is_done(out, identity):
        return read_json(out.done)  # type: ignore[no-any-return]
    cfg = arm.cfg
    torch.manual_seed(arm.seed + arm.k)
    model = _load_fold_model(arm.layout, arm.ner, arm.k).to(arm.essays.device)
    reference = copy.deepcopy(model).eval()
    for p in reference.parameters():
        p.requires_grad_(False)
    data = arm.essays.data
    ids = [e.id for e in data.essays]
    gold_map = gold_table(arm.corpus, [ids[p] for p in arm.train])
    gold = [gold_map.get(i, _no_spans()) for i in ids]
    lat = None
    if cfg.sampler == "lattice":
        train_ids = [ids[p] for p in arm.train]
        lat = rs.lattice(unique_classes(arm.corpus, train_ids, cfg.unique_share, cfg.max_unique))
    pol = _Policy(model, reference, arm.essays, cfg, gold, data.labels, lat, None)
    extra: dict[str, Any] = {}

    def update(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        if pol.macro is None and "macro" in extra:
            pol.macro = MacroReward(np.zeros((1, 7, 3), np.int64), cfg.macro_momentum)
            pol.macro.stats = np.asarray(extra["macro"])
        chosen = _order(len(arm.train), cfg.batch_essays, arm.seed + arm.k, step)
        positions = [arm.train[i] for i in chosen]
        logp, lengths = arm.essays.logp(model, positions)
        with torch.no_grad():
            ref, _ = arm.essays.logp(reference, positions)
        rng = np.random.default_rng([arm.seed + arm.k, step])
        loss, stats = rl_loss(logp, ref, lengths, pol, positions, rng)
        if pol.macro is not None:
            extra["macro"] = pol.macro.stats.tolist()
        return loss, stats

    result = _run_loop(arm, out, "rl", model, update, identity, cfg.steps, cfg.max_seconds, extra)
    write_json(out.root / "history.json", result)
    done = {**identity, "steps": result["steps"], "seconds": round(result["seconds"], 2)}
    _finish_fold(model, arm, out, done)
    return done


def train_fold_control(arm: _Arm, seconds: float) -> dict[str, Any]:
    """Fold `arm.k`'s control: cross-entropy (the fold's training loss) on its training
    windows from the same checkpoint, with the RL phase's optimiser settings, for `seconds` of
    training time."""
    out = control_fold(arm.layout, arm.k)
    c = arm.cfg
    identity = {
        "control": {
            "lr": c.lr,
            "head_lr": c.head_lr,
            "warmup": c.warmup_steps,
            "wd": c.weight_decay,
        },
        "seconds": round(seconds, 2),
        "seed": arm.seed + arm.k,
        "train": len(arm.train),
        "held": len(arm.held),
    }
    if _is_done(out, identity):
        return read_json(out.done)  # type: ignore[no-any-return]
    torch.manual_seed(arm.seed + arm.k)
    model = _load_fold_model(arm.layout, arm.ner, arm.k).to(arm.essays.device)
    data = arm.essays.data
    windows = [(p, j) for p in arm.train for j in range(len(data.per_essay[p]))]
    batch = arm.ner.batch_size
    ess = arm.essays

    def update(step: int) -> tuple[torch.Tensor, dict[str, float]]:
        chosen = [windows[i] for i in _order(len(windows), batch, arm.seed + arm.k, step)]
        group = [data.per_essay[p][j] for p, j in chosen]
        inputs = window_inputs(group, data.feats, data.pad_id, data.labels)
        inputs = {k: v.to(ess.device) for k, v in inputs.items()}
        with autocast(ess.device, ess.bf16):
            if ess.cache is not None:
                rows = [data.first_row[p] + j for p, j in chosen]
                t = inputs["input_ids"].shape[1]
                hidden = ess.cache.padded(rows, [len(w.input_ids) for w in group], t)
                upper = UpperModel(model, arm.ner.freeze_layers)
                rest = {k: v for k, v in inputs.items() if k != "input_ids"}
                res = upper(hidden=hidden.to(ess.device), **rest)
            else:
                res = model(**inputs)
        loss = res["loss"].float()
        return loss, {"loss": float(loss.detach())}

    # No RL time to match (a phase of no steps): no control steps either.
    steps = 10**9 if seconds > 0 else 0
    result = _run_loop(arm, out, "control", model, update, identity, steps, seconds, {})
    write_json(out.root / "history.json", result)
    done = {**identity, "steps": result["steps"], "trained_seconds": round(result["seconds"], 2)}
    _finish_fold(model, arm, out, done)
    return done


def _no_spans() -> Spans:
    empty = np.zeros(0, dtype=np.int64)
    return empty, empty.copy(), empty.copy()


# ---------------------------------------------------------------------------------------------
# The phase over every fold


@dataclass(frozen=True)
class _Phase:
    """The arguments of `train_rl`, as each fold process gets them."""

    corpus: Corpus
    cfg: NerConfig
    rl_cfg: NerRlConfig
    layout: RunLayout
    folds: dict[str, int]
    seed: int
    predict_ids: frozenset[str] | None


def rl_folds(phase: _Phase, todo: list[int]) -> None:
    """The RL phase (and the control when asked) of the folds `todo`, one after the other, in
    this process (a fold child's job); each fold predicts its held-out essays among
    `phase.predict_ids` (None: all of them)."""
    cfg, layout, predict_ids = phase.cfg, phase.layout, phase.predict_ids
    device = default_device()
    data = _prepare(phase.corpus, cfg, layout)
    cache = _state_cache(cfg, layout, data.per_essay, data.pad_id, device)
    essays = _Essays(data, cache, cfg, device)
    for k in todo:
        train_ids, held = fold_split(phase.folds, k)
        if predict_ids is not None:
            held = [i for i in held if i in predict_ids]
        train = [data.position[i] for i in train_ids]
        arm = _Arm(layout, cfg, phase.rl_cfg, essays, k, train, held, phase.corpus, phase.seed)
        done = train_fold_rl(arm)
        if phase.rl_cfg.control:
            train_fold_control(arm, float(done["seconds"]))


def train_rl(
    corpus: Corpus,
    cfg: NerConfig,
    rl_cfg: NerRlConfig,
    layout: RunLayout,
    folds: dict[str, int],
    seed: int,
    predict_ids: frozenset[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """After the cross-entropy folds: every fold's RL phase (and control), in fold processes
    as the cross-entropy folds were trained; then each arm's out-of-fold probabilities
    (RUN/ner/rl/oof.npz, RUN/ner/control/oof.npz) and curves. Returns per arm its folds'
    training seconds and its out-of-fold naive macro F1 (the NER step fits and scores the
    other decodings on these probabilities). `predict_ids`: the essays that get the arms'
    probabilities (None: every essay)."""
    if cfg.mode != "finetune":
        raise DiscourseRLError("[ner_rl] enabled needs [ner] mode = 'finetune'")
    device = default_device()
    todo = list(range(cfg.folds))
    workers = fold_workers(cfg, len(todo), device)
    phase = _Phase(corpus, cfg, rl_cfg, layout, folds, seed, predict_ids)
    if workers <= 1:
        rl_folds(phase, todo)
    else:
        if cfg.cache_frozen:
            data = _prepare(corpus, cfg, layout)
            _state_cache(cfg, layout, data.per_essay, data.pad_id, device)
        threads = max(1, torch.get_num_threads() // workers)
        jobs = [Job(f"fold {k} rl", rl_folds, (phase, [k])) for k in todo]
        run_jobs(jobs, workers, threads)
    if cfg.cache_frozen:
        drop_state_cache(layout)
    arms = ["rl", *(["control"] if rl_cfg.control else [])]
    out: dict[str, dict[str, Any]] = {}
    for arm in arms:
        oof: dict[str, Any] = {}
        seconds = []
        for k in range(cfg.folds):
            fold = rl_fold(layout, k) if arm == "rl" else control_fold(layout, k)
            oof.update(load_word_probs(fold.oof))
            seconds.append(read_json(fold.done).get("seconds", 0.0))
        arm_dir(layout, arm).mkdir(parents=True, exist_ok=True)
        save_word_probs(arm_oof(layout, arm), oof)
        out[arm] = {"fold_seconds": seconds, "naive_macro_f1": naive_macro_f1(oof, corpus)}
    plot_curves(layout, cfg.folds, arms)
    return out


def plot_curves(layout: RunLayout, n_folds: int, arms: Sequence[str]) -> Path | None:
    """RUN/ner/rl/curves.png: per fold, the RL phase's mean reward and its spread, KL and
    entropy per word, and the naive macro F1 of both arms on the fold's evaluation essays
    against training seconds."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for k in range(n_folds):
        for arm in arms:
            fold = rl_fold(layout, k) if arm == "rl" else control_fold(layout, k)
            path = fold.root / "history.json"
            if not path.is_file():
                continue
            hist = json.loads(path.read_text())["history"]
            ev = [(h["seconds"], h["eval_macro_f1"]) for h in hist if "eval_macro_f1" in h]
            if ev:
                axes[2].plot(*zip(*ev, strict=True), marker="o", label=f"fold {k} {arm}")
            if arm != "rl":
                continue
            steps = [h["step"] for h in hist if "reward" in h]
            reward = np.array([h["reward"] for h in hist if "reward" in h])
            spread = np.array([h["reward_spread"] for h in hist if "reward" in h])
            if steps:
                axes[0].plot(steps, reward, label=f"fold {k}")
                axes[0].fill_between(steps, reward - spread, reward + spread, alpha=0.2)
                axes[1].plot(steps, [h["kl"] for h in hist if "kl" in h], label=f"KL, fold {k}")
                axes[1].plot(
                    steps,
                    [h["entropy"] for h in hist if "entropy" in h],
                    "--",
                    label=f"entropy, fold {k}",
                )
    axes[0].set(title="sampled reward (mean ± spread in essay)", xlabel="update")
    axes[1].set(title="per word: KL to the CE tagger, entropy", xlabel="update")
    axes[2].set(title="naive macro F1, fold's eval essays", xlabel="training seconds")
    for ax in axes:
        if ax.has_data():
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = arm_dir(layout, "rl") / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
