"""One interface for everything that turns the tagger's word probabilities into labelled spans,
and one registry of them.

A decoder is a class: its `name` (what users type after `--stage`), the training `step` that
fits it (a key of RUN/stages.json), a line saying what it is `trained_on`, and the methods
`saved` (what a run folder holds of it), `load`, `predict`, and, for a decoder with its own
step, `fit` and `save`. The labeller, `info`, `export`, the held-out table, the choice of the
best stage, the command line's `--stage` choices and the web page all read this registry and
never name a decoder.

Adding a decoder is one module and one registration line: write the class (and, if it trains
in its own step, a frozen dataclass for its config table `[name]`), decorate it with
`@register`, and list the module in `BUILTIN` (a plugin outside the package calls `register`
itself). A decoder whose `step` is its own name gets a pipeline step of its own: the run fits it
on the protocol's training essays, scores it on the held-out ones and writes RUN/<name>/. Such a
step may also read other steps' outputs (`reads`) and the run's other settings (`run_settings`,
`fit_in_run`), be switched off by its table (`enabled`), and fit once per run seed (`seeds`).

Light on purpose: importing the registry imports no torch; each decoder loads its heavy
dependencies in `load`.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.layout import RunLayout

if TYPE_CHECKING:  # types only: the registry itself stays free of numpy and pandas
    from discourse_rl.core.arrays import Probs
    from discourse_rl.core.data import Corpus, Essay
    from discourse_rl.core.records import DecodingScore, NerMetrics

Span = tuple[int, int, int]
"""(class index, word_start, word_end) of one element, half-open over `text.split()`."""

BUILTIN = (
    "discourse_rl.decoders.ner_naive",
    "discourse_rl.decoders.ner_tuned",
    "discourse_rl.decoders.ner_constrained",
    "discourse_rl.decoders.gbdt.decoder",
    "discourse_rl.decoders.agent.decoder",
    "discourse_rl.decoders.agent.gbdt_decoder",
    "discourse_rl.decoders.combined",
)
"""The package's decoder modules, in pipeline order (each registers its classes on import)."""


@dataclass(frozen=True)
class RunContext:
    """What a decoder with its own step may read of its run beside its training essays."""

    folder: Path
    """The run folder: the saved outputs of the steps the decoder `reads`."""
    settings: Any
    """The run's whole configuration (`run.config.RunConfig`)."""
    scratch: Path
    """An empty folder for what the fit writes on its way (removed after the step)."""


class Decoder(ABC):
    """Turns word probabilities into labelled spans. Subclasses set the class variables."""

    name: ClassVar[str]
    """What users call it: `--stage NAME`, the held-out table's row, `info`'s row."""
    step: ClassVar[str]
    """The training step that fits it (its key in RUN/stages.json): 'ner', 'gbdt', 'agent',
    or the decoder's own name for a decoder trained in a step of its own."""
    trained_on: ClassVar[str]
    """What it learns from, in a few words."""
    title: ClassVar[str]
    """One line of the run report saying what it does."""
    config: ClassVar[type | None] = None
    """A decoder with its own step: the frozen dataclass of its config table `[name]`."""
    reads: ClassVar[tuple[str, ...]] = ()
    """A decoder with its own step: the other steps whose saved outputs its fit reads, beside
    the tagger's (their keys enter its key: it runs after them, and again when they re-run)."""

    def __init__(self, model: Any = None) -> None:
        self.model = model
        """What `load` or `fit` made (thresholds, a fitted model, a policy...)."""

    @classmethod
    @abstractmethod
    def path(cls, lay: RunLayout) -> Path:
        """The file or folder prediction loads."""

    @classmethod
    def marker(cls, lay: RunLayout) -> Path:
        """A file that exists once the decoder is saved (default: `path`)."""
        return cls.path(lay)

    @classmethod
    def saved(cls, lay: RunLayout) -> Path | None:
        """`path` if the run folder holds the decoder (and the tagger's models), else None."""
        ok = lay.ner_config.is_file() and cls.marker(lay).is_file()
        return cls.path(lay) if ok else None

    @classmethod
    def files(cls, lay: RunLayout) -> list[Path]:
        """Every file a model export must carry for this decoder (beside the tagger's)."""
        saved = cls.saved(lay)
        if saved is None:
            return []
        return sorted(p for p in saved.rglob("*") if p.is_file()) if saved.is_dir() else [saved]

    @classmethod
    @abstractmethod
    def load(cls, run: Path) -> Self:
        """The decoder as the run folder `run` saved it."""

    @abstractmethod
    def predict(self, probs: Probs, essays: Mapping[str, Essay]) -> dict[str, list[Span]]:
        """Essay id -> its spans in text order, for every essay of `probs`."""

    @classmethod
    def fit(cls, probs: Probs, corpus: Corpus, config: Any, seed: int) -> Self:
        """A decoder with its own step: fitted on `probs` of `corpus`'s essays (the protocol's
        training essays), with its config table and the run's seed."""
        raise NotImplementedError(f"{cls.name} is fitted by the {cls.step!r} step")

    @classmethod
    def fit_in_run(
        cls, probs: Probs, corpus: Corpus, config: Any, seed: int, run: RunContext
    ) -> Self:
        """What the run's step calls: `fit`, unless the decoder reads more of its run (`run`)."""
        return cls.fit(probs, corpus, config, seed)

    @classmethod
    def run_settings(cls, settings: Any) -> Any:
        """A decoder with its own step: the run's other settings its fit reads (they enter its
        key; None, the default: none, and the key is a plugin's as before)."""
        return None

    @classmethod
    def enabled(cls, config: Any) -> bool:
        """A decoder with its own step: whether the run trains it (its table's `enabled` where
        it has one; else always). A disabled step's folder is removed."""
        return bool(getattr(config, "enabled", True))

    @classmethod
    def seeds(cls, config: Any, agent_seeds: Sequence[int]) -> tuple[int, ...]:
        """A decoder with its own step: the run seeds it is fitted with, one fit each (the
        first's is saved; its row is their mean). Default: the first seed alone."""
        return (int(agent_seeds[0]),)

    def save(self, folder: Path) -> None:
        """A decoder with its own step: write what `load` reads into `folder`."""
        raise NotImplementedError(f"{self.name} is saved by the {self.step!r} step")

    @classmethod
    def seconds(cls, step_seconds: float | None, results: Any) -> float | None:
        """Wall time of the training behind it (`info`): by default its step's, as RUN/stages.json
        records it; `results` is the step's results record (e.g. `SpansResults`), or None."""
        return step_seconds

    @classmethod
    def out_of_fold(cls, ner: NerMetrics) -> tuple[DecodingScore, str] | None:
        """A score over the tagger's out-of-fold essays and how it was made, for a run without
        a held-out table (only the tagger's own decodings have one)."""
        return None

    @classmethod
    def own_step(cls) -> bool:
        return cls.step == cls.name


