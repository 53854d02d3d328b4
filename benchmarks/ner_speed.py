"""Speed of the NER stage: encoder training and inference tokens/s (fp32 and bf16), and the wall
time to predict a batch of essays with a trained run.

    .venv/bin/python -m benchmarks.ner_speed                  # default backbone, ~2 minutes
    .venv/bin/python -m benchmarks.ner_speed --threads 1      # when other jobs share the cores
    .venv/bin/python -m benchmarks.ner_speed --predict-run runs/reference \\
        --data ../shared/data/feedback-prize-2021 --predict-essays 1500 [--predict-only]
    .venv/bin/python -m benchmarks.ner_speed --batch 1 --seq 64 --steps 1 --json   # seconds
    .venv/bin/python -m benchmarks.ner_speed --freeze-layers 3 --hidden-dropout 0 \
        --background nice19 --json      # idle, then beside a busy `nice -n 19` process

Training tokens/s is one fine-tuning step (forward, backward, AdamW) of encoder + head on
windows of `--seq` sub-tokens, with the encoder dropout of `NerConfig` (attention dropout 0 lets
PyTorch use its fused attention kernel; `--attention-dropout 0.1` shows the unfused cost) and
`--freeze-layers` lower layers frozen; inference is the encoder's forward pass (autocast; the
`bf16 w.` row: bf16 weights without autocast, as prediction runs it; `int8 w.`: the encoder's
linear layers dynamically quantised, `ner.infer_dtype = "int8"`). With `--freeze-layers`, the
`cached` row is a training step of `ner.cache_frozen`: upper layers + head from cached states.

`--background nice19|nice0|torch19` measures one training row (bf16; `--cache-frozen` for the cached
step) and one inference row (`--infer-dtype`) idle, then again beside one busy single-threaded
process that it starts at that niceness and always stops (benchmarks/background.py); `--json`
gives `{"idle": {"train_tokens_per_s", "infer_tokens_per_s"}, "background": {...},
"background_kind": ...}` and the slowdowns. Those two rows are measured the way the package
uses the cores: `--processes` single-thread processes at once, their tokens/s summed (default:
one per `--threads`, as the NER stage trains its folds side by side and shares a large
prediction); `--processes 1` measures this one process with `--threads` threads. The uptime load
average is printed because shared cores make every figure here pessimistic.
"""

from __future__ import annotations

import argparse
import importlib
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.background import KINDS, busy_background, cpu_seconds
from benchmarks.common import require, run_benchmark
from discourse_rl.core.common import DiscourseRLError, torch_threads
from discourse_rl.core.data import NUM_LABELS, load_corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.launch.workers import Job, run_jobs
from discourse_rl.ner import NerConfig, NerPredictor
from discourse_rl.ner.backbone import freeze_lower, load_encoder, resolve_backbone
from discourse_rl.ner.config import INFER_DTYPES, PREDICT_WINDOWS
from discourse_rl.ner.frozen_states import UpperModel, layer_range
from discourse_rl.ner.inference import (
    autocast,
    bf16_available,
    bf16_encoder_copy,
    for_inference,
    int8_encoder_copy,
)
from discourse_rl.ner.model import NerModel


