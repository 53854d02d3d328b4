"""Behavioural cloning: the policy learns the gold segment actions, teacher-forced."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from discourse_rl.core.common import atomic_write_text, config_to_toml, progress
from discourse_rl.core.data import Corpus
from discourse_rl.core.records import TrainedPolicy
from discourse_rl.decoders.agent.common import (
    pad_batch,
    tensorboard_writer,
    torch_threads,
)
from discourse_rl.decoders.agent.config import AgentConfig
from discourse_rl.decoders.agent.policy import (
    AttentionPolicy,
    make_policy,
    save_policy,
    score_policy,
)
from discourse_rl.decoders.segments import N_ACTIONS, EssaySegments


def action_weights(segs: Sequence[EssaySegments], power: float) -> torch.Tensor:
    """Loss weight per action, frequency ** -power, scaled so the average segment weighs 1."""
    gold = np.concatenate([s.gold_action for s in segs if s.gold_action is not None])
    freq = np.bincount(gold, minlength=N_ACTIONS).astype(np.float64) + 1.0
    w = freq**-power
    w *= gold.size / float((w * (freq - 1.0)).sum())
    return torch.tensor(w, dtype=torch.float32)


def bc_loss(
    policy: AttentionPolicy, segs: Sequence[EssaySegments], weights: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy of the gold actions under the masks the gold history allows."""
    b = pad_batch(segs, with_gold=True)
    assert b.gold is not None and b.action_mask is not None
    logits, _ = policy.encode(b.features, b.mask)
    logits = logits.masked_fill(~b.action_mask, -1e9)
    return F.cross_entropy(
        logits.reshape(-1, N_ACTIONS), b.gold.reshape(-1), weight=weights, ignore_index=-100
    )


def train_bc(
    train_segs: Sequence[EssaySegments],
    cfg: AgentConfig,
    out_dir: str | Path,
    *,
    val_segs: Sequence[EssaySegments] = (),
    corpus: Corpus | None = None,
    log_dir: str | Path | None = None,
) -> TrainedPolicy:
    """Clone the gold actions of `train_segs`; returns the saved policy and its history.

    With `val_segs` and `corpus`, the epoch with the best validation macro F1 is kept;
    otherwise the last one.
    """
    with torch_threads(cfg.torch_threads):
        return _train_bc(train_segs, cfg, out_dir, val_segs, corpus, log_dir)


def _train_bc(
    train_segs: Sequence[EssaySegments],
    cfg: AgentConfig,
    out_dir: str | Path,
    val_segs: Sequence[EssaySegments],
    corpus: Corpus | None,
    log_dir: str | Path | None,
) -> TrainedPolicy:
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    policy = make_policy(cfg, int(train_segs[0].features.shape[1]), dropout=cfg.network.dropout)
    weights = action_weights(train_segs, cfg.bc.class_weight) if cfg.bc.class_weight else None
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.bc.lr, weight_decay=cfg.bc.weight_decay)
    rng = np.random.default_rng(cfg.seed)
    writer = tensorboard_writer(log_dir)
    history: list[dict[str, float]] = []
    best_f1, best_state = -1.0, copy.deepcopy(policy.state_dict())
    bar = progress(range(cfg.bc.epochs), desc="BC", disable=not cfg.progress_bar)
    for epoch in bar:
        policy.train()
        order = rng.permutation(len(train_segs))
        losses = []
        for k in range(0, len(order), cfg.bc.batch_essays):
            loss = bc_loss(
                policy, [train_segs[i] for i in order[k : k + cfg.bc.batch_essays]], weights
            )
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        row: dict[str, float] = {"epoch": epoch + 1, "loss": float(np.mean(losses))}
        if val_segs and corpus is not None:
            row["val_macro_f1"] = score_policy(policy, val_segs, corpus).macro_f1
        f1 = row.get("val_macro_f1", float(epoch))
        if f1 > best_f1:
            best_f1, best_state = f1, copy.deepcopy(policy.state_dict())
        history.append(row)
        bar.set_postfix({n: round(v, 4) for n, v in row.items() if n != "epoch"})
        if writer is not None:
            for name, val in row.items():
                if name != "epoch":
                    writer.add_scalar(f"bc/{name}", val, epoch + 1)
    if writer is not None:
        writer.close()
    policy.load_state_dict(best_state)
    path = out_dir / "policy.pt"
    save_policy(policy, path)
    atomic_write_text(out_dir / "config.toml", config_to_toml(cfg))
    summary = {
        "seconds": time.perf_counter() - t0,
        "best_val_macro_f1": best_f1,
        "history": history,
    }
    atomic_write_text(out_dir / "history.json", json.dumps(summary, indent=2))
    return TrainedPolicy.from_summary("bc", path, summary)
