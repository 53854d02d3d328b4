"""The agent's hyper-parameters (the network, cloning and the episode trainer) by an Optuna
search on training essays with inner folds.

Each trial clones the gold actions and fine-tunes by the episode trainer on all inner folds but
one, as the run's agent step does (a validation share picks each trainer's best checkpoint),
and scores the left-out fold's spans with the competition metric; the trial's value is the mean
macro F1 over the inner folds. No held-out essay is read. Names of the space say which table a
value belongs to: `network.`, `bc.` (`[agent.network]`, `[agent.bc]`) or `episode.`.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import Corpus
from discourse_rl.core.protocol import heldout_score
from discourse_rl.decoders.agent import FineTuneInputs, predict_spans
from discourse_rl.decoders.agent.bc import train_bc
from discourse_rl.decoders.agent.common import split_validation
from discourse_rl.decoders.agent.config import AgentConfig
from discourse_rl.decoders.agent.episode import EpisodeConfig, train_episode
from discourse_rl.decoders.search import Space, suggest
from discourse_rl.decoders.segments import EssaySegments, gold_frame

SPACE: Space = {
    "network.dropout": ("float", 0.0, 0.3),
    "bc.epochs": ("int", 2, 8),
    "bc.lr": ("log", 3e-4, 3e-3),
    "bc.class_weight": ("float", 0.0, 1.0),
    "episode.lr": ("log", 2e-5, 5e-4),
    "episode.kl_beta": ("log", 2e-3, 0.2),
    "episode.samples": ("int", 4, 16),
}


def configure(
    agent: AgentConfig, episode: EpisodeConfig, values: dict[str, Any]
) -> tuple[AgentConfig, EpisodeConfig]:
    """`agent` and `episode` with the searched `values` (dotted names) in place."""
    parts: dict[str, dict[str, Any]] = {"network": {}, "bc": {}, "episode": {}}
    for name, value in values.items():
        table, _, field = name.partition(".")
        if table not in parts or not field:
            raise DiscourseRLError(f"agent search: {name!r} names no [agent.*] or episode field")
        parts[table][field] = value
    agent = dataclasses.replace(
        agent,
        network=dataclasses.replace(agent.network, **parts["network"]),
        bc=dataclasses.replace(agent.bc, **parts["bc"]),
    )
    return agent, dataclasses.replace(episode, **parts["episode"])


def inner_score(
    segs: Sequence[EssaySegments],
    corpus: Corpus,
    agent: AgentConfig,
    episode: EpisodeConfig,
    folds: int,
    work: Path,
) -> float:
    """Mean macro F1 of the episode-trained policy over `folds` inner folds of `segs`; the
    policies are written under `work` and removed after scoring."""
    if folds < 2 or len(segs) < 2 * folds:
        raise DiscourseRLError(f"agent search: {folds} inner folds for {len(segs)} essays")
    fold = np.random.default_rng([agent.seed, 7]).permutation(len(segs)) % folds
    scores = []
    for f in range(folds):
        fit = [s for s, k in zip(segs, fold, strict=True) if k != f]
        held = [s for s, k in zip(segs, fold, strict=True) if k == f]
        tr, val = split_validation(fit, agent.val_fraction, agent.seed)
        here = work / f"fold{f}"
        bc = train_bc(tr, agent, here / "bc", val_segs=val, corpus=corpus)
        inputs = FineTuneInputs(tr, corpus, bc_path=bc.path, out_dir=here / "episode", val_segs=val)
        policy = train_episode(inputs, episode)
        gt = gold_frame(corpus, [s.essay_id for s in held])
        scores.append(heldout_score(predict_spans(policy.path, held), gt).macro_f1)
        shutil.rmtree(here, ignore_errors=True)
    return float(np.mean(scores))


def search(
    segs: Sequence[EssaySegments],
    corpus: Corpus,
    base: tuple[AgentConfig, EpisodeConfig],
    trials: int,
    work: Path,
    folds: int = 2,
    space: Space = SPACE,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Best values (and every trial's) of a TPE search seeded by the agent's seed; the first
    trial is `base` itself (its values clipped into the space)."""
    import optuna  # optional at run time: only the searches need it

    agent, episode = base
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=agent.seed)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    tables = {"network": agent.network, "bc": agent.bc, "episode": episode}
    first = {}
    for name, (_, lo, hi) in space.items():
        table, _, field = name.partition(".")
        first[name] = min(max(getattr(tables[table], field), lo), hi)
    study.enqueue_trial(first)
    history: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        values = suggest(trial, space)
        a, e = configure(agent, episode, values)
        value = inner_score(segs, corpus, a, e, folds, work / f"trial{trial.number}")
        history.append({"trial": trial.number, "macro_f1": value, **values})
        log(f"trial {trial.number}: {value:.4f} {values}")
        return value

    study.optimize(objective, n_trials=trials)
    return dict(study.best_params), history