def tokens_per_second(
    model: NerModel,
    batch: int,
    seq: int,
    steps: int,
    bf16: bool,
    train: bool,
    cached_depth: int = 0,
) -> float:
    """Tokens/s of `steps` training steps (or encoder forward passes) after one warm-up step.
    `cached_depth` > 0: train as `ner.cache_frozen` does, from the states after that many
    layers (computed once, outside the timing)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq), generator=gen)
    mask = torch.ones_like(ids, dtype=torch.bool)
    words = seq * 3 // 4
    token_word = torch.clamp(torch.arange(seq) * words // seq, max=words - 1).expand(batch, -1)
    inputs = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_word": token_word.contiguous(),
        "word_features": torch.zeros(batch, words, 6),
        "word_count": torch.full((batch,), words),
        "labels": torch.randint(0, NUM_LABELS, (batch, words), generator=gen),
    }
    device = torch.device("cpu")
    step_model: torch.nn.Module = model
    if cached_depth:
        with layer_range(model, 0, cached_depth), torch.inference_mode(), autocast(device, bf16):
            hidden = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        inputs["hidden"] = hidden.to(torch.bfloat16 if bf16 else torch.float32).float()
        step_model = UpperModel(model, cached_depth)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for _ in range(steps + 1):  # the first step warms up kernels and is not counted
        t0 = time.perf_counter()
        if train:
            step_model.train()
            with autocast(device, bf16):
                loss = step_model(**inputs)["loss"]
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            opt.zero_grad()
        else:
            model.eval()
            with torch.inference_mode(), autocast(device, bf16):
                model.encoder(input_ids=ids, attention_mask=mask)
        times.append(time.perf_counter() - t0)
    return batch * seq * steps / sum(times[1:])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backbone", default="", help="HF name or folder (default: MiniLM)")
    ap.add_argument("--batch", type=int, default=8, help="windows per step")
    ap.add_argument("--seq", type=int, default=512, help="sub-tokens per window")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    ap.add_argument("--freeze-layers", type=int, default=0, help="frozen lower encoder layers")
    ap.add_argument("--attention-dropout", type=float, default=NerConfig.attention_dropout)
    ap.add_argument("--hidden-dropout", type=float, default=NerConfig.hidden_dropout)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--predict-run", type=Path, default=None, help="trained run to time")
    ap.add_argument("--data", type=Path, default=None, help="essays for --predict-run")
    ap.add_argument("--predict-essays", type=int, default=1500, help="essays to predict")
    ap.add_argument("--predict-only", action="store_true", help="skip the tokens/s table")
    ap.add_argument(
        "--predict-windows",
        choices=PREDICT_WINDOWS,
        default=None,
        help="--predict-run: ner.predict_windows (default: the run's own)",
    )
    ap.add_argument(
        "--background",
        choices=sorted(KINDS),
        default=None,
        help="measure training (bf16) and inference (--infer-dtype) tokens/s idle, then beside "
        "one busy single-threaded process at nice 19 or 0 (started and stopped here)",
    )
    ap.add_argument(
        "--infer-dtype",
        choices=INFER_DTYPES,
        default="bf16",
        help="--background's inference row: as prediction runs with ner.infer_dtype",
    )
    ap.add_argument(
        "--cache-frozen",
        action="store_true",
        help="--background's training row: ner.cache_frozen (upper layers + head from states "
        "cached after --freeze-layers layers)",
    )
    ap.add_argument(
        "--processes",
        type=int,
        default=0,
        help="--background: single-thread processes measuring at once, rates summed (0 = one "
        "per --threads, as the NER stage runs; 1 = this process with --threads threads)",
    )
    run_benchmark(ap, measure, argv)


def token_rates(args: argparse.Namespace) -> dict[str, float]:
    """Training and inference tokens/s of a fresh encoder + head, fp32 and bf16."""
    out: dict[str, float] = {}
    model = fresh_model(args)
    print(
        f"attention dropout {args.attention_dropout}, hidden dropout {args.hidden_dropout}, "
        f"frozen layers {args.freeze_layers}"
    )
    print(f"{'precision':<10}{'train tok/s':>14}{'infer tok/s':>14}")
    for name, bf16 in (("fp32", False), ("bf16", True)):
        train = tokens_per_second(model, args.batch, args.seq, args.steps, bf16, True)
        infer = tokens_per_second(model, args.batch * 2, args.seq, args.steps, bf16, False)
        print(f"{name:<10}{train:>14,.0f}{infer:>14,.0f}", flush=True)
        out[f"{name}_train_tokens_per_s"], out[f"{name}_infer_tokens_per_s"] = train, infer
    if bf16_available(torch.device("cpu")):
        # What prediction runs: the encoder's weights in bf16, no autocast.
        fast = bf16_encoder_copy(model)
        infer = tokens_per_second(fast, args.batch * 2, args.seq, args.steps, False, False)
        print(f"{'bf16 w.':<10}{'':>14}{infer:>14,.0f}", flush=True)
        out["bf16_weights_infer_tokens_per_s"] = infer
    # What prediction runs with ner.infer_dtype = "int8".
    fast = int8_encoder_copy(model)
    infer = tokens_per_second(fast, args.batch * 2, args.seq, args.steps, False, False)
    print(f"{'int8 w.':<10}{'':>14}{infer:>14,.0f}", flush=True)
    out["int8_weights_infer_tokens_per_s"] = infer
    if args.freeze_layers > 0:
        bf16 = bf16_available(torch.device("cpu"))
        train = tokens_per_second(
            model, args.batch, args.seq, args.steps, bf16, True, args.freeze_layers
        )
        print(f"{'cached':<10}{train:>14,.0f}{'':>14}  (ner.cache_frozen)", flush=True)
        out["cached_frozen_train_tokens_per_s"] = train
    return out


def fresh_model(args: argparse.Namespace) -> NerModel:
    torch.manual_seed(0)
    encoder = load_encoder(
        resolve_backbone(args.backbone), args.attention_dropout, args.hidden_dropout
    )
    model = NerModel(encoder, NerConfig())
    freeze_lower(model, args.freeze_layers)
    return model


def pair_rates(
    args: argparse.Namespace,
    model: NerModel,
    ready: NerModel,
    wait: Callable[[str], None] | None = None,
) -> dict[str, float]:
    """Training tokens/s (bf16 where available, as the reference trains) and inference tokens/s
    of the prediction copy `ready`; `wait(phase)` holds each phase until every sibling is ready."""
    bf16 = bf16_available(torch.device("cpu"))
    depth = args.freeze_layers if args.cache_frozen else 0
    if wait is not None:
        wait("train")
    train = tokens_per_second(model, args.batch, args.seq, args.steps, bf16, True, depth)
    if wait is not None:
        wait("infer")
    infer = tokens_per_second(ready, args.batch * 2, args.seq, args.steps, False, False)
    return {"train_tokens_per_s": train, "infer_tokens_per_s": infer}


def sibling_rates(args: argparse.Namespace, folder: Path, siblings: int) -> dict[str, float]:
    """One sibling's rates, run as a `workers` job: a single-thread child process."""

    def wait(phase: str) -> None:
        # A barrier through files: siblings load at different speeds, and the rates only
        # mean "side by side" if every sibling starts each phase together.
        (folder / f"{phase}-{os.getpid()}").touch()
        end = time.monotonic() + 300
        while len(list(folder.glob(f"{phase}-*"))) < siblings:
            if time.monotonic() > end:
                raise DiscourseRLError(f"ner_speed: siblings never reached {phase}")
            time.sleep(0.02)

    model = fresh_model(args)
    ready = for_inference(model, NerConfig(infer_dtype=args.infer_dtype), torch.device("cpu"))
    return pair_rates(args, model, ready, wait)


