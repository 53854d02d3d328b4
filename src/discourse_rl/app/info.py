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
from discourse_rl.core import records
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.layout import RunLayout


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
    format: records.RunFormat | None
    stages: list[StageInfo]
    best: str | None
    """The stage `predict` uses by default."""


def _can_predict(lay: RunLayout, stage: str) -> Path | None:
    """What prediction with `stage` loads, if the run has it (every stage needs the NER
    models: they turn new essays into word probabilities)."""
    if not lay.ner_config.is_file():
        return None
    if stage == "ner-naive":
        return lay.ner
    if stage == "ner-tuned":
        return lay.tuned if lay.tuned.is_file() else None
    if stage == "ner-constrained":
        return lay.constrained if lay.constrained.is_file() else None
    if stage == "gbdt":
        return lay.gbdt if (lay.gbdt / "params.json").is_file() else None
    policy = lay.policy(stage)
    return policy if policy.is_file() and lay.segments_config.is_file() else None


def run_info(run: str | Path) -> RunInfo:
    lay = RunLayout(run)
    if not lay.root.is_dir():
        raise DiscourseRLError(f"{lay.root}: no such run folder")
    fmt = records.check_format(lay.root)
    if fmt is None:
        raise DiscourseRLError(f"{lay.root}: not a run folder (see `discourse-rl run`)")
    stage_records = records.read_stages(lay.stages)
    table = records.heldout_table(lay.root)
    ner = records.NerMetrics.read(lay.ner_metrics) if lay.ner_metrics.is_file() else None
    rows = []
    for stage in records.PREDICT_STAGES:
        model = _can_predict(lay, stage)
        if model is not None:
            rows.append(_row(lay, stage, model, stage_records, table, ner))
    if not rows:
        raise DiscourseRLError(f"{lay.root}: no trained stage yet (see `discourse-rl run`)")
    from discourse_rl.run.pipeline import best_stage

    best = best_stage(lay.root, tuple(r.stage for r in rows))
    return RunInfo(lay.root, fmt, rows, best)


PIPELINE_STAGE = {
    "ner-naive": "ner",
    "ner-tuned": "ner",
    "ner-constrained": "spans",
    "gbdt": "spans",
}
"""The pipeline stage (RUN/stages.json) that trains each predict stage (else: 'agent')."""


def _row(
    lay: RunLayout,
    stage: str,
    model: Path,
    records: dict[str, records.StageRecord],
    table: records.HeldOutTable,
    ner: records.NerMetrics | None,
) -> StageInfo:
    pipeline_stage = PIPELINE_STAGE.get(stage, "agent")
    rec = records.get(pipeline_stage)
    where: dict[str, Any] = {
        "data": rec.data if rec else None,
        "config": rec.config if rec else None,
        "model": str(model.relative_to(lay.root)),
    }
    scores = table.stage(stage)
    if pipeline_stage == "ner":
        seconds = rec.seconds if rec else (ner.seconds if ner else None)
    elif pipeline_stage == "spans":
        seconds = _spans_seconds(table.spans, stage)
    else:
        seconds = _trainer_seconds(table.agent, stage)
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
    oof = None
    if ner is not None and pipeline_stage == "ner":
        oof = ner.naive if stage == "ner-naive" else ner.tuned_cross_fitted
    if oof is not None and ner is not None:
        how = "out of fold: each essay scored by the NER fold model that never saw it"
        if stage == "ner-tuned":
            how += ", with minima fitted on the other folds"
        return StageInfo(
            stage, oof.macro_f1, None, [], ner.essays, None, how, None, None, seconds, **where
        )
    return StageInfo(stage, None, None, [], None, None, None, None, None, seconds, **where)


def _spans_seconds(spans: records.SpansResults | None, stage: str) -> float | None:
    if spans is None:
        return None
    return spans.constrained_seconds if stage == "ner-constrained" else sum(spans.gbdt_seconds)


def _trainer_seconds(agent: records.AgentResults | None, stage: str) -> float | None:
    if agent is None or not agent.seeds:
        return None
    per_seed = [getattr(r, f"{stage}_seconds") for r in agent.seeds]
    return None if any(s is None for s in per_seed) else float(sum(per_seed))


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
