"""What the benchmarks (and the studies in experiments/) share: paths, `--json`, one-line errors.

Benchmarks are run as modules from the repository root, e.g. `python -m benchmarks.metric`, so
that they import each other and the package without touching `sys.path`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from discourse_rl.app.model_file import SHIPPED
from discourse_rl.core.common import DiscourseRLError

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT / ".." / "shared" / "data" / "feedback-prize-2021"
"""The shared Kaggle-layout data beside a checkout (where the reference runs read it)."""


def parser(doc: str | None, *, model: bool = False) -> argparse.ArgumentParser:
    """A benchmark's argument parser, its docstring as the help; `model`: the `--model` of the
    benchmarks that label with a trained run (a run folder or an exported .zip)."""
    ap = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if model:
        ap.add_argument(
            "--model", type=Path, default=SHIPPED, help="run folder or .zip (the shipped model)"
        )
    return ap


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the results as one JSON line on stdout (the human lines go to stderr)",
    )


def run_benchmark(
    parser: argparse.ArgumentParser,
    measure: Callable[[argparse.Namespace], Mapping[str, Any]],
    argv: Sequence[str] | None,
) -> None:
    """The end of every benchmark's main(): add `--json`, parse `argv`, then `report` what
    `measure` returns."""
    add_json_flag(parser)
    args = parser.parse_args(argv)
    report(lambda: measure(args), args.json)


def require(path: Path, problem: str) -> Path:
    """`path` if it exists, else one clear line naming it and what is wrong."""
    if not path.exists():
        raise DiscourseRLError(f"{path}: {problem}")
    return path


def one_line_errors(main: Callable[[], None]) -> None:
    """Run `main`; bad input (a missing run folder or data) ends as one line, as in the CLI."""
    try:
        main()
    except DiscourseRLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def report(measure: Callable[[], Mapping[str, Any]], as_json: bool) -> None:
    """Run a measurement that prints human lines and returns its results.

    With `as_json`, everything it (or the library) prints goes to stderr and stdout gets exactly
    one JSON line, so that `... --json | tail -1` or a pipe into `jq` always works."""

    def run() -> None:
        if not as_json:
            measure()
            return
        with contextlib.redirect_stdout(sys.stderr):
            results = measure()
        print(json.dumps(_plain(results), allow_nan=False), flush=True)

    one_line_errors(run)


def _plain(value: Any) -> Any:
    """Strict JSON: NaN and infinities become null, numpy scalars Python ones, keys strings."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