def side_by_side(args: argparse.Namespace, processes: int) -> dict[str, float]:
    """Summed rates of `processes` single-thread child processes measuring at once, started by
    the package's own launcher (as the fold processes are)."""
    # By its module's name: run as `python -m`, this module is `__main__`, which a child
    # (itself `discourse_rl.launch.workers` there) cannot find the function in.
    function = importlib.import_module("benchmarks.ner_speed").sibling_rates
    with tempfile.TemporaryDirectory(prefix="ner-speed-") as tmp:
        jobs = [
            Job(f"measure {k + 1}/{processes}", function, (args, Path(tmp), processes))
            for k in range(processes)
        ]
        rates = run_jobs(jobs, processes, 1)
    return {k: sum(r[k] for r in rates) for k in rates[0]}


def layout_rates(args: argparse.Namespace, processes: int, model: Any, ready: Any) -> Any:
    """The two rates measured the way `processes` asks, printed."""
    rates = pair_rates(args, model, ready) if processes == 1 else side_by_side(args, processes)
    train, infer = rates["train_tokens_per_s"], rates["infer_tokens_per_s"]
    print(f"train {train:,.0f} tokens/s, infer {infer:,.0f} tokens/s", flush=True)
    return rates


def background_rates(args: argparse.Namespace) -> dict[str, Any]:
    """The same two rates idle and beside one busy process (`--background`)."""
    if args.cache_frozen and args.freeze_layers <= 0:
        raise DiscourseRLError("--cache-frozen needs --freeze-layers > 0")
    threads = torch.get_num_threads()
    processes = args.processes or (threads if threads >= 2 else 1)
    model = ready = None
    if processes == 1:
        model = fresh_model(args)
        ready = for_inference(model, NerConfig(infer_dtype=args.infer_dtype), torch.device("cpu"))
    how = f"{processes} single-thread processes" if processes > 1 else f"{threads} threads"
    print(f"idle, {how} (load average {os.getloadavg()})", flush=True)
    idle = layout_rates(args, processes, model, ready)
    with busy_background(args.background) as busy:
        time.sleep(1.0)  # let the busy loop start before timing
        print(f"beside one busy process, {args.background}", flush=True)
        t0, cpu0 = time.perf_counter(), cpu_seconds(busy)
        loaded = layout_rates(args, processes, model, ready)
        wall, cpu1 = time.perf_counter() - t0, cpu_seconds(busy)
    # The share of one core the busy process got meanwhile: near 0 at nice 19 on busy cores.
    busy_share = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / wall
    slower = {k: idle[k] / loaded[k] for k in idle}
    print(
        f"slowdown: train {slower['train_tokens_per_s']:.2f}x, "
        f"infer {slower['infer_tokens_per_s']:.2f}x"
    )
    return {
        "idle": idle,
        "background": loaded,
        "background_kind": args.background,
        "processes": processes,
        "background_cpu_share": busy_share,
        "slowdown": slower,
        "infer_dtype": args.infer_dtype,
        "cache_frozen": args.cache_frozen,
        "freeze_layers": args.freeze_layers,
        "hidden_dropout": args.hidden_dropout,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    if args.predict_run is not None:
        # Fail before minutes of measuring, not after.
        require(
            RunLayout(args.predict_run).ner_config, "missing: --predict-run needs a trained run"
        )
    out: dict[str, Any] = {"benchmark": "ner_speed", "load_before": os.getloadavg()}
    with torch_threads(args.threads):
        out["threads"] = torch.get_num_threads()
        print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()}")
        if args.background is not None:
            out.update(background_rates(args))
        elif not args.predict_only:
            out.update(token_rates(args))
        if args.predict_run is not None:
            corpus = load_corpus(args.data)
            ids = sorted(corpus.essays)[: args.predict_essays]
            essays = {i: corpus.essays[i] for i in ids}
            t0 = time.perf_counter()
            predictor = NerPredictor.load(args.predict_run, threads=args.threads)
            if args.predict_windows:
                cfg = replace(predictor.cfg, predict_windows=args.predict_windows)
                predictor = replace(predictor, cfg=cfg)
            probs = predictor.predict(essays)
            dt = time.perf_counter() - t0
            n_words = sum(p.shape[0] for p in probs.values())
            print(f"predicted {len(essays)} essays ({n_words:,} words) in {dt:.1f} s")
            out.update(predict_essays=len(essays), predict_words=n_words, predict_s=dt)
            out["predict_windows"] = predictor.cfg.predict_windows
        print(f"load average after {os.getloadavg()}")
    out["load_after"] = os.getloadavg()
    return out


if __name__ == "__main__":
    main()
