"""combine as a registered decoder with a step of its own: per class, the spans of whichever of
the run's trained stages labels that class best, trained in a run when
`[decoders.combine] enabled = true`.

The choice is `gbdt.combine`'s: the members are refitted on inner folds of the protocol's
training essays (with the run's settings and the first seed), each predicts the fold it did
not see, and per class the member with the highest out-of-fold F1 wins (ties: the first listed).
`max_essays` makes the inner cross-fitting a seeded subset of the training essays (the cost);
the deployed members are the run's own, trained on every training essay (RUN/gbdt/gbdt/,
RUN/agent/episode/, RUN/agent-gbdt/...). RUN/combine/choice.json holds the choice and every
member's out-of-fold F1 per class; prediction loads the chosen members from the run folder.
No held-out essay is read.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from discourse_rl.core import rules
from discourse_rl.core.common import DiscourseRLError, atomic_write_text
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders import registry
from discourse_rl.decoders.registry import Decoder, RunContext, Span, register

if TYPE_CHECKING:  # types only
    import pandas as pd

    from discourse_rl.core.arrays import Probs
    from discourse_rl.core.data import Corpus, Essay

NAME = "combine"
REFITTED = ("gbdt", "bc", "episode")
"""Members trained by the package's steps that combine knows how to refit on inner folds (a
member with a step of its own is refitted through its `fit_in_run`)."""


@dataclass(frozen=True)
class CombineConfig:
    """`[decoders.combine]`: per class the best trained stage (its own step, RUN/combine/)."""

    enabled: bool = False
    """Train it in the run (off: the step is skipped and RUN/combine/ removed)."""
    members: tuple[str, ...] = ("gbdt", "episode", "agent-gbdt")
    """The stages it chooses among, per class: those of them the run has trained (two at least)."""
    folds: int = 2
    """Inner folds of the training essays: each member is refitted on the others per fold."""
    max_essays: int = 0
    """Inner cross-fitting on a seeded subset of this many training essays (0: all of them)."""

    def __post_init__(self) -> None:
        table = f"decoders.{NAME}"
        if self.folds < 2:
            raise rules.ConfigValueError("folds", self.folds, "at least 2", table=table)
        if self.max_essays < 0:
            raise rules.ConfigValueError("max_essays", self.max_essays, "must be >= 0", table=table)
        if len(set(self.members)) < 2:
            raise rules.ConfigValueError(
                "members", list(self.members), "list two stages at least", table=table
            )
        for m in self.members:
            if m == NAME or (m not in REFITTED and m in _known() and not _own(m)):
                raise rules.ConfigValueError(
                    "members", list(self.members), f"{m!r} cannot be a member", table=table
                )


def _known() -> tuple[str, ...]:
    return registry.names()


def _own(name: str) -> bool:
    return registry.get(name).own_step()


def _choice_path(lay: RunLayout) -> Path:
    return lay.decoder(NAME) / "choice.json"


def _chosen(lay: RunLayout) -> list[str] | None:
    """The chosen members RUN/combine/choice.json names (None: no readable choice)."""
    path = _choice_path(lay)
    if not path.is_file():
        return None
    try:
        member = json.loads(path.read_text(encoding="utf-8"))["member"]
        return sorted(set(map(str, member.values())))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def frame_of(spans: Mapping[str, list[Span]]) -> pd.DataFrame:
    """A decoder's spans as the metric's table (id, class name, word_start, word_end)."""
    # pandas: the registry's modules stay light to import
    import pandas as pd

    from discourse_rl.core.data import CLASSES

    rows = [(k, CLASSES[c], s, e) for k, found in spans.items() for c, s, e in found]
    return pd.DataFrame(rows, columns=["id", "class", "word_start", "word_end"])


Predictor = Callable[[Sequence[str]], "pd.DataFrame"]


def _members(
    names: Sequence[str], probs: Probs, corpus: Corpus, seed: int, run: RunContext
) -> dict[str, Callable[[Sequence[str]], Predictor]]:
    """Per member: fit on these essays (of `probs`), return what predicts others' spans."""
    # torch, lightgbm: only when the stage trains
    from discourse_rl.decoders.agent import predict_spans
    from discourse_rl.decoders.agent.bc import train_bc
    from discourse_rl.decoders.agent.common import FineTuneInputs, split_validation
    from discourse_rl.decoders.agent.episode import train_episode
    from discourse_rl.decoders.gbdt import gbdt
    from discourse_rl.decoders.segments import (
        make_segments,
        paragraph_starts,
        segment_gold_actions,
    )

    s = run.settings
    ids = sorted(probs)
    count = itertools.count()

    def scratch(name: str) -> Path:
        folder = run.scratch / f"{name}-{next(count)}"
        folder.mkdir(parents=True)
        return folder

    def fit_gbdt(fit_ids: Sequence[str]) -> Predictor:
        model = gbdt.fit(probs, corpus, fit_ids, dataclasses.replace(s.gbdt, seed=int(seed)))
        return lambda pred: model.predict(probs, corpus.essays, pred)

    segs: dict[str, Any] = {}
    if any(n in ("bc", "episode") for n in names):
        words = {i: corpus.essays[i].words for i in ids}
        paras = paragraph_starts(corpus.essays, ids) if s.segments.rich_features else None
        made = segment_gold_actions(make_segments(probs, s.segments, ids, words, paras), corpus)
        segs = {g.essay_id: g for g in made}

    def fit_agent(trainer: str) -> Callable[[Sequence[str]], Predictor]:
        def fit(fit_ids: Sequence[str]) -> Predictor:
            acfg = dataclasses.replace(s.agent, seed=int(seed), progress_bar=False)
            tr, val = split_validation([segs[i] for i in fit_ids], acfg.val_fraction, acfg.seed)
            out = scratch(trainer)
            path = train_bc(tr, acfg, out / "bc", val_segs=val, corpus=corpus).path
            if trainer == "episode":
                ecfg = dataclasses.replace(s.episode, seed=int(seed), progress_bar=False)
                inputs = FineTuneInputs(tr, corpus, path, out / "episode", val_segs=val)
                path = train_episode(inputs, ecfg).path
            return lambda pred: predict_spans(path, [segs[i] for i in pred])

        return fit

    def fit_own(name: str) -> Callable[[Sequence[str]], Predictor]:
        dec = registry.get(name)

        def fit(fit_ids: Sequence[str]) -> Predictor:
            context = RunContext(run.folder, s, scratch(name))
            sub = {i: probs[i] for i in fit_ids}
            own = s.decoder_config(name)
            model = dec.fit_in_run(sub, corpus.subset(fit_ids), own, seed, context)
            return lambda pred: frame_of(
                model.predict({i: probs[i] for i in pred}, {i: corpus.essays[i] for i in pred})
            )

        return fit

    out: dict[str, Callable[[Sequence[str]], Predictor]] = {}
    for name in names:
        if name == "gbdt":
            out[name] = fit_gbdt
        elif name in ("bc", "episode"):
            out[name] = fit_agent(name)
        else:
            out[name] = fit_own(name)
    return out


