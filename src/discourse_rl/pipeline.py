"""The main job: every stage in order, resumable, with one results table and plots.

A stage is skipped when its recorded key (a hash of its own config, of the data and of the keys
of the stages it reads) matches and its outputs exist; a changed config therefore re-runs that
stage and everything downstream of it, and nothing else. Keys live in ``RUN/stages.json``.
`train-agent` runs the agent stage through the same records, so a run stays consistent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from discourse_rl import artefacts, distributed, rules
from discourse_rl.agent.common import AgentConfig
from discourse_rl.agent.episode import EpisodeConfig
from discourse_rl.common import (
    DiscourseRLError,
    atomic_write_text,
    config_from_dict,
    config_to_toml,
    load_toml,
    remove_temporaries,
)
from discourse_rl.constrained import ConstrainedConfig
from discourse_rl.data import Corpus, load_corpus, load_word_probs
from discourse_rl.decode import DecodeConfig, DecodeReport
from discourse_rl.layout import RunLayout
from discourse_rl.ner import NerConfig
from discourse_rl.protocol import Split, heldout_split, scored_ids
from discourse_rl.records import (
    PREDICT_STAGES,
    AgentResults,
    RunFormat,
    SpansResults,
    StageRecord,
    check_format,
    heldout_table,
    read_stages,
    version_changes,
    write_stages,
)
from discourse_rl.segments import SegmentConfig
from discourse_rl.spans.model import SpanConfig

Probs = Mapping[str, npt.NDArray[np.float32]]

DATA_PARALLEL = ("ner",)
"""Stages every process of a launcher (torchrun, accelerate launch) works on; the main process
alone runs the others while the rest stop."""

SEEDED_BY_RUN = ("agent", "episode", "gbdt")
"""Tables whose `seed` a run sets from `agent_seeds` (a config may not set it itself)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything a run reads: the tables of a config TOML file."""

    seed: int = 0
    """Seed of folds, NER initialisation and shuffling."""
    agent_seeds: tuple[int, ...] = (0,)
    """Seeds of the learned second stages (the agent trainers and gbdt): the table reports mean
    and spread."""
    heldout_share: float = 0.2
    """Share of the essays with out-of-fold probabilities held out from every second stage."""
    heldout_seed: int = 0
    """Seed of the held-out draw (`protocol.heldout_split`)."""
    sure_only: bool = True
    """Train and score on the essays whose annotations surely belong to them."""
    ner: NerConfig = field(default_factory=NerConfig)
    """NER model, training and cross-fitting."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """Naive and tuned span decoding."""
    spans_stage: bool = True
    """Fit and score the non-RL second stages, ner-constrained and gbdt (RUN/spans/)."""
    constrained: ConstrainedConfig = field(default_factory=ConstrainedConfig)
    """ner-constrained: Viterbi decoding with at-most-one limits."""
    gbdt: SpanConfig = field(default_factory=SpanConfig)
    """gbdt: span-level gradient boosting (its seed comes from agent_seeds)."""
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    """Segmentation and segment features."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """Attention policy: behavioural cloning and PPO."""
    episode_trainer: bool = True
    """Also fine-tune each BC policy with the episode-level trainer (its own table row)."""
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    """The episode-level trainer."""

    def __post_init__(self) -> None:
        # Checks across tables, so that a bad combination stops the run before any work.
        if self.segments.max_segments > self.agent.max_segments:
            raise rules.ConfigValueError(
                "max_segments",
                self.segments.max_segments,
                f"exceeds [agent] max_segments ({self.agent.max_segments})",
                table="segments",
            )
        rules.check_fields(
            self, {"seed": rules.non_negative, "agent_seeds": rules.each(rules.non_negative)}
        )
        if not self.agent_seeds:
            raise rules.ConfigValueError("agent_seeds", [], "list at least one seed")
        if len(set(self.agent_seeds)) != len(self.agent_seeds):
            raise rules.ConfigValueError("agent_seeds", list(self.agent_seeds), "seeds repeat")
        if not 0.0 < self.heldout_share < 1.0:
            raise rules.ConfigValueError("heldout_share", self.heldout_share, "must be > 0 and < 1")


def packaged_config(name: str) -> Path:
    """A config shipped with the package (`demo` or `reference`)."""
    inside = Path(str(resources.files("discourse_rl") / "configs" / f"{name}.toml"))
    if inside.is_file():
        return inside
    # An editable install of the repository: the configs folder beside src/.
    return Path(__file__).resolve().parents[2] / "configs" / f"{name}.toml"


def load_run_config(path: str | Path | None) -> RunConfig:
    path = packaged_config("demo") if path is None else Path(path)
    raw = load_toml(path)
    for table in SEEDED_BY_RUN:
        if "seed" in raw.get(table, {}):
            raise DiscourseRLError(
                f"{path}: {table}.seed is set by the run from agent_seeds; "
                f"remove it and list the seeds in agent_seeds"
            )
    try:
        return config_from_dict(RunConfig, raw, where=str(path))
    except ValueError as exc:
        raise DiscourseRLError(f"{path}: {exc}") from None


def write_run_config(run: str | Path, cfg: RunConfig) -> None:
    """RUN/config.toml, the resolved config (this is its only writer)."""
    text = config_to_toml(cfg)
    # The trainers' own seeds come from agent_seeds: leave them out so the file loads back.
    lines, table = [], ""
    for line in text.splitlines():
        if line.startswith("["):
            table = line.strip("[]")
        if not (table in SEEDED_BY_RUN and line.startswith("seed = ")):
            lines.append(line)
    atomic_write_text(RunLayout(run).config, "\n".join(lines) + "\n")


def start_run(run: str | Path) -> RunLayout:
    """The run folder, checked (a folder an older version wrote stops here) and stamped."""
    lay = RunLayout(run)
    if lay.root.exists() and not lay.root.is_dir():
        raise DiscourseRLError(f"{lay.root}: is a file; name a run folder (new or existing)")
    check_format(lay.root)
    if distributed.is_main():
        lay.root.mkdir(parents=True, exist_ok=True)
        # What a killed run's atomic writes left half made: never read, so removed.
        remove_temporaries(lay.root)
        RunFormat.current().write(lay.format)
    distributed.barrier()
    return lay


@dataclass(frozen=True)
class Stage:
    name: str
    reads: tuple[str, ...]
    """Stages whose outputs this one reads (their keys enter its key)."""
    config: Callable[[RunConfig], Any]
    done_marker: Callable[[RunLayout], Path]
    """A file that exists once the stage has finished."""
    run: Callable[[RunLayout, Corpus, RunConfig], Any]
    enabled: Callable[[RunConfig], bool] = lambda _: True
    """A disabled stage is skipped and its outputs removed (nothing stale to predict with)."""
    outputs: Callable[[RunLayout], tuple[Path, ...]] = lambda _: ()
    """What a disabled stage removes."""


def _run_ner(lay: RunLayout, corpus: Corpus, cfg: RunConfig) -> DecodeReport:
    from discourse_rl.ner import NerStageConfig, train_ner_stage

    return train_ner_stage(corpus, NerStageConfig(cfg.seed, cfg.ner, cfg.decode), lay.root)


def run_split(probs: Probs, corpus: Corpus, cfg: RunConfig, *, simulated: bool = False) -> Split:
    """The protocol's split of the essays with probabilities and labels (every second stage)."""
    ids = scored_ids(probs, corpus)
    if not ids:
        raise DiscourseRLError("no essay has both word probabilities and labels")
    return heldout_split(ids, cfg.heldout_share, cfg.heldout_seed, simulated=simulated)


