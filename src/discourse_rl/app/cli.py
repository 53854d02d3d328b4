"""The `discourse-rl` command: a thin layer over importable functions.

Heavy libraries (pandas, torch, transformers) are imported inside the handlers so that `--help`
stays fast. Every `DiscourseRLError` becomes one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from discourse_rl import __version__
from discourse_rl.app.model_file import SHIPPED
from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders import registry

if TYPE_CHECKING:
    from discourse_rl.app.shards import Shard

Handler = Callable[[argparse.Namespace], int]


TIMES = (
    "Times measured on 2 CPU cores shared with other jobs, no GPU: the demo run 7 min 21 s\n"
    "(ner 93 s, gbdt 25 s, agent 303 s); the reference's ner step 64 min\n"
    "(configs/reference.toml). `discourse-rl info --model RUN` shows each step's recorded\n"
    "wall time. Progress goes to stderr: a bar on a terminal, a line every 30 s in a log file."
)


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


@dataclass(frozen=True)
class _Command:
    """A sub-command: its handler (`_cmd_NAME`), the function that adds its options, and its
    text (the one-line help, a blank line, then the examples and notes of the epilog)."""

    handler: Handler
    options: Callable[[argparse.ArgumentParser], None]
    text: str

    @property
    def name(self) -> str:
        return self.handler.__name__.removeprefix("_cmd_").replace("_", "-")

    def add(self, sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
        """The sub-command laid out as all of them are: one-line help, then examples in the
        epilog, then its options."""
        help, _, examples = self.text.partition("\n\n")
        p: argparse.ArgumentParser = sub.add_parser(
            self.name, help=help, formatter_class=_formatter, epilog="examples:\n" + examples
        )
        p.set_defaults(handler=self.handler)
        self.options(p)


def _command(
    options: Callable[[argparse.ArgumentParser], None], text: str
) -> Callable[[Handler], _Command]:
    """Makes a handler a sub-command with these options and this text (see `_Command`)."""

    def command(handler: Handler) -> _Command:
        return _Command(handler, options, text)

    return command


# Options several commands share, under one spelling and one help text: `--model` wherever a
# trained run is read (a run folder or an exported .zip), `--out` wherever one is written.
_SHARED: dict[str, tuple[str, dict[str, Any]]] = {
    "data": (
        "--data",
        {"type": Path, "default": None, "help": "data folder (default: embedded sample)"},
    ),
    "json": ("--json", {"action": "store_true", "help": "print machine-readable JSON"}),
    "run-out": (
        "--out",
        {"type": Path, "default": Path("runs/demo"), "help": "run folder to write (runs/demo)"},
    ),
    "wait": (
        "--wait",
        {
            "action": "store_true",
            "help": "another command is writing the run folder: wait for it instead of stopping",
        },
    ),
    "model": (
        "--model",
        {
            "type": Path,
            "default": SHIPPED,
            "help": "run folder or model .zip (default: the shipped reference model)",
        },
    ),
    # each command says which of the config's tables it reads and where it looks without one
    "config": ("--config", {"type": Path, "default": None}),
}


def _options(p: argparse.ArgumentParser, *names: str) -> None:
    for name in names:
        _option(p, name)


def _option(p: argparse.ArgumentParser, name: str, **changes: Any) -> None:
    """One shared option, with `changes` to its settings (its help text, whether required)."""
    flag, kwargs = _SHARED[name]
    p.add_argument(flag, **{**kwargs, **changes})


def _stage_option(
    p: argparse.ArgumentParser,
    *more: str,
    help: str = "default: the run's best",
    renamed: bool = True,
) -> None:
    """--stage: one of the registered stages (or one of `more`); `renamed`: an old stage name
    is refused with its new one."""
    checked: dict[str, Any] = {"type": _stage_name} if renamed else {}
    p.add_argument(
        "--stage", choices=(*registry.names(), *more), **checked, default=None, help=help
    )


def _print_report(run_dir: Path, note: str = "") -> None:
    """The run's results table (RUN/results.md), then where it is."""
    report = RunLayout(run_dir).report
    print(report.read_text(encoding="utf-8"), end="")
    print(f"wrote {report}{note}")


