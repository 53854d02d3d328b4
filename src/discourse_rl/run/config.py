"""A run's configuration: the tables of a config TOML file (`RunConfig`), read, checked and
written back as RUN/config.toml.

Each table splits what changes results from what only changes how a step runs: a config class
lists its runtime settings (threads, worker processes, progress bars, checkpoint cadence, batch
sizes of inference) in `RUNTIME`, and a step's key hashes the rest (`rules.keyed`), so changing
a runtime setting never retrains.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from discourse_rl.core import rules
from discourse_rl.core.common import (
    DiscourseRLError,
    atomic_write_text,
    config_from_dict,
    config_to_toml,
    load_toml,
)
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders import registry
from discourse_rl.decoders.agent.config import AgentConfig
from discourse_rl.decoders.agent.episode import EpisodeConfig
from discourse_rl.decoders.constrained import ConstrainedConfig
from discourse_rl.decoders.decode import DecodeConfig
from discourse_rl.decoders.gbdt.model import GbdtConfig
from discourse_rl.decoders.segments import SegmentConfig
from discourse_rl.ner import NerConfig
from discourse_rl.ner.rl_config import NerRlConfig

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
    ner_rl: NerRlConfig = field(default_factory=NerRlConfig)
    """The tagger's RL phase and its control (step `ner_rl`), and whose word probabilities
    the second stages read (`feeds`)."""
    gbdt_stage: bool = True
    """Fit and score the non-RL second stages, ner-constrained and gbdt (step `gbdt`,
    RUN/gbdt/; `spans_stage` before)."""
    constrained: ConstrainedConfig = field(default_factory=ConstrainedConfig)
    """ner-constrained: Viterbi decoding with at-most-one limits."""
    gbdt: GbdtConfig = field(default_factory=GbdtConfig)
    """gbdt: span-level gradient boosting (its seed comes from agent_seeds)."""
    segments: SegmentConfig = field(default_factory=SegmentConfig)
    """Segmentation and segment features."""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """Attention policy: behavioural cloning and PPO."""
    episode_trainer: bool = True
    """Also fine-tune each BC policy with the episode-level trainer (its own table row)."""
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    """The episode-level trainer."""
    decoders: Mapping[str, Any] = field(default_factory=dict)
    """The config tables of decoders trained in a step of their own (`[decoders.NAME]`), by
    name; a registered one without a table runs with its config's defaults."""

    def __post_init__(self) -> None:
        tables = {}
        for name, table in self.decoders.items():
            dec = registry.get(name)
            if dec.config is None or not dec.own_step():
                raise rules.ConfigValueError(name, "", "takes no table", table="decoders")
            tables[name] = (
                table
                if isinstance(table, dec.config)
                else config_from_dict(dec.config, table, where="config", table=f"decoders.{name}")
            )
        object.__setattr__(self, "decoders", tables)
        # Checks across tables, so that a bad combination stops the run before any work.
        if self.segments.max_segments > self.agent.network.max_segments:
            raise rules.ConfigValueError(
                "max_segments",
                self.segments.max_segments,
                f"exceeds [agent.network] max_segments ({self.agent.network.max_segments})",
                table="segments",
            )
        if self.ner_rl.enabled and self.ner.mode != "finetune":
            raise rules.ConfigValueError(
                "enabled", True, "needs [ner] mode = 'finetune'", table="ner_rl"
            )
        if self.ner_rl.feeds != "ce" and not self.ner_rl.enabled:
            raise rules.ConfigValueError(
                "feeds", self.ner_rl.feeds, "needs enabled = true", table="ner_rl"
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

    def decoder_config(self, name: str) -> Any:
        """The config of decoder `name` (trained in its own step): its table, else defaults."""
        if name in self.decoders:
            return self.decoders[name]
        config = registry.get(name).config
        return None if config is None else config()


def packaged_config(name: str) -> Path:
    """A config shipped with the package (`demo` or `reference`)."""
    inside = Path(str(resources.files("discourse_rl") / "configs" / f"{name}.toml"))
    if inside.is_file():
        return inside
    # An editable install of the repository: the configs folder beside src/.
    return Path(__file__).resolve().parents[3] / "configs" / f"{name}.toml"


OLD_NAMES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("spans_stage",): ("gbdt_stage",),
    **{
        ("agent", flat): ("agent", part, name)
        for flat, (part, name) in AgentConfig.FLAT_NAMES.items()
    },
}
"""Settings a config file may still give by an earlier name (old path -> path, a path being
the tables and the key): `spans_stage` is `gbdt_stage`, `[agent] bc_epochs` is
`[agent.bc] epochs`."""


def renamed(raw: Mapping[str, Any], where: str = "config") -> dict[str, Any]:
    """A config file's tables with the settings given by an earlier name (`OLD_NAMES`) moved to
    their name now; a setting given both ways is refused (one line)."""
    out = _copy_tables(raw)
    for old, new in OLD_NAMES.items():
        *old_tables, old_key = old
        holder = _table(out, old_tables)
        if holder is None or old_key not in holder:
            continue
        *new_tables, new_key = new
        target = _table(out, new_tables, make=True)
        if not isinstance(target, dict):
            shown = ".".join(new_tables)
            raise DiscourseRLError(f"{where}: {shown} must be a table ([{shown}])")
        if new_key in target:
            raise DiscourseRLError(
                f"{where}: {_path(old)} and {_path(new)} are the same setting; give it once "
                f"(as {_path(new)})"
            )
        target[new_key] = holder.pop(old_key)
    return out


def _copy_tables(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy_tables(v) if isinstance(v, Mapping) else v for k, v in raw.items()}


def _table(raw: dict[str, Any], tables: list[str], make: bool = False) -> dict[str, Any] | None:
    """The table at `tables` in `raw` (made when missing and `make`), None when missing."""
    for name in tables:
        if name not in raw and make:
            raw[name] = {}
        if not isinstance(raw.get(name), dict):
            return raw.get(name) if make else None
        raw = raw[name]
    return raw


def _path(path: tuple[str, ...]) -> str:
    """A setting as a config file names it: `[agent.bc] epochs`, or a top-level key."""
    *tables, key = path
    return f"[{'.'.join(tables)}] {key}" if tables else key


def load_run_config(path: str | Path | None) -> RunConfig:
    path = packaged_config("demo") if path is None else Path(path)
    raw = renamed(load_toml(path), str(path))
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