def _run_spans(lay: RunLayout, corpus: Corpus, cfg: RunConfig) -> SpansResults:
    from discourse_rl.spans.stage import train_spans_stage

    probs = load_word_probs(lay.oof)
    split = run_split(probs, corpus, cfg)
    return train_spans_stage(
        lay.root, corpus, probs, split, cfg.constrained, cfg.gbdt, cfg.agent_seeds
    )


def _run_agent(
    lay: RunLayout, corpus: Corpus, cfg: RunConfig, probs: Probs | None = None
) -> AgentResults:
    from discourse_rl.agent.stage import train_agent_stage

    simulated = probs is not None
    probs = load_word_probs(lay.oof) if probs is None else probs
    episode = cfg.episode if cfg.episode_trainer else None
    return train_agent_stage(
        lay.root,
        corpus,
        probs,
        run_split(probs, corpus, cfg, simulated=simulated),
        cfg.segments,
        cfg.agent,
        cfg.agent_seeds,
        episode,
    )


STAGES: tuple[Stage, ...] = (
    Stage(
        "ner",
        (),
        # Runtime settings (the precision) never change the key.
        lambda c: (c.seed, c.ner.keyed(), c.decode),
        lambda lay: lay.ner_metrics,
        _run_ner,
    ),
    Stage(
        "spans",
        ("ner",),
        lambda c: (c.heldout_share, c.heldout_seed, c.constrained, c.gbdt, c.agent_seeds),
        lambda lay: lay.spans_results,
        _run_spans,
        lambda c: c.spans_stage,
        lambda lay: (lay.spans,),
    ),
    Stage(
        "agent",
        ("ner",),
        lambda c: (
            c.heldout_share,
            c.heldout_seed,
            c.segments,
            c.agent,
            c.agent_seeds,
            c.episode_trainer,
            c.episode,
        ),
        lambda lay: lay.agent_results,
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


@dataclass(frozen=True)
class _Source:
    """Where a run's inputs came from, recorded with each stage."""

    data: str
    config: str
    essays: int

    @classmethod
    def of(cls, data: str | Path | None, config: str | Path | None, corpus: Corpus) -> _Source:
        d = str(Path(data).resolve()) if data is not None else "the embedded sample"
        c = str(Path(config).resolve()) if config is not None else "the packaged demo config"
        return cls(d, c, len(corpus.essays))

    def record(self, key: str, seconds: float) -> StageRecord:
        versions = RunFormat.current().versions()
        return StageRecord(key, round(seconds, 1), self.data, self.config, self.essays, versions)


def _warn_versions(stage: str, prev: StageRecord, old: RunFormat | None) -> None:
    """A reused stage computed by other versions: say so (its outputs stay; the user decides)."""
    then = prev.versions or (old.versions() if old is not None else None)
    if not then:
        return
    changes = version_changes(then, RunFormat.current().versions())
    if changes:
        print(
            f"discourse-rl: warning: [{stage}] reused outputs were computed with "
            f"{', '.join(changes)} (installed); run into a new --out folder to recompute them",
            file=sys.stderr,
        )


def _corpus(data: str | Path | None, cfg: RunConfig, log: Callable[[str], None] = print) -> Corpus:
    corpus = load_corpus(data)
    log(corpus.repairs_summary())
    return corpus.sure_subset() if cfg.sure_only else corpus


def _precision(cfg: RunConfig, log: Callable[[str], None]) -> None:
    """One line at the start: the CPU, the probe's rates and the precision chosen."""
    if distributed.is_main():
        from discourse_rl.ner.precision import announce

        announce(cfg.ner, log)


def _finish(lay: RunLayout, cfg: RunConfig, corpus: Corpus) -> dict[str, float]:
    if not distributed.is_main():
        return {}
    write_run_config(lay.root, cfg)
    from discourse_rl.results import write_report

    write_report(lay.root, corpus, machine_description())
    return {k: v.seconds for k, v in read_stages(lay.stages).items()}


def run_pipeline(
    data: str | Path | None,
    out: str | Path,
    config: str | Path | None = None,
    *,
    log: Callable[[str], None] = print,
) -> RunSummary:
    """Run every stage into `out` (reusing valid earlier outputs), then write the report."""
    cfg = load_run_config(config)
    old_format = check_format(out)
    lay = start_run(out)
    corpus = _corpus(data, cfg, log)
    _precision(cfg, log)
    source = _Source.of(data, config, corpus)
    keys = stage_keys(corpus, cfg)
    state = read_stages(lay.stages)
    ran: list[str] = []
    reused: list[str] = []
    for st in STAGES:
        if not st.enabled(cfg):
            _disable(lay, state, st)
            continue
        prev = state.get(st.name)
        marker = st.done_marker(lay)

        def reusable(
            st: Stage = st, prev: StageRecord | None = prev, marker: Path = marker
        ) -> bool:
            if prev is None or prev.key != keys[st.name] or not marker.is_file():
                return False
            broken = artefacts.damaged(lay, st.name)
            if not broken:
                return True
            path, problem = broken[0]
            more = f" (and {len(broken) - 1} more)" if len(broken) > 1 else ""
            log(f"[{st.name}] {path}: {problem}{more}: rebuilding")
            artefacts.remove_damaged(lay, st.name)
            return False

        # The main process decides (and tidies); the others follow (under a launcher).
        if distributed.from_main(reusable):
            log(f"[{st.name}] up to date (key {keys[st.name]}), reusing {marker}")
            if prev is not None:
                _warn_versions(st.name, prev, old_format)
            reused.append(st.name)
            continue
        if not distributed.is_main() and st.name not in DATA_PARALLEL:
            continue  # the other processes help with the data-parallel stages only
        log(f"[{st.name}] running (key {keys[st.name]})")
        _forget(lay, state, st.name)
        t0 = time.perf_counter()
        if distributed.is_main():
            artefacts.forget(lay, st.name)
        st.run(lay, corpus, cfg)
        seconds = time.perf_counter() - t0
        _record(lay, state, st.name, source.record(keys[st.name], seconds))
        log(f"[{st.name}] done in {seconds:.0f} s")
        ran.append(st.name)
    return RunSummary(lay.root, tuple(ran), tuple(reused), _finish(lay, cfg, corpus))


def _forget(lay: RunLayout, state: dict[str, StageRecord], name: str) -> None:
    """Before a stage runs: its record and those of the stages that read it go, so that outputs
    an interrupted run leaves half made are never taken for finished ones."""
    if not distributed.is_main():
        return
    doomed = [name, *_dependents(name)]
    if any(n in state for n in doomed):
        for n in doomed:
            state.pop(n, None)
        write_stages(lay.stages, state)


def _dependents(name: str) -> list[str]:
    """Stages that read `name`'s outputs, directly or through another stage."""
    out: list[str] = []
    for st in STAGES:
        if any(r == name or r in out for r in st.reads):
            out.append(st.name)
    return out


def _record(lay: RunLayout, state: dict[str, StageRecord], name: str, rec: StageRecord) -> None:
    if not distributed.is_main():
        return
    artefacts.record(lay, name)
    state[name] = rec
    # Stages built on the old outputs: forget them so they re-run (the others stay valid).
    for later in _dependents(name):
        state.pop(later, None)
    write_stages(lay.stages, state)


def _disable(lay: RunLayout, state: dict[str, StageRecord], st: Stage) -> None:
    import shutil

    if not distributed.is_main():
        return
    artefacts.forget(lay, st.name)
    for path in st.outputs(lay):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    if state.pop(st.name, None) is not None:
        write_stages(lay.stages, state)


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
    corpus = _corpus(data, cfg, log)
    _precision(cfg, log)
    log("[ner] running")
    _forget(lay, read_stages(lay.stages), "ner")
    t0 = time.perf_counter()
    if distributed.is_main():
        artefacts.forget(lay, "ner")
    report = _run_ner(lay, corpus, cfg)
    key = stage_keys(corpus, cfg)["ner"]
    _record(
        lay,
        read_stages(lay.stages),
        "ner",
        _Source.of(data, path, corpus).record(key, time.perf_counter() - t0),
    )
    if distributed.is_main():
        _retire_dependents(lay, log)
    _finish(lay, cfg, corpus)
    return report


def _retire_dependents(lay: RunLayout, log: Callable[[str], None]) -> None:
    """After `train-ner`: the later stages' outputs were made from the previous word
    probabilities, so `predict`, `info` and the report must not offer them any more. A stage's
    removable outputs go; the agent keeps its policies for its own resume (reused only if its
    inputs match) and loses its results and segmentation settings."""
    import shutil

    for st in STAGES:
        if st.name not in _dependents("ner"):
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
    corpus = _corpus(data, cfg, log)
    probs: Probs | None = None
    if simulate:
        from discourse_rl.segments import simulate_word_probs

        probs = simulate_word_probs(corpus, cfg.agent.sim_noise, seed=0)
    elif not lay.oof.is_file():
        raise DiscourseRLError(f"{lay.oof}: missing (train-ner first, or --simulate)")
    log(f"[agent] running ({'simulated probabilities' if simulate else lay.oof})")
    _forget(lay, read_stages(lay.stages), "agent")
    t0 = time.perf_counter()
    artefacts.forget(lay, "agent")
    result = _run_agent(lay, corpus, cfg, probs)
    key = stage_keys(corpus, cfg)["agent"]
    # Simulated probabilities are not the NER stage's: `run` must not reuse these outputs.
    rec = _Source.of(data, path, corpus).record(
        "simulated" if simulate else key, time.perf_counter() - t0
    )
    _record(lay, read_stages(lay.stages), "agent", rec)
    _finish(lay, cfg, corpus)
    return result


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


def read_agent_results(run: str | Path) -> AgentResults | None:
    """The run's agent results, or None before the agent stage."""
    path = RunLayout(run).agent_results
    return AgentResults.read(path) if path.is_file() else None


def best_stage(run: str | Path, choices: Sequence[str] = PREDICT_STAGES) -> str:
    """The stage with the highest held-out macro F1 among `choices` in the run's held-out table
    (the spans stage's and the agent stage's rows; a tie goes to the earlier, simpler stage).

    Without a held-out table: the tuned NER decoding if it was fitted, else the naive one.
    """
    lay = RunLayout(run)
    check_format(lay.root)
    table = heldout_table(lay.root)
    scored = {s.stage: s.macro_f1.mean for s in table.rows if s.stage in choices}
    scored = {k: v for k, v in scored.items() if v == v}
    if scored:
        return max(scored, key=lambda k: scored[k])
    if not lay.ner.is_dir():
        raise DiscourseRLError(f"{lay.root}: not a trained run (no ner/ folder)")
    return "ner-tuned" if lay.decode.is_file() else "ner-naive"
