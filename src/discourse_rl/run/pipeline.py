"""The main job: every training step in order, resumable, with one results table and plots.

The steps: `ner` (the tagger; naive and tuned decoding), `gbdt` (ner-constrained, gbdt),
`agent` (bc, ppo, episode), then one per registered decoder trained on its own. A step is
skipped when its recorded key (a hash of its keyed settings, of the data and of the keys of the
steps it reads) matches and its outputs exist; a changed setting therefore re-runs that step
and everything downstream of it, and nothing else, and a changed runtime setting (threads,
worker processes, progress bars: `rules.keyed`) re-runs nothing. Keys live in
``RUN/stages.json``. `train-ner` and `train-agent` (`one_step`) record through the same keys.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from discourse_rl.core import artefacts, rules
from discourse_rl.core.arrays import Probs
from discourse_rl.core.common import DiscourseRLError, remove_temporaries
from discourse_rl.core.data import CLASSES, Corpus, load_corpus, load_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import Split, heldout_score, heldout_split, scored_ids
from discourse_rl.core.records import (
    AgentResults,
    SpansResults,
    StageRecord,
    StageScores,
    StepResults,
    read_stages,
    write_stages,
)
from discourse_rl.decoders import registry
from discourse_rl.decoders.decode import DecodeReport
from discourse_rl.decoders.segments import gold_frame
from discourse_rl.launch import distributed
from discourse_rl.ner.run import write_fed_arm
from discourse_rl.run import lock, space
from discourse_rl.run.config import RunConfig, load_run_config, write_run_config
from discourse_rl.run.results import machine_description, write_report
from discourse_rl.run.runformat import RunFormat, check_format, version_changes
from discourse_rl.run.steps.agent import train_agent_stage
from discourse_rl.run.steps.gbdt import train_gbdt_stage
from discourse_rl.run.steps.ner import NerStageConfig, train_ner_stage
from discourse_rl.run.steps.ner_rl import results_path as ner_rl_results
from discourse_rl.run.steps.ner_rl import train_ner_rl_stage

DATA_PARALLEL = ("ner",)
"""Stages every process of a launcher (torchrun, accelerate launch) works on; the main process
alone runs the others while the rest stop."""


def start_run(run: str | Path) -> RunLayout:
    """The run folder, checked (a folder an older version wrote stops here) and stamped."""
    lay = RunLayout(run)
    if lay.root.exists() and not lay.root.is_dir():
        raise DiscourseRLError(f"{lay.root}: is a file; name a run folder (new or existing)")
    check_format(lay.root)
    lock.acquire_everywhere(lay.root)  # one writer at a time (until the command ends)
    if distributed.is_main():
        lay.root.mkdir(parents=True, exist_ok=True)
        # What a killed run's atomic writes left half made: never read, so removed.
        remove_temporaries(lay.root)
        RunFormat.current().write(lay.format)
        # Readers then know a stage without a manifest is unfinished (lock.check_complete).
        lay.manifests.mkdir(exist_ok=True)
    distributed.barrier()
    return lay


@dataclass(frozen=True)
class Step:
    """A training step of the pipeline: what it reads, what its key hashes, how it runs."""

    name: str
    reads: tuple[str, ...]
    """Steps whose outputs this one reads (their keys enter its key)."""
    config: Callable[[RunConfig], Any]
    """The settings its key hashes (their runtime settings left out, `rules.keyed`)."""
    done_marker: Callable[[RunLayout], Path]
    """A file that exists once the step has finished."""
    run: Callable[[RunLayout, Corpus, RunConfig], Any]
    enabled: Callable[[RunConfig], bool] = lambda _: True
    """A disabled step is skipped and its outputs removed (nothing stale to predict with)."""
    outputs: Callable[[RunLayout], tuple[Path, ...]] = lambda _: ()
    """What a disabled step removes."""
    fed: bool = False
    """Reads the word probabilities `[ner_rl] feeds` names: then it reads `ner_rl` too."""

    def reads_under(self, cfg: RunConfig | None) -> tuple[str, ...]:
        """The steps it reads under `cfg` (None: every step it may read)."""
        if self.fed and (cfg is None or cfg.ner_rl.feeds != "ce"):
            return (*self.reads, "ner_rl")
        return self.reads

    def key_config(self, cfg: RunConfig) -> Any:
        """What its key hashes: its settings, and whose probabilities it reads when not the
        cross-entropy tagger's (so that keys written before the switch existed still hold)."""
        own = self.config(cfg)
        return [own, cfg.ner_rl.feeds] if self.fed and cfg.ner_rl.feeds != "ce" else own