# ---------------------------------------------------------------------------------------------
# score


def _add_score(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pred", required=True, type=Path, help="csv with id,class,predictionstring")
    p.add_argument(
        "--gt", required=True, type=Path, help="csv with id,discourse_type,predictionstring"
    )
    _options(p, "json")


def _read_csv(path: Path, what: str, columns: Sequence[str]) -> object:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.core.data import read_table

    return read_table(path, columns, f"{what} file not found")


@_command(
    _add_score,
    """score a submission against ground truth (competition metric, one-to-one)

  discourse-rl score --pred submission.csv --gt train.csv
  discourse-rl score --pred submission.csv --gt train.csv --json""",
)
def _cmd_score(args: argparse.Namespace) -> int:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.core import metric

    pred = _read_csv(args.pred, "prediction", ("id", "class", "predictionstring"))
    gt = _read_csv(args.gt, "ground-truth", ("id", "discourse_type", "predictionstring"))
    try:
        result = metric.score(pred, gt)  # type: ignore[arg-type]
    except DiscourseRLError as exc:
        raise DiscourseRLError(f"{args.pred} / {args.gt}: {exc}") from None
    gt_ids, pred_ids = set(gt["id"]), set(pred["id"])  # type: ignore[index]
    if unpredicted := len(gt_ids - pred_ids):
        _warn(
            f"{unpredicted:,} of the {len(gt_ids):,} ground-truth essays have no prediction in "
            f"{args.pred} (all their elements count as missed)"
        )
    if unknown := len(pred_ids - gt_ids):
        _warn(
            f"{unknown:,} essays in {args.pred} are not in {args.gt} "
            "(all their spans count as false positives)"
        )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(format_score_table(result))
    return 0


def _warn(message: str) -> None:
    print(f"discourse-rl: warning: {message}", file=sys.stderr)


def format_score_table(result: object) -> str:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.core.metric import Score

    assert isinstance(result, Score)
    lines = [f"{'class':<22}{'F1':>8}{'TP':>8}{'FP':>8}{'FN':>8}"]
    for name, s in result.per_class.items():
        f1 = "-" if s.f1 != s.f1 else f"{s.f1:.4f}"
        lines.append(f"{name:<22}{f1:>8}{s.tp:>8}{s.fp:>8}{s.fn:>8}")
    lines.append(f"{'macro F1':<22}{result.macro_f1:>8.4f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# data-report


def _add_data_report(p: argparse.ArgumentParser) -> None:
    _options(p, "data", "json")


@_command(
    _add_data_report,
    """summarise a Kaggle-layout data folder (default: the embedded sample)

  discourse-rl data-report
  discourse-rl data-report --data ../shared/data/feedback-prize-2021""",
)
def _cmd_data_report(args: argparse.Namespace) -> int:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.run.report import data_report, format_data_report

    report = data_report(args.data)
    print(json.dumps(report, indent=2) if args.json else format_data_report(report))
    return 0


# ---------------------------------------------------------------------------------------------
# run


def _add_run(p: argparse.ArgumentParser) -> None:
    _options(p, "data", "run-out")
    _option(p, "config", help="run config TOML (default: the demo config)")
    _options(p, "wait")


@_command(
    _add_run,
    f"""the main job: train every stage and write the results table, plots and models

  discourse-rl run          # embedded sample, demo config, runs/demo
  discourse-rl run --data ../shared/data/feedback-prize-2021 \\
      --out runs/reference --config configs/reference.toml
{TIMES}
Running the same command again reuses every stage whose config and inputs are
unchanged; a changed config re-runs that stage and the ones after it; a changed
runtime setting (threads, fold_workers, torch_threads, progress_bar, save_every,
encode_tokens) re-runs nothing.""",
)
def _cmd_run(args: argparse.Namespace) -> int:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.run.pipeline import run_pipeline

    summary = run_pipeline(args.data, args.out, args.config)
    _print_report(summary.run_dir, f" (stages run: {', '.join(summary.ran) or 'none'})")
    return 0


# ---------------------------------------------------------------------------------------------
# train-ner


def _add_train_ner(p: argparse.ArgumentParser) -> None:
    _options(p, "data", "run-out")
    _option(
        p,
        "config",
        help="run config TOML; its seed, [ner] and [decode] (default: RUN/config.toml, else demo)",
    )
    p.add_argument("--backbone", default=None, help="Hugging Face model name or folder")
    p.add_argument("--mode", choices=("frozen", "finetune"), default=None, help="training mode")
    p.add_argument("--seed", type=int, default=None, help="override the config's seed")
    _options(p, "wait")


@_command(
    _add_train_ner,
    f"""train the NER fold models; write out-of-fold word probabilities and thresholds

  discourse-rl train-ner --out runs/demo --config configs/demo.toml
  discourse-rl train-ner --data ../shared/data/feedback-prize-2021 \\
      --out runs/reference --config configs/reference.toml
  discourse-rl train-ner --out runs/gpu --mode finetune \\
      --backbone microsoft/deberta-v3-base                # a GPU job: hours on a CPU
{TIMES}
An interrupted run resumes when the same command is run again.""",
)
def _cmd_train_ner(args: argparse.Namespace) -> int:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.run.one_step import train_ner

    report = train_ner(
        args.out, args.data, args.config, seed=args.seed, backbone=args.backbone, mode=args.mode
    )
    for name, result in (("ner-naive", report.naive), ("ner-tuned", report.tuned_cross_fitted)):
        print(f"{name} (out of fold)")
        print(format_score_table(result))
    lay = RunLayout(args.out)
    print(f"wrote {lay.oof}, {lay.decode}, {lay.ner_metrics}, {lay.report}")
    return 0


# ---------------------------------------------------------------------------------------------
# predict


def _add_predict(p: argparse.ArgumentParser) -> None:
    _options(p, "model")
    p.add_argument("--essays", required=True, type=Path, help="folder of .txt essays, or one .txt")
    p.add_argument("--out", required=True, type=Path, help="file to write (a folder for all)")
    _stage_option(
        p, "all", help="which stage labels the essays (default: the run's best on held-out essays)"
    )
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv", help="output (csv)")
    p.add_argument(
        "--skip-bad",
        action="store_true",
        help="label the readable essays, list the unreadable ones on stderr, exit 1",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="label share I (from 0) of N of the essays into OUT.shard-I-of-N; the share that "
        "finds all N parts combines them into OUT (under torchrun: one share per process)",
    )


def _stage_name(name: str) -> str:
    registry.check_renamed(name)
    return name


@_command(
    _add_predict,
    """label new essays with a trained run; write a Kaggle submission csv or jsonl

  discourse-rl predict --model runs/demo --essays essays/ --out submission.csv
  discourse-rl predict --model runs/reference --essays one_essay.txt --out sub.csv \\
      --stage ner-naive
  discourse-rl predict --model runs/demo --essays essays/ --out labels.jsonl \\
      --format jsonl
  discourse-rl predict --model runs/demo --essays essays/ --out by-stage/ --stage all
csv: id,class,predictionstring (the Kaggle format). jsonl: one essay per line,
{"schema_version", "id", "stage", "elements": [{"type", "word_start", "word_end",
"char_start", "char_end", "text", "confidence"}]}. --stage all writes
OUT/<stage>.<format> for every stage the run offers, from one pass of the tagger.""",
)
def _cmd_predict(args: argparse.Namespace) -> int:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.app.labeller import Labeller, elements_frame, elements_jsonl
    from discourse_rl.core.common import atomic_open, atomic_write_text
    from discourse_rl.core.data import read_essays
    from discourse_rl.launch import distributed

    every = args.stage == "all"
    # Checked before any essay is read or model loaded: a wrong --out is the cheapest mistake.
    if every and args.out.exists() and not args.out.is_dir():
        raise DiscourseRLError(f"{args.out}: is a file; --stage all writes a folder of files")
    if not every and args.out.is_dir():
        raise DiscourseRLError(f"{args.out}: is a folder; name the .{args.format} file to write")
    shard = _predict_shard(args.shard)
    folder = read_essays(args.essays, skip_bad=args.skip_bad)
    essays = folder.essays
    if shard is not None:
        essays = {i: essays[i] for i in distributed.shard(list(essays), shard.index, shard.count)}
    labeller = Labeller.load(args.model, None if every else args.stage)
    if args.stage is None:
        print(f"stage: {labeller.stage} (the run's best on held-out essays)")
    stages = labeller.stages if every else (labeller.stage,)
    labelled = labeller.label_essays(essays, stages, progress=True)
    if every:
        args.out.mkdir(parents=True, exist_ok=True)
    for stage, by_essay in labelled.items():
        final = args.out / f"{stage}.{args.format}" if every else args.out
        out = final if shard is None else shard.part(final)
        if args.format == "jsonl":
            atomic_write_text(out, elements_jsonl(by_essay, stage))
        else:
            with atomic_open(out, "w", encoding="utf-8", newline="") as fh:
                elements_frame(by_essay).to_csv(fh, index=False)
        n = sum(len(v) for v in by_essay.values())
        noun = "essay" if len(essays) == 1 else "essays"
        print(f"wrote {n} elements for {len(essays)} {noun} to {out}")
    if shard is not None:
        _combine_shards(args, shard, [*labelled])
    for skipped in folder.skipped:
        print(f"discourse-rl: skipped {skipped.reason}", file=sys.stderr)
    if folder.skipped:
        # The labels written are good, but the batch is not whole: a script must notice.
        print(f"discourse-rl: {len(folder.skipped)} essay(s) skipped", file=sys.stderr)
        return 1
    return 0


def _predict_shard(text: str | None) -> Shard | None:
    """The share of the essays this process labels: --shard I/N, else one per launcher process,
    else None (all of them)."""
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.app.shards import Shard
    from discourse_rl.launch import distributed

    if text is not None:
        if distributed.distributed():
            raise DiscourseRLError("--shard: not under torchrun (each process takes a share)")
        return Shard.parse(text)
    if distributed.distributed():
        return Shard(distributed.rank(), distributed.world_size())
    return None


def _combine_shards(args: argparse.Namespace, shard: Shard, stages: list[str]) -> None:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.app.shards import combine
    from discourse_rl.launch import distributed

    if distributed.distributed():
        distributed.barrier()
        if not distributed.is_main():
            return
    for stage in stages:
        final = args.out / f"{stage}.{args.format}" if args.stage == "all" else args.out
        if combine(final, shard, args.format):
            print(f"combined {shard.count} parts into {final}")


# ---------------------------------------------------------------------------------------------
# label


def _add_label(p: argparse.ArgumentParser) -> None:
    p.add_argument("essay", type=Path, help="the essay: a UTF-8 .txt file or a Word .docx file")
    _options(p, "model")
    _stage_option(p)
    _options(p, "json")


@_command(
    _add_label,
    """show one essay in the terminal with its elements coloured, and what is missing

  discourse-rl label my_essay.txt                 # the model in runs/demo
  discourse-rl label my_essay.txt --model runs/reference --stage ner-tuned
  discourse-rl label my_essay.txt --json          # the elements and summary as JSON""",
)
def _cmd_label(args: argparse.Namespace) -> int:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.app.feedback import render_terminal, summarise
    from discourse_rl.app.labeller import Labeller
    from discourse_rl.core.data import read_essay

    if args.essay.suffix.lower() == ".docx":
        # only for a Word file
        from discourse_rl.app.docx import read_text_file

        text = read_text_file(args.essay)
    else:
        text = read_essay(args.essay).text
    labeller = Labeller.load(args.model, args.stage)
    elements = labeller.label(text)
    scores = labeller.scores.get(labeller.stage)
    per_type = scores.per_type if scores else {}
    summary = summarise(elements, per_type, scores.recall if scores else None)
    if args.json:
        # only for --json
        from discourse_rl.app.labeller import SCHEMA_VERSION

        blob = {
            "schema_version": SCHEMA_VERSION,
            "stage": labeller.stage,
            "elements": [el.to_json() for el in elements],
            "summary": summary.to_json(),
        }
        print(json.dumps(blob, indent=2, ensure_ascii=False))
    else:
        render_terminal(text, elements, summary, per_type, labeller.stage)
    return 0


# ---------------------------------------------------------------------------------------------
# serve


def _add_serve(p: argparse.ArgumentParser) -> None:
    _options(p, "model")
    _stage_option(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1: this machine)")
    p.add_argument("--port", type=int, default=8000, help="port (8000)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="needed for a --host other than 127.0.0.1/localhost: other computers may then "
        "connect, each API call with the access token printed at start (or DISCOURSE_RL_TOKEN)",
    )
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name the server answers to besides its own names (repeatable)",
    )
    p.add_argument(
        "--store",
        type=Path,
        default=None,
        help="the SQLite file where the page saves class sets when the teacher presses Save "
        "(~/.local/share/discourse-rl/class-sets.sqlite3)",
    )
    p.add_argument("--no-store", action="store_true", help="turn saving class sets off")
    p.add_argument(
        "--queue", type=int, default=32, help="requests that may wait to be labelled (32)"
    )


@_command(
    _add_serve,
    """a local web page (and JSON API) that labels pasted or uploaded essays

  discourse-rl serve --model runs/demo             # http://127.0.0.1:8000
  discourse-rl serve --model model.zip --port 8080
API: POST /api/label {"text": "..."} -> {"elements": [...], "summary": {...}};
POST /api/label-batch; GET /api/health; GET /api/info; GET /api/openapi.json.
Binds 127.0.0.1; another --host needs --allow-remote and then an access token.
Models trained on the PERSUADE corpus are CC BY-NC-SA 4.0: non-commercial use,
with attribution (see src/discourse_rl/sample/LICENSE.md).""",
)
def _cmd_serve(args: argparse.Namespace) -> int:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.app.serve import serve
    from discourse_rl.app.store import default_store

    store = None if args.no_store else (args.store or default_store())
    serve(
        args.model,
        args.stage,
        args.host,
        args.port,
        allow_remote=args.allow_remote,
        allowed_hosts=tuple(args.allowed_host),
        store=store,
        queue_limit=max(1, args.queue),
    )
    return 0


# ---------------------------------------------------------------------------------------------
# export


def _add_export(p: argparse.ArgumentParser) -> None:
    _options(p, "model")
    p.add_argument("--out", required=True, type=Path, help="the .zip to write")
    _stage_option(p, renamed=False)
    p.add_argument(
        "--every-stage",
        action="store_true",
        help="pack every trained stage (--stage is then the default one), as the shipped model",
    )
    _options(p, "wait")


@_command(
    _add_export,
    """pack what labelling needs from a run into one compact .zip

  discourse-rl export --model runs/demo --out demo-model.zip
  discourse-rl label essay.txt --model demo-model.zip
Fold weights in float16, without tensors equal to the installed backbone's; the
thresholds, the stage's policy, the run's held-out scores, licence and attribution.
Models trained on the PERSUADE corpus are CC BY-NC-SA 4.0 (non-commercial).""",
)
def _cmd_export(args: argparse.Namespace) -> int:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.app.export import export_model

    out = export_model(args.model, args.out, args.stage, every_stage=args.every_stage)
    size = out.stat().st_size
    print(f"wrote {out} ({size / 1e6:.2f} MB); licence CC BY-NC-SA 4.0, see MODEL.md inside")
    return 0


# ---------------------------------------------------------------------------------------------
# train-agent


def _add_train_agent(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        "--run",  # its name before one option named every run folder a command writes
        dest="out",
        type=Path,
        default=Path("runs/demo"),
        help="run folder to add the agent to (runs/demo)",
    )
    _options(p, "data")
    _option(p, "config", help="run config TOML (default: RUN/config.toml, else the demo config)")
    p.add_argument("--simulate", action="store_true", help="simulated word probabilities")
    p.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="agent seeds (default: agent_seeds)"
    )
    p.add_argument(
        "--max-essays", type=int, default=None, help="PPO learns from at most this many essays"
    )
    _options(p, "wait")


