"""The `discourse-rl` command: a thin layer over importable functions.

Heavy libraries (pandas, torch, transformers) are imported inside the handlers so that `--help`
stays fast. Every `DiscourseRLError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Handler = Callable[[argparse.Namespace], int]


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


# ---------------------------------------------------------------------------------------------
# score


def _add_score(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "score",
        help="score a submission against ground truth (competition metric, one-to-one)",
        formatter_class=_formatter,
        epilog="examples:\n"
        "  discourse-rl score --pred submission.csv --gt train.csv\n"
        "  discourse-rl score --pred submission.csv --gt train.csv --json",
    )
    p.add_argument("--pred", required=True, type=Path, help="csv with id,class,predictionstring")
    p.add_argument(
        "--gt", required=True, type=Path, help="csv with id,discourse_type,predictionstring"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=_cmd_score)


def _read_csv(path: Path, what: str, columns: Sequence[str]) -> object:
    import pandas as pd

    from discourse_rl.common import DiscourseRLError

    if not path.is_file():
        raise DiscourseRLError(f"{path}: {what} file not found")
    try:
        df = pd.read_csv(path, dtype={"id": str, "predictionstring": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DiscourseRLError(f"{path}: unreadable csv ({exc})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DiscourseRLError(f"{path}: missing column(s) {', '.join(missing)}")
    return df


def _cmd_score(args: argparse.Namespace) -> int:
    from discourse_rl import metric
    from discourse_rl.common import DiscourseRLError

    pred = _read_csv(args.pred, "prediction", ("id", "class", "predictionstring"))
    gt = _read_csv(args.gt, "ground-truth", ("id", "discourse_type", "predictionstring"))
    try:
        result = metric.score(pred, gt)  # type: ignore[arg-type]
    except DiscourseRLError as exc:
        raise DiscourseRLError(f"{args.pred} / {args.gt}: {exc}") from None
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_score_table(result))
    return 0


def format_score_table(result: object) -> str:
    from discourse_rl.metric import Score

    assert isinstance(result, Score)
    lines = [f"{'class':<22}{'F1':>8}{'TP':>8}{'FP':>8}{'FN':>8}"]
    for name, s in result.per_class.items():
        f1 = "-" if s.f1 != s.f1 else f"{s.f1:.4f}"
        lines.append(f"{name:<22}{f1:>8}{s.tp:>8}{s.fp:>8}{s.fn:>8}")
    lines.append(f"{'macro F1':<22}{result.macro_f1:>8.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# data-report


def _add_data_report(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "data-report",
        help="summarise a Kaggle-layout data folder (default: the embedded sample)",
        formatter_class=_formatter,
        epilog="examples:\n"
        "  discourse-rl data-report\n"
        "  discourse-rl data-report --data ../shared/data/feedback-prize-2021",
    )
    p.add_argument("--data", type=Path, default=None, help="data folder (default: embedded sample)")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(handler=_cmd_data_report)


def _cmd_data_report(args: argparse.Namespace) -> int:
    from discourse_rl.report import data_report, format_data_report

    report = data_report(args.data)
    print(json.dumps(report, indent=2) if args.json else format_data_report(report))
    return 0


# ---------------------------------------------------------------------------------------------


COMMANDS = (_add_score, _add_data_report)


def build_parser() -> argparse.ArgumentParser:
    from discourse_rl import __version__

    parser = argparse.ArgumentParser(
        prog="discourse-rl",
        description="Find and label the discourse elements of student essays "
        "(Feedback Prize 2021 / PERSUADE).",
        formatter_class=_formatter,
        epilog="Run 'discourse-rl COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    from discourse_rl.common import DiscourseRLError

    try:
        return handler(args)
    except DiscourseRLError as exc:
        print(f"discourse-rl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("discourse-rl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
