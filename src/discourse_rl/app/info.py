"""`discourse-rl info`: what a run folder can predict with, and how well, read from its records.

Each stage the run can label new essays with gets a row: its held-out macro F1 (mean, sd, the
seeds), which essays it was scored on and how they were chosen, how many essays it learnt from,
the data and config it came from and its wall time. The held-out table of the spans and agent
stages is preferred (every row faces the same held-out essays); a run with the NER stage only
shows its out-of-fold scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# One module's many names: qualified, so a reader sees where each comes from.
from discourse_rl.app.model_file import exported_stage, open_model
from discourse_rl.core import records
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders import registry
from discourse_rl.run import heldout, runformat


@dataclass(frozen=True)
class StageInfo:
    """One row of `info` (its JSON keys are stable: add keys, never rename them)."""

    stage: str
    macro_f1: float | None
    """Held-out macro F1 (the mean over seeds); None when the run holds no score for it."""
    sd: float | None
    """Sample sd over seeds; None with fewer than two."""
    seeds: list[int]
    """Agent seeds the mean is over (empty for a score no seed changes)."""
    n_heldout: int | None
    n_train: int | None
    heldout: str | None
    """Which essays the score is on and how they were chosen."""
    essay_f1: float | None
    essay_jaccard: float | None
    seconds: float | None
    """Wall time of the training behind the stage (the NER stage, or the trainer over seeds)."""
    data: str | None
    config: str | None
    model: str
    """The file or folder prediction loads."""


@dataclass(frozen=True)
class RunInfo:
    run: Path
    format: runformat.RunFormat | None
    stages: list[StageInfo]
    best: str | None
    """The stage `predict` uses by default."""


def run_info(run: str | Path) -> RunInfo:
    """What the run folder (or exported model .zip) `run` can label with, and how well."""
    if Path(run).is_file():
        run = open_model(run)  # a .zip: read from its unpacked copy
    lay = RunLayout(run)
    if not lay.root.is_dir():
        raise DiscourseRLError(f"{lay.root}: no such run folder")
    fmt = runformat.check_format(lay.root)
    if fmt is None:
        raise DiscourseRLError(f"{lay.root}: not a run folder (see `discourse-rl run`)")
    stage_records = records.read_stages(lay.stages)
    table = heldout.heldout_table(lay.root)
    ner = records.NerMetrics.read(lay.ner_metrics) if lay.ner_metrics.is_file() else None
    from discourse_rl.run.lock import incomplete  # the run folder lock: only here

    # A stage being rewritten, or left unfinished: its rows are not offered.
    unfinished = incomplete(lay.root)
    if "ner" in unfinished:
        raise DiscourseRLError(unfinished["ner"])
    rows = []
    for decoder in registry.decoders() if lay.ner_config.is_file() else ():
        model = decoder.saved(lay)  # every decoder needs the tagger's models
        if model is not None and decoder.step not in unfinished:
            rows.append(_row(lay, decoder, model, stage_records, table, ner))
    if not rows:
        raise DiscourseRLError(f"{lay.root}: no trained stage yet (see `discourse-rl run`)")
    stages = tuple(r.stage for r in rows)
    # An exported model labels with the stage it was made for, not necessarily the best.
    best = exported_stage(lay.root, stages) or heldout.best_stage(lay.root, stages)
    return RunInfo(lay.root, fmt, rows, best)


def _row(
    lay: RunLayout,
    decoder: type[registry.Decoder],
    model: Path,
    steps: dict[str, records.StageRecord],
    table: heldout.HeldOutTable,
    ner: records.NerMetrics | None,
) -> StageInfo:
    stage = decoder.name
    rec = steps.get(decoder.step)
    where: dict[str, Any] = {
        "data": rec.data if rec else None,
        "config": rec.config if rec else None,
        "model": str(model.relative_to(lay.root)),
    }
    scores = table.stage(stage)
    seconds = decoder.seconds(rec.seconds if rec else None, _step_results(lay, decoder, table, ner))
    if table.heldout is not None and scores is not None:
        return StageInfo(
            stage,
            scores.macro_f1.mean,
            scores.macro_f1.sd,
            list(scores.seeds),
            scores.n_heldout,
            scores.n_train,
            table.heldout.describe(),
            scores.essay_f1.mean,
            scores.essay_jaccard.mean,
            seconds,
            **where,
        )
    oof = None if ner is None else decoder.out_of_fold(ner)
    if oof is not None and ner is not None:
        score, how = oof
        return StageInfo(
            stage, score.macro_f1, None, [], ner.essays, None, how, None, None, seconds, **where
        )
    return StageInfo(stage, None, None, [], None, None, None, None, None, seconds, **where)


def _step_results(
    lay: RunLayout,
    decoder: type[registry.Decoder],
    table: heldout.HeldOutTable,
    ner: records.NerMetrics | None,
) -> Any:
    """The results record of the step that trained `decoder`."""
    by_step: dict[str, Any] = {"ner": ner, "gbdt": table.spans, "agent": table.agent}
    if decoder.step in by_step:
        return by_step[decoder.step]
    path = lay.decoder_results(decoder.step)
    return records.StepResults.read(path) if path.is_file() else None


def info_json(info: RunInfo) -> list[dict[str, Any]]:
    return [asdict(r) for r in info.stages]


def format_info(info: RunInfo) -> str:
    fmt = info.format
    lines = [f"run: {info.run}"]
    if fmt is not None:
        lines[0] += (
            f" (format {fmt.format}; written by discourse-rl {fmt.discourse_rl}, "
            f"torch {fmt.torch or '-'}, transformers {fmt.transformers or '-'})"
        )
    sources = dict.fromkeys((r.data, r.config) for r in info.stages)
    for data, config in sources:
        if data or config:
            lines.append(f"data: {data or '-'}; config: {config or '-'}")
    lines += ["", _table(info.stages), ""]
    for how in dict.fromkeys(r.heldout for r in info.stages if r.heldout):
        which = ", ".join(r.stage for r in info.stages if r.heldout == how)
        lines.append(f"scored on ({which}): {how}")
    unscored = [r.stage for r in info.stages if r.macro_f1 is None]
    if unscored:
        lines.append(f"no held-out score recorded for: {', '.join(unscored)}")
    if info.best:
        lines.append(f"predict's default stage: {info.best}")
    return "\n".join(lines)


def _table(rows: Sequence[StageInfo]) -> str:
    head = ("stage", "macro F1", "seeds", "held-out", "trained on", "wall time", "loads")
    body = []
    for r in rows:
        f1 = "-" if r.macro_f1 is None else f"{r.macro_f1:.4f}"
        if r.sd is not None:
            f1 += f" ± {r.sd:.4f}"
        body.append(
            (
                r.stage,
                f1,
                ",".join(map(str, r.seeds)) or "-",
                "-" if r.n_heldout is None else f"{r.n_heldout:,}",
                "-" if r.n_train is None else f"{r.n_train:,}",
                "-" if r.seconds is None else f"{r.seconds:,.0f} s",
                r.model,
            )
        )
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    return "\n".join(
        "  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip()
        for line in (head, *body)
    )
