"""Make a run's export the model that ships inside the package.

    python -m tools.ship_model --model runs/reference

writes src/discourse_rl/shipped/model.zip (every trained stage, float16 weights, the labels of
the sample's test essays recorded in it) and src/discourse_rl/shipped/MODEL.md (its card, to read
without unpacking). When `--check-data` names the run's data folder, it first records each
stage's recall per type on the run's held-out essays (RUN/heldout_recall.json, packed with the
model: the page's "not found" lines quote it), and afterwards checks that the run folder and the
packed model label those essays the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from discourse_rl.app.export import export_model
from discourse_rl.app.labeller import Labeller
from discourse_rl.app.model_file import SHIPPED
from discourse_rl.core import metric
from discourse_rl.core.common import DiscourseRLError, atomic_write_text
from discourse_rl.core.data import (
    CLASS_INDEX,
    CLASSES,
    load_corpus,
    load_word_probs,
    spans_to_frame,
)
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import heldout_score, read_split
from discourse_rl.decoders import registry

LIMIT_MB = 30.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="the run folder to ship")
    p.add_argument("--stage", default=None, help="the default stage (default: the run's best)")
    p.add_argument("--note", default="", help="a paragraph for the top of the model card")
    p.add_argument("--check-data", type=Path, help="the run's data folder: check packed labels")
    args = p.parse_args(argv)
    try:
        if args.check_data is not None:
            record_recall(args.model, args.check_data)
        out = export_model(args.model, SHIPPED, args.stage, every_stage=True, note=args.note)
    except DiscourseRLError as exc:
        print(f"ship_model: {exc}", file=sys.stderr)
        return 2
    with zipfile.ZipFile(out) as zf:
        (out.parent / "MODEL.md").write_bytes(zf.read("MODEL.md"))
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.2f} MB) and {out.parent / 'MODEL.md'}")
    if size > LIMIT_MB:
        print(f"ship_model: {out} is over {LIMIT_MB:.0f} MB", file=sys.stderr)
        return 2
    if args.check_data is not None:
        compare(args.model, out, args.check_data)
    return 0


def record_recall(run: Path, data: Path) -> None:
    """Per stage and type, the share of the held-out essays' true elements the stage's saved
    model finds, from the out-of-fold tagger probabilities the held-out rows were scored with
    (the run's results keep F1 only). Written to RUN/heldout_recall.json."""
    lay = RunLayout(run)
    ids = read_split(lay.split).heldout
    corpus = load_corpus(data, ids=ids)
    oof = load_word_probs(lay.oof)
    probs = {k: oof[k] for k in ids if k in oof}
    stages: dict[str, dict[str, float]] = {}
    for name in registry.offered(run):
        spans = registry.get(name).load(run).predict(probs, corpus.essays)
        score = metric.score(
            _frame([(k, *sp) for k, found in spans.items() for sp in found]), corpus.elements
        )
        stages[name] = {
            c: score.per_class[c].tp / max(score.per_class[c].tp + score.per_class[c].fn, 1)
            for c in CLASSES
        }
        shown = " ".join(f"{c.split()[0]} {r:.2f}" for c, r in stages[name].items())
        print(f"{name:16s} held-out macro F1 {score.macro_f1:.4f}; recall {shown}")
    text = json.dumps({"essays": len(probs), "stages": stages}, indent=1)
    atomic_write_text(lay.heldout_recall, text + "\n")


def _frame(rows: list[tuple[str, int, int, int]]) -> Any:
    """(essay id, class index, word_start, word_end) rows as the metric's span frame."""
    return spans_to_frame(*zip(*rows, strict=True)) if rows else spans_to_frame([], [], [], [])


def compare(run: Path, packed: Path, data: Path) -> None:
    """Every stage's labels of the run's held-out essays, from the run folder and from the
    packed (float16) model: how many essays get identical labels, and each one's macro F1.
    A fidelity check, not a score: the deployed tagger averages the fold models, and one of
    them trained on each of these essays (the honest held-out rows use out-of-fold
    probabilities)."""
    ids = read_split(RunLayout(run).split).heldout
    corpus = load_corpus(data, ids=ids)
    gold = corpus.elements
    by = {}
    for name, model in (("run folder", run), ("packed", packed)):
        labeller = Labeller.load(model)
        by[name] = labeller.label_essays(corpus.essays, labeller.stages)
    for stage in by["run folder"]:
        a, b = by["run folder"][stage], by["packed"][stage]
        same = sum(
            [(e.type, e.word_start, e.word_end) for e in a[k]]
            == [(e.type, e.word_start, e.word_end) for e in b[k]]
            for k in a
        )
        f1 = []
        for labels in (a, b):
            rows = [
                (k, CLASS_INDEX[e.type], e.word_start, e.word_end)
                for k in labels
                for e in labels[k]
            ]
            f1.append(heldout_score(_frame(rows), gold).macro_f1)
        print(
            f"{stage:16s} identical labels {same}/{len(a)} essays; macro F1 (fidelity, not "
            f"a score) run folder {f1[0]:.4f}, packed {f1[1]:.4f} ({f1[1] - f1[0]:+.4f})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