def run_ner_step(lay: RunLayout, corpus: Corpus, cfg: RunConfig) -> DecodeReport:
    return train_ner_stage(corpus, NerStageConfig(cfg.seed, cfg.ner, cfg.decode), lay.root)


def fed_probs(lay: RunLayout, cfg: RunConfig) -> Probs:
    """The out-of-fold word probabilities the second stages read (`[ner_rl] feeds`)."""
    if cfg.ner_rl.feeds == "ce":
        return load_word_probs(lay.oof)
    return load_word_probs(lay.ner / cfg.ner_rl.feeds / "oof.npz")


def _run_ner_rl(lay: RunLayout, corpus: Corpus, cfg: RunConfig) -> StepResults:
    split = run_split(load_word_probs(lay.oof), corpus, cfg)
    return train_ner_rl_stage(lay.root, corpus, cfg.ner, cfg.ner_rl, split, cfg.seed)


def _ner_rl_outputs(lay: RunLayout) -> tuple[Path, ...]:
    arms = [lay.ner / "rl", lay.ner / "control"]
    folds = [p for f in sorted(lay.ner.glob("fold*")) for p in (f / "rl", f / "control")]
    return (*arms, *folds)


def run_split(probs: Probs, corpus: Corpus, cfg: RunConfig, *, simulated: bool = False) -> Split:
    """The protocol's split of the essays with probabilities and labels (every second stage)."""
    ids = scored_ids(probs, corpus)
    if not ids:
        raise DiscourseRLError("no essay has both word probabilities and labels")
    return heldout_split(ids, cfg.heldout_share, cfg.heldout_seed, simulated=simulated)


def _run_gbdt(lay: RunLayout, corpus: Corpus, cfg: RunConfig) -> SpansResults:
    probs = fed_probs(lay, cfg)
    split = run_split(probs, corpus, cfg)
    return train_gbdt_stage(
        lay.root, corpus, probs, split, cfg.constrained, cfg.gbdt, cfg.agent_seeds
    )


def run_agent_step(
    lay: RunLayout, corpus: Corpus, cfg: RunConfig, probs: Probs | None = None
) -> AgentResults:
    """The agent step (`probs`: simulated word probabilities instead of the tagger's)."""
    simulated = probs is not None
    probs = fed_probs(lay, cfg) if probs is None else probs
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


BUILTIN_STEPS: tuple[Step, ...] = (
    Step(
        "ner",
        (),
        lambda c: (c.seed, c.ner, c.decode),
        lambda lay: lay.ner_metrics,
        run_ner_step,
    ),
    Step(
        "gbdt",
        ("ner",),
        lambda c: (c.heldout_share, c.heldout_seed, c.constrained, c.gbdt, c.agent_seeds),
        lambda lay: lay.gbdt_results,
        _run_gbdt,
        lambda c: c.gbdt_stage,
        lambda lay: (lay.gbdt_dir,),
        fed=True,
    ),
    Step(
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
        run_agent_step,
        fed=True,
    ),
    Step(
        "ner_rl",
        ("ner",),
        lambda c: (
            c.seed,
            c.heldout_share,
            c.heldout_seed,
            c.ner,
            c.ner_rl.identity(),
            c.ner_rl.control,
            c.ner_rl.score_train_essays,
        ),
        ner_rl_results,
        _run_ner_rl,
        lambda c: c.ner_rl.enabled,
        _ner_rl_outputs,
    ),
)