_REGISTRY: dict[str, type[Decoder]] = {}
_loaded = False


D = TypeVar("D", bound=type[Decoder])


def register(cls: D) -> D:
    """Add a decoder (a class decorator; a plugin may also call it). A name registers once."""
    if not getattr(cls, "name", ""):
        raise TypeError(f"{cls.__name__}: a decoder needs a name")
    old = _REGISTRY.get(cls.name)
    if old is not None and old is not cls and old.__qualname__ != cls.__qualname__:
        raise ValueError(f"decoder {cls.name!r} is already registered ({old.__qualname__})")
    _REGISTRY[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    """Remove a decoder (tests of plugins tidy up with this)."""
    _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN:
            importlib.import_module(module)


def decoders() -> tuple[type[Decoder], ...]:
    """Every registered decoder: the package's in pipeline order, then plugins."""
    _load_builtin()
    # Order by BUILTIN, not by registration: a module imported directly (by a test, a plugin)
    # registers before the others are loaded. The sort is stable: plugins, and the classes of
    # one module, keep their registration order.
    rank = {module: k for k, module in enumerate(BUILTIN)}
    return tuple(sorted(_REGISTRY.values(), key=lambda d: rank.get(d.__module__, len(rank))))


def names() -> tuple[str, ...]:
    return tuple(d.name for d in decoders())


def get(name: str) -> type[Decoder]:
    """The decoder called `name`; one clear line for an unknown name or a retired one."""
    _load_builtin()
    check_renamed(name)
    if name not in _REGISTRY:
        raise DiscourseRLError(f"stage: expected one of {', '.join(names())}, got {name!r}")
    return _REGISTRY[name]


def trained_by(step: str) -> tuple[str, ...]:
    """The decoders a training step fits."""
    return tuple(d.name for d in decoders() if d.step == step)


RENAMED = {"rl": "ppo"}
"""Decoder names of run folders' format 1 and their names now (the one place the old name is
known: format-1 folders are refused, so this only turns `--stage rl` into a clear line)."""


def check_renamed(name: str) -> None:
    """One clear line for a decoder name a run folder of format 1 used."""
    if name in RENAMED:
        new = RENAMED[name]
        raise DiscourseRLError(f"stage {name!r} is now called {new!r} (use --stage {new})")


def offered(run: str | Path) -> tuple[str, ...]:
    """The decoders a run folder (or unpacked model) can label with, in registry order: the
    tagger's models must exist (they turn new essays into word probabilities)."""
    lay = RunLayout(run)
    if not lay.ner_encoder_config.is_file():
        return ()
    return tuple(d.name for d in decoders() if d.saved(lay) is not None)


def sorted_spans(classes: Any, starts: Any, ends: Any) -> list[Span]:
    """Three parallel sequences (a decoder's arrays) as `Span`s in text order."""
    spans = zip(classes, starts, ends, strict=True)
    return sorted(((int(c), int(s), int(e)) for c, s, e in spans), key=lambda x: x[1])