@register
class CombineDecoder(Decoder):
    """Per class, the spans of the member chosen for that class by inner cross-fitting."""

    name = NAME
    step = NAME
    trained_on = "per class the best of the run's stages, by inner cross-fitting (training essays)"
    title = "per class, the spans of the stage with the best out-of-fold F1 on training essays"
    config = CombineConfig
    reads = ("gbdt", "agent", "agent-gbdt")

    model: tuple[dict[str, Any], dict[str, Decoder]]
    """The choice (choice.json's content) and the chosen members, loaded from the run."""

    @classmethod
    def path(cls, lay: RunLayout) -> Path:
        return _choice_path(lay)

    @classmethod
    def saved(cls, lay: RunLayout) -> Path | None:
        chosen = _chosen(lay)
        if chosen is None or super().saved(lay) is None:
            return None
        names = registry.names()
        if not all(m in names and registry.get(m).saved(lay) is not None for m in chosen):
            return None
        return cls.path(lay)

    @classmethod
    def files(cls, lay: RunLayout) -> list[Path]:
        if cls.saved(lay) is None:
            return []
        # Its own held-out row travels with it, as a trained folder's does for other stages.
        results = lay.decoder_results(NAME)
        files = [cls.path(lay), *([results] if results.is_file() else [])]
        for m in _chosen(lay) or ():
            files += registry.get(m).files(lay)
        return list(dict.fromkeys(files))

    @classmethod
    def run_settings(cls, settings: Any) -> Any:
        return (settings.gbdt, settings.segments, settings.agent, settings.episode)

    @classmethod
    def fit_in_run(
        cls, probs: Probs, corpus: Corpus, config: Any, seed: int, run: RunContext
    ) -> Self:
        # numpy and the trainers: only when the stage trains
        import numpy as np

        from discourse_rl.decoders.gbdt.combine import choose, out_of_fold
        from discourse_rl.decoders.segments import gold_frame

        lay = RunLayout(run.folder)
        names = registry.names()
        members = [m for m in config.members if m in names and registry.get(m).saved(lay)]
        if len(members) < 2:
            raise DiscourseRLError(
                f"[decoders.combine] members: the run has trained {members or 'none'} of "
                f"{list(config.members)}; two are needed (enable them, or list others)"
            )
        ids = sorted(probs)
        if config.max_essays and config.max_essays < len(ids):
            pick = np.random.default_rng([seed, 7]).choice(len(ids), config.max_essays, False)
            ids = [ids[k] for k in sorted(pick.tolist())]
        sub = {i: probs[i] for i in ids}
        fitters = _members(members, sub, corpus, seed, run)
        oof = out_of_fold(fitters, ids, config.folds, seed)
        choice = choose(oof, gold_frame(corpus, ids))
        record = {**choice.to_json(), "members": members, "inner_essays": len(ids)}
        chosen = sorted(set(choice.member.values()))
        deployed = {m: registry.get(m).load(run.folder) for m in chosen}
        return cls((record, deployed))

    def save(self, folder: Path) -> None:
        atomic_write_text(folder / "choice.json", json.dumps(self.model[0], indent=2) + "\n")

    @classmethod
    def load(cls, run: Path) -> Self:
        lay = RunLayout(run)
        path = _choice_path(lay)
        if not path.is_file():
            raise DiscourseRLError(f"{lay.root}: no trained combine stage (missing {path})")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            chosen = sorted(set(map(str, record["member"].values())))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DiscourseRLError(f"{path}: not a combine choice ({exc})") from None
        return cls((record, {m: registry.get(m).load(lay.root) for m in chosen}))

    def predict(self, probs: Probs, essays: Mapping[str, Essay]) -> dict[str, list[Span]]:
        # numpy comes with the data module: not on the registry's import
        from discourse_rl.core.data import CLASSES

        record, members = self.model
        by_class: dict[str, str] = record["member"]
        out: dict[str, list[Span]] = {k: [] for k in probs}
        if not probs:
            return out
        for name, dec in members.items():
            for k, found in dec.predict(probs, essays).items():
                out[k] += [sp for sp in found if by_class.get(CLASSES[sp[0]]) == name]
        return {k: sorted(v, key=lambda x: (x[1], x[0])) for k, v in out.items()}
