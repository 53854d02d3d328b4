"""RUN/results.md and the PNG plots, read through the typed records of a run folder."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from discourse_rl.core.common import atomic_save, atomic_write_text, read_json
from discourse_rl.core.data import CLASSES, Corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.records import (
    ORACLE,
    AgentResults,
    DecodingScore,
    NerMetrics,
    SpansResults,
    StageScores,
    Stat,
    TrainedPolicy,
    read_stages,
)
from discourse_rl.decoders import registry
from discourse_rl.run.heldout import NER_RL_TITLES, heldout_table

SEED_TABLE = {"ner-naive": 0.42, "bc": 0.39, "ppo": 0.51}
"""The seed's published table (its RL fine-tuning row is PPO's). Its author's code computes the
per-essay TP / (TP + FP + FN) averaged over essays, not macro F1: compare with that column."""
ORACLE_TITLE = "segment oracle: the best labelling of the segments (a ceiling, not a stage)"


def _title(row: str) -> str:
    """A row's line under the table: its decoder's title (the oracle row is no decoder)."""
    if row == ORACLE:
        return ORACLE_TITLE
    if row in NER_RL_TITLES:
        return NER_RL_TITLES[row]
    return registry.get(row).title if row in registry.names() else row


def _fmt(stat: Stat | float | None) -> str:
    if stat is None:
        return "-"
    if isinstance(stat, float):
        return "-" if stat != stat else f"{stat:.3f}"
    if stat.mean != stat.mean:
        return "-"
    return f"{stat.mean:.3f}" if stat.sd is None else f"{stat.mean:.3f} ± {stat.sd:.3f}"


def stage_table(stages: Sequence[StageScores]) -> str:
    """The one markdown table of held-out scores, a row per stage (mean ± sd over seeds)."""
    head = [
        "stage",
        "macro F1",
        "mean essay F1",
        "essay TP/(TP+FP+FN)",
        "seed's table (same unit)",
        "trained on",
        *CLASSES,
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for s in stages:
        seed = SEED_TABLE.get(s.stage)
        cells = [
            s.stage,
            _fmt(s.macro_f1),
            _fmt(s.essay_f1),
            _fmt(s.essay_jaccard),
            "-" if seed is None else f"{seed:.2f}",
            f"{s.n_train:,}" if s.n_train else "-",
            *(_fmt(s.per_class[c]) for c in CLASSES),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- `{s.stage}`: {_title(s.stage)}" for s in stages]
    return "\n".join(lines)


def _spans_section(spans: SpansResults) -> list[str]:
    def recall(r: Mapping[str, float]) -> list[str]:
        return [_fmt(r.get(c)) for c in CLASSES]

    secs = ", ".join(f"{x:.0f}" for x in spans.gbdt_seconds)
    return [
        "## gbdt candidates and fits",
        "",
        f"{spans.candidates_per_essay:.0f} candidates per training essay, "
        f"{spans.positive_share:.3f} of them hits; the booster trained on "
        f"{spans.gbdt_train_rows:,} of them. ner-constrained allows at most one "
        f"{', '.join(spans.unique_classes) or '(no class)'} per essay. Fit wall time: "
        f"ner-constrained {spans.constrained_seconds:.0f} s; gbdt candidates "
        f"{spans.candidates_seconds:.0f} s (once), fits {secs} s per seed.",
        "",
        "Candidate recall (the share of true spans some candidate hits: gbdt's ceiling):",
        "",
        "| essays | " + " | ".join(CLASSES) + " |",
        "|---" * (len(CLASSES) + 1) + "|",
        "| training | " + " | ".join(recall(spans.recall_train)) + " |",
        "| held-out | " + " | ".join(recall(spans.recall_heldout)) + " |",
    ]


def _decoding_row(name: str, s: DecodingScore) -> str:
    cells = [f"{s.macro_f1:.3f}", *(_fmt(s.per_class.get(c)) for c in CLASSES)]
    return f"| {name} | " + " | ".join(cells) + " |"


def write_report(run: str | Path, corpus: Corpus, machine: str) -> Path:
    lay = RunLayout(run)
    table = heldout_table(lay.root)
    agent, spans = table.agent, table.spans
    ner = NerMetrics.read(lay.ner_metrics) if lay.ner_metrics.is_file() else None
    stages = read_stages(lay.stages)
    lines = [
        f"# Results of `{lay.root}`",
        "",
        f"Data: {len(corpus.essays):,} essays, {len(corpus.elements):,} elements. "
        f"Machine: {machine}.",
        "",
    ]
    if table.heldout is not None:
        first = spans if spans is not None else agent
        assert first is not None
        seeds = max((len(s.seeds) for s in table.rows), default=1) or 1
        lines += [
            f"## Held-out essays ({table.n_heldout:,}: {table.heldout.describe()}; "
            f"the second stages trained on the other {first.n_train:,})",
            "",
            "Macro F1 and per-class F1: the competition metric (one-to-one matching). Mean essay "
            "F1 is the per-essay F-score (the RL reward); essay TP/(TP+FP+FN) the seed's "
            "per-essay score, the unit of the seed's published table. Learned rows (gbdt and "
            f"the agents): mean ± sd over {seeds} seed(s). 'trained on': the essays the row "
            "learnt or fitted from.",
            "",
            stage_table(table.rows),
        ]
    if spans is not None:
        lines += ["", *_spans_section(spans)]
    if ner is not None:
        essays = ner.essays if ner.essays is not None else len(corpus.essays)
        lines += [
            "",
            f"## NER stage, out of fold over all {essays:,} essays",
            "",
            "| decoding | macro F1 | " + " | ".join(CLASSES) + " |",
            "|---" * (len(CLASSES) + 2) + "|",
            _decoding_row("ner-naive (argmax)", ner.naive),
        ]
        for name, score in (
            ("public thresholds", ner.public_thresholds),
            ("ner-tuned (minima fitted on all folds)", ner.tuned),
            ("ner-tuned (cross-fitted: minima from the other folds)", ner.tuned_cross_fitted),
        ):
            if score is not None:
                lines.append(_decoding_row(name, score))
    lines += [
        "",
        "## Reference points",
        "",
        "The seed's published table: NER naive 0.42, BC 0.39, RL fine-tuning 0.51. Public "
        "anchors: a Longformer-base NER baseline scored about 0.62; the competition's winners "
        "about 0.74 with GPU ensembles of large models.",
        "",
        "## Wall time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v.seconds:.0f} |" for k, v in stages.items()]
    if agent is not None and agent.seeds:
        lines += [
            "",
            "## Agent seeds (wall time on this machine, held-out macro F1)",
            "",
            "| seed | bc s | ppo s | ppo env steps/s | episode s | bc | ppo | episode |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, r in enumerate(agent.seeds):
            macro = []
            for name in registry.trained_by("agent"):
                row = agent.stage(name)
                ok = row is not None and k < len(row.macro_f1.values)
                macro.append(f"{row.macro_f1.values[k]:.4f}" if row is not None and ok else "-")
            secs = [r.bc_seconds, r.ppo_seconds, r.ppo_steps_per_second, r.episode_seconds]
            cells = ["-" if v is None else f"{v:.0f}" for v in secs] + macro
            lines.append(f"| {r.seed} | " + " | ".join(cells) + " |")
    if agent is not None and agent.tradeoff:
        lines += [
            "",
            f"## Segmentation trade-off (training essays; the run cut "
            f"{agent.segments_per_essay:.1f} segments per essay)",
            "",
            "| punctuation cuts | start threshold | segments/essay | segments/element | "
            "oracle macro F1 |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {t.punctuation} | {t.start_threshold:.2f} | {t.segments_per_essay:.1f} | "
            f"{t.segments_per_element:.2f} | {t.oracle_macro_f1:.4f} |"
            for t in agent.tradeoff
        ]
    lines += _ner_rl_section(lay)
    plots = write_plots(lay, agent, table.rows)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    atomic_write_text(lay.report, "\n".join(lines) + "\n")
    return lay.report


def _ner_rl_section(lay: RunLayout) -> list[str]:
    """The tagger's RL phase (step ner_rl): each arm's training time and updates per fold, the
    cross-entropy tagger on the same essays, and the training curves."""
    metrics = read_json(lay.ner / "rl" / "metrics.json", None)
    if not isinstance(metrics, dict):
        return []
    lines = [
        "",
        "## The tagger's RL phase and its control (step ner_rl)",
        "",
        f"Tuned minima of the `-tuned` rows fitted on {metrics['fit_essays']:,} training essays' "
        f"probabilities of that tagger; every row scored on the "
        f"{metrics['heldout_essays']:,} held-out essays.",
        "",
        "| tagger | training s per fold | out-of-fold naive macro F1 |",
        "|---|---|---|",
    ]
    for arm, m in metrics["arms"].items():
        secs = ", ".join(f"{s:.0f}" for s in m["fold_seconds"])
        lines.append(f"| {arm} | {secs} | {m['naive_macro_f1']:.4f} |")
    ce = metrics["ce_same_essays"]
    lines += [
        "",
        f"The cross-entropy tagger with the same fit: naive {ce['naive']['macro_f1']['mean']:.4f}, "
        f"tuned {ce['tuned']['macro_f1']['mean']:.4f}.",
    ]
    if (lay.ner / "rl" / "curves.png").is_file():
        lines += ["", "![ner-rl curves](ner/rl/curves.png)"]
    return lines


def write_plots(
    lay: RunLayout, agent: AgentResults | None, rows: Sequence[StageScores] = ()
) -> list[Path]:
    """Per-class F1 bars per stage, the segmentation trade-off, and the agents' curves."""
    # matplotlib: only the report's plots need it
    import matplotlib

    matplotlib.use("Agg")
    # matplotlib: only the report's plots need it
    import matplotlib.pyplot as plt
    import numpy as np

    written: list[Path] = []
    rows = tuple(rows) or (agent.stages if agent is not None else ())
    if not rows:
        return written

    def save(fig: Any, name: str) -> None:
        path = lay.plot(name)
        atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(11, 4))
    cols = [*CLASSES, "macro"]
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(cols))
    for i, s in enumerate(rows):
        stats = [*(s.per_class[c] for c in CLASSES), s.macro_f1]
        errs = [st.sd or 0.0 for st in stats]
        ax.bar(x + i * width, [st.mean for st in stats], width, yerr=errs, label=s.stage)
    ax.set_xticks(x + width * (len(rows) - 1) / 2, [c.replace(" ", "\n") for c in cols])
    ax.set_ylabel("F1 (held-out essays)")
    ax.set_ylim(0, 1)
    ax.legend(ncol=3, fontsize=8)
    save(fig, "f1_per_class")

    if agent is not None and agent.tradeoff:
        fig, ax = plt.subplots(figsize=(5, 4))
        for punct in dict.fromkeys(t.punctuation for t in agent.tradeoff):
            rs = [t for t in agent.tradeoff if t.punctuation == punct]
            xs, ys = [t.segments_per_element for t in rs], [t.oracle_macro_f1 for t in rs]
            ax.plot(xs, ys, "o-", label=f"cuts after: {punct}")
            for t in rs:
                ax.annotate(f"{t.start_threshold:.2f}", (t.segments_per_element, t.oracle_macro_f1))
        ax.legend(fontsize=8)
        ax.set_xlabel("segments per true element")
        ax.set_ylabel("oracle macro F1")
        ax.set_title("segmentation: recall vs segments (labels: start threshold)")
        save(fig, "segmentation_tradeoff")

    curves = []
    for name in registry.trained_by("agent"):
        if lay.history(name).is_file():
            trained = TrainedPolicy.read(name, lay.policy(name), lay.history(name))
            if trained.history:
                curves.append((name, trained.history))
    if curves:
        fig, axes = plt.subplots(1, len(curves), figsize=(4.5 * len(curves), 3.5), squeeze=False)
        for ax, (name, hist) in zip(axes[0], curves, strict=True):
            axis_keys = ("epoch", "step", "essays", "update", "seconds")
            # Rows may differ (a first row before training starts): plot what all rows carry.
            keys = [k for k in hist[-1] if k not in axis_keys and all(k in h for h in hist)]
            xkey = next((k for k in axis_keys if all(k in h for h in hist)), None)
            xs = [h[xkey] for h in hist] if xkey else list(range(len(hist)))
            for k in keys:
                ax.plot(xs, [h[k] for h in hist], label=k)
            ax.set_title(name)
            ax.set_xlabel(xkey or "evaluation")
            ax.legend(fontsize=7)
        save(fig, "training_curves")
    return written


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch  # the report names the torch build and the GPU; only a run writes it

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}"
