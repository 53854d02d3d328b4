"""One step of a run alone: `discourse-rl train-ner` and `train-agent`, recorded in the run
folder as `run` would record them, with the command line's overrides of the config."""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from discourse_rl.core import artefacts, rules
from discourse_rl.core.arrays import Probs
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.records import AgentResults, read_stages
from discourse_rl.decoders.decode import DecodeReport
from discourse_rl.decoders.segments import simulate_word_probs
from discourse_rl.launch import distributed
from discourse_rl.run.config import RunConfig, load_run_config
from discourse_rl.run.pipeline import (
    Source,
    dependents,
    finish_run,
    forget_step,
    read_corpus,
    record_step,
    run_agent_step,
    run_ner_step,
    stage_keys,
    start_run,
    steps,
)


def _stage_config(run: str | Path, config: str | Path | None) -> tuple[RunConfig, Path | None]:
    """The config of a stage run alone: `config`, else the run's own, else the demo config."""
    lay = RunLayout(run)
    path = Path(config) if config is not None else lay.config if lay.config.is_file() else None
    return load_run_config(path), path


OPTIONS = {
    "agent_seeds": "--seeds",
    "max_essays": "--max-essays",
    "seed": "--seed",
    "mode": "--mode",
    "backbone": "--backbone",
}
"""Config fields the stage commands override, and the option that sets each."""


@contextmanager
def _options() -> Iterator[None]:
    """A command-line override that a config check refuses: one line naming the option."""
    try:
        yield
    except rules.ConfigValueError as exc:
        name = OPTIONS.get(exc.key)
        if name is None:  # a check across tables, tripped by an override
            raise DiscourseRLError(f"command line: {exc.describe()}") from None
        value = exc.value
        shown = " ".join(map(str, value)) if isinstance(value, (list, tuple)) else value
        raise DiscourseRLError(f"{name} {shown}: {exc.problem}") from None


def train_ner(
    run: str | Path,
    data: str | Path | None = None,
    config: str | Path | None = None,
    *,
    seed: int | None = None,
    log: Callable[[str], None] = print,
    **ner_overrides: Any,
) -> DecodeReport:
    """The NER stage alone (`train-ner`), recorded as `run` would record it; `seed` and
    `ner_overrides` (fields of [ner], None = keep) override the config."""
    cfg, path = _stage_config(run, config)
    over = {k: v for k, v in ner_overrides.items() if v is not None}
    with _options():
        if over:
            cfg = dataclasses.replace(cfg, ner=dataclasses.replace(cfg.ner, **over))
        if seed is not None:
            cfg = dataclasses.replace(cfg, seed=seed)
    lay = start_run(run)
    corpus = read_corpus(data, cfg, log)
    log("[ner] running")
    forget_step(lay, read_stages(lay.stages), "ner")
    t0 = time.perf_counter()
    if distributed.is_main():
        artefacts.forget(lay, "ner")
    report = run_ner_step(lay, corpus, cfg)
    key = stage_keys(corpus, cfg)["ner"]
    record_step(
        lay,
        read_stages(lay.stages),
        "ner",
        Source.of(data, path, corpus).record(key, time.perf_counter() - t0),
    )
    if distributed.is_main():
        _retire_dependents(lay, log)
    finish_run(lay, cfg, corpus)
    return report


def _retire_dependents(lay: RunLayout, log: Callable[[str], None]) -> None:
    """After `train-ner`: the later stages' outputs were made from the previous word
    probabilities, so `predict`, `info` and the report must not offer them any more. A stage's
    removable outputs go; the agent keeps its policies for its own resume (reused only if its
    inputs match) and loses its results and segmentation settings."""
    for st in steps():
        if st.name not in dependents("ner"):
            continue
        stale = [*st.outputs(lay)] if st.name != "agent" else []
        stale += [lay.agent_results, lay.segments_config] if st.name == "agent" else []
        stale = [p for p in stale if p.exists()]
        for p in stale:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        if stale:
            artefacts.forget(lay, st.name)
            log(f"[{st.name}] outputs withdrawn: made from the previous NER outputs (run rebuilds)")


def train_agent(
    run: str | Path,
    data: str | Path | None = None,
    config: str | Path | None = None,
    *,
    seeds: Sequence[int] | None = None,
    max_essays: int | None = None,
    simulate: bool = False,
    log: Callable[[str], None] = print,
) -> AgentResults:
    """The agent stage alone (`train-agent`), recorded as `run` would record it.

    The config is `config`, else the run's own RUN/config.toml; `seeds` and `max_essays`
    override it, and RUN/config.toml, stages.json and the report then say what ran.
    """
    distributed.require_one_process("train-agent")
    cfg, path = _stage_config(run, config)
    with _options():
        if seeds is not None:
            cfg = dataclasses.replace(cfg, agent_seeds=tuple(int(s) for s in seeds))
        if max_essays is not None:
            agent = dataclasses.replace(cfg.agent, max_essays=max_essays)
            cfg = dataclasses.replace(cfg, agent=agent)
    lay = start_run(run)
    corpus = read_corpus(data, cfg, log)
    probs: Probs | None = None
    if simulate:
        probs = simulate_word_probs(corpus, cfg.agent.sim_noise, seed=0)
    elif not lay.oof.is_file():
        raise DiscourseRLError(f"{lay.oof}: missing (train-ner first, or --simulate)")
    log(f"[agent] running ({'simulated probabilities' if simulate else lay.oof})")
    forget_step(lay, read_stages(lay.stages), "agent")
    t0 = time.perf_counter()
    artefacts.forget(lay, "agent")
    result = run_agent_step(lay, corpus, cfg, probs)
    key = stage_keys(corpus, cfg)["agent"]
    # Simulated probabilities are not the NER stage's: `run` must not reuse these outputs.
    rec = Source.of(data, path, corpus).record(
        "simulated" if simulate else key, time.perf_counter() - t0
    )
    record_step(lay, read_stages(lay.stages), "agent", rec)
    finish_run(lay, cfg, corpus)
    return result