def _own_step(decoder: type[registry.Decoder]) -> Step:
    """The step of a decoder trained on its own (a plugin, agent-gbdt, combine): fitted on the
    protocol's training essays, scored on its held-out ones, saved in RUN/<name>/."""
    name = decoder.name

    def config(c: RunConfig) -> Any:
        own = c.decoder_config(name)
        base = (c.heldout_share, c.heldout_seed, c.agent_seeds[0], own)
        extra = decoder.run_settings(c)
        if extra is None:  # a plugin's key, as before these hooks
            return base
        return (*base, list(decoder.seeds(own, c.agent_seeds)), extra)

    def run(lay: RunLayout, corpus: Corpus, cfg: RunConfig) -> StepResults:
        probs = fed_probs(lay, cfg)
        split = run_split(probs, corpus, cfg)
        return fit_own_step(decoder, lay, corpus, probs, split, cfg.decoder_config(name), cfg)

    return Step(
        name,
        ("ner", *decoder.reads),
        config,
        lambda lay: lay.decoder_results(name),
        run,
        lambda c: decoder.enabled(c.decoder_config(name)),
        outputs=lambda lay: (lay.decoder(name),),
        fed=True,
    )


def steps() -> tuple[Step, ...]:
    """Every step in order: the package's, then one per decoder trained on its own."""
    own = tuple(_own_step(d) for d in registry.decoders() if d.own_step())
    return BUILTIN_STEPS + own


def ordered_steps(cfg: RunConfig) -> list[Step]:
    """`steps()` in an order where each step comes after those it reads under `cfg`: ner_rl
    runs after the second stages unless they read its probabilities (`[ner_rl] feeds`)."""
    todo, done, out = list(steps()), set[str](), []
    while todo:
        st = next(s for s in todo if all(r in done for r in s.reads_under(cfg)))
        todo.remove(st)
        done.add(st.name)
        out.append(st)
    return out


def fit_own_step(
    decoder: type[registry.Decoder],
    lay: RunLayout,
    corpus: Corpus,
    probs: Probs,
    split: Split,
    config: Any,
    cfg: RunConfig,
) -> StepResults:
    """Fit `decoder` on `split.train` once per seed it asks for (`Decoder.seeds`), save the
    first seed's in RUN/<name>/, score each on `split.heldout` (the row: their mean)."""
    folder = lay.decoder(decoder.name)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    train, held = list(split.train), list(split.heldout)
    train_probs = {i: probs[i] for i in train}
    held_probs = {i: probs[i] for i in held}
    held_essays = {i: corpus.essays[i] for i in held}
    gt = gold_frame(corpus, held)
    seeds = decoder.seeds(config, cfg.agent_seeds)
    scores = []
    for k, seed in enumerate(seeds):
        scratch = folder / f"scratch-seed{seed}"
        scratch.mkdir()
        context = registry.RunContext(lay.root, cfg, scratch)
        model = decoder.fit_in_run(train_probs, corpus.subset(train), config, seed, context)
        if k == 0:
            model.save(folder)
        spans = model.predict(held_probs, held_essays)
        shutil.rmtree(scratch, ignore_errors=True)
        rows = [(i, c, s, e) for i, found in spans.items() for c, s, e in found]
        pred = pd.DataFrame(rows, columns=["id", "class", "word_start", "word_end"])
        pred["class"] = [CLASSES[c] for c in pred["class"]]
        scores.append(heldout_score(pred, gt))
    listed = [int(s) for s in seeds] if decoder.run_settings(cfg) is not None else ()
    row = StageScores.combine(decoder.name, scores, listed, len(train), len(held))
    results = StepResults(len(train), len(held), split.describe(), (row,))
    results.write(lay.decoder_results(decoder.name))
    return results


def _digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_key(corpus: Corpus) -> str:
    """The essays' texts and every element's class and word range, not only their counts."""
    return corpus.content_key()[:16]


def stage_keys(corpus: Corpus, cfg: RunConfig, *, legacy: bool = False) -> dict[str, str]:
    """Each step's key: its keyed settings, the data and the keys of the steps it reads.
    `legacy`: the keys before runtime settings were left out (every setting hashed), which run
    folders written then still hold."""
    plain = rules.plain if legacy else rules.keyed
    keys: dict[str, str] = {}
    dkey = data_key(corpus)
    for st in ordered_steps(cfg):
        reads = [keys[r] for r in st.reads_under(cfg)]
        keys[st.name] = _digest(plain([dkey, st.key_config(cfg), reads]))
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
class Source:
    """Where a run's inputs came from, recorded with each stage."""

    data: str
    config: str
    essays: int

    @classmethod
    def of(cls, data: str | Path | None, config: str | Path | None, corpus: Corpus) -> Source:
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


