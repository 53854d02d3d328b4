"""The main job: every stage in order, resumable, with one results table and plots.

A stage is skipped when its recorded key (a hash of its own config, of the data and of the keys
of the stages it reads) matches and its outputs exist; a changed config therefore re-runs that
stage and everything downstream of it, and nothing else. Keys live in ``RUN/stages.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from discourse_rl.agent.common import AgentConfig
from discourse_rl.agent.episode import EpisodeConfig
from discourse_rl.common import (
    DiscourseRLError,
    atomic_write_text,
    config_from_dict,
    config_to_toml,
    load_toml,
)
from discourse_rl.data import Corpus, load_corpus, load_word_probs
from discourse_rl.decode import DecodeConfig
from discourse_rl.ner import NerConfig
from discourse_rl.segments import SegmentConfig


@dataclass(frozen=True)
class RunConfig:
    """Everything a run reads: the tables of a config TOML file."""

    seed: int = 0
    """Seed of folds, NER initialisation and shuffling."""
    agent_seeds: tuple[int, ...] = (0,)
    """Seeds of the agent stage: its table reports mean and spread over them."""
    sure_only: bool = True
    """Train and score on the essays whose annotations surely belong to them."""
    ner: NerConfig = field(default_factory=NerConfig)
    """NER model, training and cross-fitting."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """Naive and tuned span decoding."""
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    """Segmentation and segment features."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """Attention policy: behavioural cloning and PPO."""
    episode_trainer: bool = True
    """Also fine-tune each BC policy with the episode-level trainer (its own table row)."""
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    """The episode-level trainer."""


def packaged_config(name: str) -> Path:
    """A config shipped with the package (`demo` or `reference`)."""
    inside = Path(str(resources.files("discourse_rl") / "configs" / f"{name}.toml"))
    if inside.is_file():
        return inside
    # An editable install of the repository: the configs folder beside src/.
    return Path(__file__).resolve().parents[2] / "configs" / f"{name}.toml"


def load_run_config(path: str | Path | None) -> RunConfig:
    path = packaged_config("demo") if path is None else Path(path)
    return config_from_dict(RunConfig, load_toml(path), where=str(path))


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]
    """Stages whose outputs this one reads (their keys enter its key)."""
    config: Callable[[RunConfig], Any]
    done_marker: str
    """A file, relative to the run folder, that exists once the stage has finished."""
    run: Callable[[Path, Corpus, RunConfig], None]


def _run_ner(run: Path, corpus: Corpus, cfg: RunConfig) -> None:
    from discourse_rl.ner import NerStageConfig, train_ner_stage

    train_ner_stage(corpus, NerStageConfig(cfg.seed, cfg.ner, cfg.decode), run)


def _run_agent(run: Path, corpus: Corpus, cfg: RunConfig) -> None:
    from discourse_rl.agent.stage import train_agent_stage

    probs = load_word_probs(run / "ner" / "oof.npz")
    episode = cfg.episode if cfg.episode_trainer else None
    train_agent_stage(run, corpus, probs, cfg.segments, cfg.agent, cfg.agent_seeds, episode)


STAGES: tuple[Stage, ...] = (
    Stage(
        "ner",
        (),
        lambda c: (c.seed, c.ner, c.decode),
        "ner/metrics.json",
        _run_ner,
    ),
    Stage(
        "agent",
        ("ner",),
        lambda c: (c.segments, c.agent, c.agent_seeds, c.episode_trainer, c.episode),
        "agent/results.json",
        _run_agent,
    ),
)


def _digest(obj: Any) -> str:
    def plain(x: Any) -> Any:
        if hasattr(x, "__dataclass_fields__"):
            return plain(asdict(x))
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    text = json.dumps(plain(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_key(corpus: Corpus) -> str:
    """The essays' texts and every element's class and word range, not only their counts."""
    return corpus.content_key()[:16]


def stage_keys(corpus: Corpus, cfg: RunConfig) -> dict[str, str]:
    keys: dict[str, str] = {}
    dkey = data_key(corpus)
    for st in STAGES:
        keys[st.name] = _digest([dkey, st.config(cfg), [keys[r] for r in st.reads]])
    return keys


@dataclass(frozen=True)
class RunSummary:
    run_dir: Path
    ran: tuple[str, ...]
    """Stages computed this time."""
    reused: tuple[str, ...]
    """Stages whose earlier outputs were still valid."""
    seconds: dict[str, float]
    """Wall time of each stage, from the run that computed it."""


def run_pipeline(
    data: str | Path | None,
    out: str | Path,
    config: str | Path | None = None,
    *,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Run every stage into `out` (reusing valid earlier outputs), then write the report."""
    cfg = load_run_config(config)
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus(data)
    log(corpus.repairs_summary())
    if cfg.sure_only:
        corpus = corpus.sure_subset()
    keys = stage_keys(corpus, cfg)
    state_path = run / "stages.json"
    state: dict[str, Any] = (
        json.loads(state_path.read_text(encoding="utf-8")) if state_path.is_file() else {}
    )
    ran: list[str] = []
    reused: list[str] = []
    for st in STAGES:
        prev = state.get(st.name, {})
        if prev.get("key") == keys[st.name] and (run / st.done_marker).is_file():
            log(f"[{st.name}] up to date (key {keys[st.name]}), reusing {run / st.done_marker}")
            reused.append(st.name)
            continue
        log(f"[{st.name}] running (key {keys[st.name]})")
        t0 = time.perf_counter()
        st.run(run, corpus, cfg)
        seconds = time.perf_counter() - t0
        state[st.name] = {"key": keys[st.name], "seconds": round(seconds, 1)}
        # Later stages were built on the old outputs: forget them so they re-run.
        for later in STAGES[STAGES.index(st) + 1 :]:
            state.pop(later.name, None)
        atomic_write_text(state_path, json.dumps(state, indent=2) + "\n")
        log(f"[{st.name}] done in {seconds:.0f} s")
        ran.append(st.name)
    # Written last: stage helpers may write their own partial config files on the way.
    atomic_write_text(run / "config.toml", config_to_toml(cfg))
    from discourse_rl.results import write_report

    write_report(run, corpus, machine_description())
    stage_seconds = {k: float(v["seconds"]) for k, v in state.items()}
    return RunSummary(run, tuple(ran), tuple(reused), stage_seconds)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"


def require_run(run: str | Path) -> Path:
    run = Path(run)
    if not (run / "stages.json").is_file():
        raise DiscourseRLError(f"{run}: not a run folder (no stages.json; see `discourse-rl run`)")
    return run


def best_stage(run: str | Path, choices: tuple[str, ...]) -> str:
    """The stage with the highest held-out macro F1 in the run's agent results.

    Without agent results: the tuned NER decoding if it was fitted, else the naive one.
    """
    run = Path(run)
    path = run / "agent" / "results.json"
    if path.is_file():
        summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
        scored = {
            key.replace("_", "-"): row["macro"]["mean"]
            for key, row in summary.items()
            if key.replace("_", "-") in choices
        }
        if scored:
            return str(max(scored, key=lambda k: scored[k]))
    if not (run / "ner").is_dir():
        raise DiscourseRLError(f"{run}: not a trained run (no ner/ folder)")
    return "ner-tuned" if (run / "decode.json").is_file() else "ner-naive"
