"""Make a run's export the model that ships inside the package.

    python -m tools.ship_model --model runs/reference

writes src/discourse_rl/shipped/model.zip (every trained stage, float16 weights, the labels of
the sample's test essays recorded in it) and src/discourse_rl/shipped/MODEL.md (its card, to read
without unpacking), then checks that the run folder and the packed model label the held-out
essays the same way when `--check-data` names the data folder.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

from discourse_rl.app.export import export_model
from discourse_rl.app.labeller import Labeller
from discourse_rl.app.model_file import SHIPPED
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASS_INDEX, load_corpus, spans_to_frame
from discourse_rl.core.layout import RunLayout
from discourse_rl.core.protocol import heldout_score, read_split

LIMIT_MB = 30.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="the run folder to ship")
    p.add_argument("--stage", default=None, help="the default stage (default: the run's best)")
    p.add_argument("--note", default="", help="a paragraph for the top of the model card")
    p.add_argument("--check-data", type=Path, help="the run's data folder: check packed labels")
    args = p.parse_args(argv)
    try:
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


def compare(run: Path, packed: Path, data: Path) -> None:
    """Every stage's labels of the run's held-out essays, from the run folder and from the
    packed (float16) model: how many essays get identical labels, and each one's macro F1."""
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
            pred = (
                spans_to_frame(*zip(*rows, strict=True)) if rows else spans_to_frame([], [], [], [])
            )
            f1.append(heldout_score(pred, gold).macro_f1)
        print(
            f"{stage:16s} identical labels {same}/{len(a)} essays; held-out macro F1 "
            f"run folder {f1[0]:.4f}, packed {f1[1]:.4f} ({f1[1] - f1[0]:+.4f})"
        )


if __name__ == "__main__":
    raise SystemExit(main())