@_command(
    _add_train_agent,
    f"""cut segments, clone (BC) then fine-tune (PPO) the attention agent; score held out

  discourse-rl train-agent --out runs/demo                    # after train-ner
  discourse-rl train-agent --out runs/sim --simulate --max-essays 300
  discourse-rl train-agent --out runs/reference \\
      --data ../shared/data/feedback-prize-2021 --config configs/reference.toml \\
      --seeds 0 1 2
{TIMES}
Without --config: RUN/config.toml, else the demo config (configs/demo.toml).
Reads RUN/ner/oof.npz (out-of-fold word probabilities) unless --simulate is given.
Writes RUN/segments.npz, RUN/agent/ (bc/, ppo/, episode/, results.json), RUN/tb/,
and updates RUN/config.toml, RUN/stages.json and RUN/results.md as `run` would.""",
)
def _cmd_train_agent(args: argparse.Namespace) -> int:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.run.one_step import train_agent

    train_agent(
        args.out,
        args.data,
        args.config,
        seeds=args.seeds,
        max_essays=args.max_essays,
        simulate=args.simulate,
    )
    _print_report(args.out)
    return 0


# ---------------------------------------------------------------------------------------------
# info


def _add_info(p: argparse.ArgumentParser) -> None:
    _option(p, "model", required=False)
    p.add_argument(
        "--machine",
        action="store_true",
        help="this machine: CPU, flags that matter, measured rates, chosen precision",
    )
    _options(p, "json")


