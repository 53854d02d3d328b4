"""RUN/results.md and the PNG plots, from what the stages wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from discourse_rl.common import atomic_save, atomic_write_text
from discourse_rl.data import CLASSES, Corpus

SEED_TABLE = {"NER naive": 0.42, "BC": 0.39, "RL fine-tuning": 0.51}
STAGE_NAMES = {
    "ner_naive": "NER naive",
    "ner_tuned": "NER tuned",
    "bc": "BC",
    "rl": "RL (PPO)",
    "episode": "RL (episode trainer)",
    "oracle": "segment oracle",
}


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _fmt(mean: float, std: float | None = None) -> str:
    if mean != mean:
        return "-"
    return f"{mean:.3f}" if not std else f"{mean:.3f} ± {std:.3f}"


def write_report(run: Path, corpus: Corpus, machine: str) -> Path:
    ner = _read(run / "ner" / "metrics.json")
    agent = _read(run / "agent" / "results.json")
    stages = _read(run / "stages.json") or {}
    cols = [*CLASSES, "macro", "essay_f1", "essay_jaccard"]
    lines = [
        f"# Results of `{run}`",
        "",
        f"Data: {len(corpus.essays):,} essays, {len(corpus.elements):,} elements. "
        f"Machine: {machine}.",
        "",
    ]
    if agent is not None:
        n_seeds = len(agent.get("runs", [])) or 1
        lines += [
            f"## Held-out essays ({agent['heldout_essays']:,}; agent trained on "
            f"{agent['train_essays']:,})",
            "",
            f"Per-class F1 and macro F1 (competition metric, one-to-one matching); essay_f1 is "
            "the mean per-essay F-score (the RL reward), essay_jaccard the seed's per-essay "
            f"TP / (TP + FP + FN). Agent rows: mean ± sd over {n_seeds} seed(s).",
            "",
            "| stage | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for key, name in STAGE_NAMES.items():
            row = agent["summary"].get(key)
            if row is None:
                continue
            cells = [_fmt(row[c]["mean"], row[c].get("std")) if c in row else "-" for c in cols]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if ner is not None:
        lines += [
            "",
            f"## NER stage, out-of-fold over all {ner.get('essays', len(corpus.essays)):,} essays",
            "",
            "| decoding | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        for key, name in (
            ("naive", "naive (argmax)"),
            ("public_thresholds", "public thresholds"),
            ("tuned", "tuned (fitted on all folds)"),
            ("tuned_cross_fitted", "tuned (cross-fitted)"),
        ):
            if key in ner:
                s = ner[key]
                cells = [_fmt(s["per_class"][c]["f1"] or float("nan")) for c in CLASSES]
                lines.append(f"| {name} | " + " | ".join(cells) + f" | {s['macro_f1']:.3f} | | |")
    lines += [
        "",
        "## Reference points",
        "",
        "The seed's published table: "
        + ", ".join(f"{k} {v:.2f}" for k, v in SEED_TABLE.items())
        + ". Public anchors: a Longformer-base NER baseline scored about 0.62; the "
        "competition's winners about 0.74 with GPU ensembles of large models.",
        "",
        "## Wall time per stage",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v['seconds']:.0f} |" for k, v in stages.items()]
    if agent is not None and agent.get("runs"):
        lines += [
            "",
            "## Agent seeds (wall time on this machine, held-out macro F1)",
            "",
            "| seed | BC s | PPO s | PPO env steps/s | episode trainer s | BC | RL (PPO) | "
            "RL (episode trainer) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in agent["runs"]:
            cells = [
                f"{r.get(k, float('nan')):.0f}"
                for k in ("bc_seconds", "ppo_seconds", "steps_per_second", "episode_seconds")
            ] + [f"{r.get(k, float('nan')):.4f}" for k in ("bc", "rl", "episode")]
            lines.append(f"| {r['seed']} | " + " | ".join(cells) + " |")
    if agent is not None and agent.get("tradeoff"):
        lines += [
            "",
            "## Segmentation trade-off (training essays)",
            "",
            "| punctuation cuts | start threshold | segments/essay | segments/element | "
            "oracle macro F1 |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {t.get('punctuation', '-')} | {t['start_threshold']:.2f} | "
            f"{t['segments_per_essay']:.1f} | {t['segments_per_element']:.2f} | "
            f"{t['oracle_macro_f1']:.4f} |"
            for t in agent["tradeoff"]
        ]
    plots = write_plots(run, agent)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    path = run / "results.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def write_plots(run: Path, agent: dict[str, Any] | None) -> list[Path]:
    """Per-class F1 bars per stage, the segmentation trade-off, and the agents' curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written: list[Path] = []
    if agent is None:
        return written

    def save(fig: Any, name: str) -> None:
        path = run / name
        atomic_save(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))
        plt.close(fig)
        written.append(path)

    rows = [(STAGE_NAMES[k], agent["summary"][k]) for k in STAGE_NAMES if k in agent["summary"]]
    fig, ax = plt.subplots(figsize=(11, 4))
    cols = [*CLASSES, "macro"]
    width = 0.8 / max(len(rows), 1)
    x = np.arange(len(cols))
    for i, (name, row) in enumerate(rows):
        means = [row[c]["mean"] for c in cols]
        errs = [row[c].get("std", 0.0) for c in cols]
        ax.bar(x + i * width, means, width, yerr=errs, label=name)
    ax.set_xticks(x + width * (len(rows) - 1) / 2, [c.replace(" ", "\n") for c in cols])
    ax.set_ylabel("F1 (held-out essays)")
    ax.set_ylim(0, 1)
    ax.legend(ncol=3, fontsize=8)
    save(fig, "f1_per_class.png")

    if agent.get("tradeoff"):
        t = agent["tradeoff"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for punct in dict.fromkeys(r.get("punctuation", "-") for r in t):
            rs = [r for r in t if r.get("punctuation", "-") == punct]
            xs, ys = [r["segments_per_element"] for r in rs], [r["oracle_macro_f1"] for r in rs]
            ax.plot(xs, ys, "o-", label=f"cuts after: {punct}")
            for r in rs:
                ax.annotate(
                    f"{r['start_threshold']:.2f}", (r["segments_per_element"], r["oracle_macro_f1"])
                )
        ax.legend(fontsize=8)
        ax.set_xlabel("segments per true element")
        ax.set_ylabel("oracle macro F1")
        ax.set_title("segmentation: recall vs segments (labels: start threshold)")
        save(fig, "segmentation_tradeoff.png")

    curves = []
    for name, path in (
        ("BC", run / "agent" / "bc" / "history.json"),
        ("PPO", run / "agent" / "rl" / "history.json"),
        ("episode", run / "agent" / "episode" / "history.json"),
    ):
        hist = _read(path)
        if hist and hist.get("history"):
            curves.append((name, hist["history"]))
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
        save(fig, "training_curves.png")
    return written