def announce_precision(cfg: RunConfig, log: Callable[[str], None]) -> None:
    """One line at the start: the CPU, the probe's rates and the precision chosen."""
    if distributed.is_main():
        from discourse_rl.ner.inference import default_device
        from discourse_rl.ner.precision import announce

        announce(cfg.ner, default_device(), log)


def read_corpus(
    data: str | Path | None, cfg: RunConfig, log: Callable[[str], None] = print
) -> Corpus:
    corpus = load_corpus(data)
    log(corpus.repairs_summary())
    return corpus.sure_subset() if cfg.sure_only else corpus


def finish_run(lay: RunLayout, cfg: RunConfig, corpus: Corpus) -> dict[str, float]:
    if not distributed.is_main():
        return {}
    write_run_config(lay.root, cfg)
    # Labelling new essays reads the tagger the second stages were fitted on.
    write_fed_arm(lay, cfg.ner_rl.feeds)
    write_report(lay.root, corpus, machine_description())
    return {k: v.seconds for k, v in read_stages(lay.stages).items()}


@lock.writes_run("run")
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
    corpus = read_corpus(data, cfg, log)
    announce_precision(cfg, log)
    source = Source.of(data, config, corpus)
    keys = stage_keys(corpus, cfg)
    legacy = stage_keys(corpus, cfg, legacy=True)
    state = read_stages(lay.stages)
    ran: list[str] = []
    reused: list[str] = []
    for st in ordered_steps(cfg):
        if not st.enabled(cfg):
            _disable(lay, state, st)
            continue
        prev = state.get(st.name)
        marker = st.done_marker(lay)

        def reusable(st: Step = st, prev: StageRecord | None = prev, marker: Path = marker) -> bool:
            known = (keys[st.name], legacy[st.name])
            if prev is None or prev.key not in known or not marker.is_file():
                return False
            broken = artefacts.damaged(lay, st.name)
            if not broken:
                if prev.key != keys[st.name]:
                    # Recorded before runtime settings left the key: the same settings.
                    state[st.name] = replace(prev, key=keys[st.name])
                    write_stages(lay.stages, state)
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
        forget_step(lay, state, st.name, cfg)
        t0 = time.perf_counter()
        if distributed.is_main():
            artefacts.forget(lay, st.name)
        space.stage_started(lay.root, st.name, corpus, cfg)
        st.run(lay, corpus, cfg)
        seconds = time.perf_counter() - t0
        record_step(lay, state, st.name, source.record(keys[st.name], seconds), cfg)
        log(f"[{st.name}] done in {seconds:.0f} s")
        ran.append(st.name)
    return RunSummary(lay.root, tuple(ran), tuple(reused), finish_run(lay, cfg, corpus))


def forget_step(
    lay: RunLayout, state: dict[str, StageRecord], name: str, cfg: RunConfig | None = None
) -> None:
    """Before a stage runs: its record and those of the stages that read it go, so that outputs
    an interrupted run leaves half made are never taken for finished ones."""
    if not distributed.is_main():
        return
    doomed = [name, *dependents(name, cfg)]
    if any(n in state for n in doomed):
        for n in doomed:
            state.pop(n, None)
        write_stages(lay.stages, state)


def dependents(name: str, cfg: RunConfig | None = None) -> list[str]:
    """Stages that read `name`'s outputs under `cfg` (None: may read), directly or through
    another stage."""
    out: list[str] = []
    for st in steps() if cfg is None else ordered_steps(cfg):
        if any(r == name or r in out for r in st.reads_under(cfg)):
            out.append(st.name)
    return out


def record_step(
    lay: RunLayout,
    state: dict[str, StageRecord],
    name: str,
    rec: StageRecord,
    cfg: RunConfig | None = None,
) -> None:
    if not distributed.is_main():
        return
    artefacts.record(lay, name)
    space.record_size(lay.root, name)
    state[name] = rec
    # Stages built on the old outputs: forget them so they re-run (the others stay valid).
    for later in dependents(name, cfg):
        state.pop(later, None)
    write_stages(lay.stages, state)


def _disable(lay: RunLayout, state: dict[str, StageRecord], st: Step) -> None:
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