@_command(
    _add_info,
    """list the stages a trained run can predict with and their held-out scores

  discourse-rl info --model runs/demo
  discourse-rl info --model runs/reference --json
  discourse-rl info --machine      # this CPU, its probe's rates, the precision chosen
--json prints a list of rows with the keys stage, macro_f1, sd, seeds, n_heldout,
n_train, heldout, essay_f1, essay_jaccard, seconds, data, config, model.""",
)
def _cmd_info(args: argparse.Namespace) -> int:
    # loaded per command: `--help` stays free of numpy and torch
    from discourse_rl.app.info import format_info, info_json, run_info

    if args.machine:
        from discourse_rl.ner import precision

        m = precision.measured()
        choice = precision.choose(m.rates, int8_auto=precision.INT8_AUTO)
        report = precision.report_json(m, choice)
        print(json.dumps(report) if args.json else "\n".join(precision.report_lines(m, choice)))
        return 0
    info = run_info(args.model)
    print(json.dumps(info_json(info), indent=2) if args.json else format_info(info))
    return 0


# ---------------------------------------------------------------------------------------------


COMMANDS = (
    _cmd_run,
    _cmd_info,
    _cmd_score,
    _cmd_data_report,
    _cmd_train_ner,
    _cmd_train_agent,
    _cmd_predict,
    _cmd_label,
    _cmd_serve,
    _cmd_export,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="discourse-rl",
        description="Find and label the discourse elements of student essays "
        "(Feedback Prize 2021 / PERSUADE).",
        formatter_class=_formatter,
        epilog="Run 'discourse-rl COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        # Inside the try: an argument's own check may raise the one-line error too.
        args = parser.parse_args(argv)
        handler: Handler | None = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 0
        # The run folder lock: a light module, loaded for every command.
        from discourse_rl.run.lock import waiting

        with waiting(getattr(args, "wait", False)):
            status = handler(args)
        # Flushed here so that a closed pipe surfaces below, not at interpreter exit.
        sys.stdout.flush()
        return status
    except DiscourseRLError as exc:
        _error(str(exc))
        return 2
    except BrokenPipeError:
        # The reader went away (`discourse-rl score --json | head`): stop quietly, as a shell
        # tool does on SIGPIPE. Pointing stdout at /dev/null stops Python's exit-time flush
        # from failing again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (
        FileExistsError,
        FileNotFoundError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
    ) as exc:
        # A path the user named that is not what the command needs (`--out` naming a file).
        _error(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
        return 2
    except OSError as exc:
        # A full disk, a read-only folder, an I/O error: the path and the cause.
        from discourse_rl.core.faults import describe  # only on this error

        _error(describe(exc))
        return 2
    except KeyboardInterrupt:
        print("discourse-rl: interrupted", file=sys.stderr)
        return 130


def _error(message: str) -> None:
    # One line, whatever a library put in the message.
    line = re.sub(r"\s*[\r\n]+\s*", " ", message.strip())
    print(f"discourse-rl: error: {line}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
