"""Which precision is fastest on this machine, measured on the whole backbone, against what
`bf16 = "auto"` chooses from its sub-second probe (`discourse_rl.ner.precision`).

    .venv/bin/python -m benchmarks.precision --json          # about 1 min on 2 idle cores
    .venv/bin/python -m benchmarks.precision --quick --json  # the probe's rates only (< 1 s)
    .venv/bin/python -m benchmarks.precision --refresh       # probe again (not the cache)

One JSON line: `{"cpu", "flags", "rates": {"fp32", "bf16", "int8"}, "chosen": {"train",
"infer"}, ...}`. Every rate is tokens/s on one core (one torch thread, as each fold process runs
on 2 cores), timed in the thread's own CPU time, the precisions taking turns for `--rounds`
rounds and each keeping its fastest round, so that other jobs on the cores slow them alike:

* `rates`: the backbone's forward pass (all-MiniLM-L6-v2 unless `--backbone`) over `--batch`
  windows of `--seq` sub-tokens, as prediction runs it: fp32 weights, bf16 weights, the linear
  layers dynamically quantised to int8.
* `train_rates`: a training step (forward, backward, AdamW) of backbone and NER head on
  `--train-batch` windows with `--freeze-layers` lower layers frozen, as the reference trains:
  fp32 and bf16 autocast.
* `chosen`: the probe's choice with `bf16 = "auto"` (`probe` holds its rates); `fastest`: the
  fastest here among the precisions auto may choose (int8 only where `int8_auto`: its quality
  is not known to hold); `chosen_share`: the chosen precision's rate over the fastest one's (the
  issue asks for at least 0.9).

`--quick` reports the probe's rates as `rates` and `train_rates` (nothing else is measured).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from benchmarks.common import parser, run_benchmark
from discourse_rl.core.common import torch_threads
from discourse_rl.core.data import NUM_LABELS
from discourse_rl.ner import NerConfig
from discourse_rl.ner import precision as precision
from discourse_rl.ner.backbone import freeze_lower, load_encoder, resolve_backbone
from discourse_rl.ner.inference import bf16_encoder_copy, int8_encoder_copy
from discourse_rl.ner.model import NerModel


def _inputs(batch: int, seq: int) -> dict[str, torch.Tensor]:
    """`batch` full windows of `seq` sub-tokens, 4 sub-tokens to 3 words, random labels."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (batch, seq), generator=gen)
    words = seq * 3 // 4
    token_word = torch.clamp(torch.arange(seq) * words // seq, max=words - 1)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids, dtype=torch.bool),
        "token_word": token_word.expand(batch, -1).contiguous(),
        "word_features": torch.zeros(batch, words, 6),
        "word_count": torch.full((batch,), words),
        "labels": torch.randint(0, NUM_LABELS, (batch, words), generator=gen),
    }


def measure_backbone(args: argparse.Namespace) -> tuple[dict[str, float], dict[str, float]]:
    """Forward tokens/s per inference precision, step tokens/s per training precision."""
    cfg = NerConfig(
        backbone=args.backbone,
        mode="finetune",
        head_hidden=64,
        word_conv=5,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        freeze_layers=args.freeze_layers,
    )
    torch.manual_seed(0)
    path = resolve_backbone(args.backbone)
    model = NerModel(load_encoder(path, 0.0, 0.0), cfg)
    forward = _inputs(args.batch, args.seq)
    step_inputs = _inputs(args.train_batch, args.seq)
    encoders = {
        "fp32": model.encoder.eval(),
        "bf16": bf16_encoder_copy(model.encoder),
        "int8": int8_encoder_copy(model.encoder),
    }
    trained = NerModel(load_encoder(path, 0.0, 0.0), cfg)
    trained.load_state_dict(model.state_dict())
    freeze_lower(trained, cfg.freeze_layers)
    opt = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-6)

    def infer(encoder: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                encoder(input_ids=forward["input_ids"], attention_mask=forward["attention_mask"])

        return run

    def step(bf16: bool) -> Callable[[], None]:
        def run() -> None:
            trained.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = trained(**step_inputs)["loss"]
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    calls: dict[tuple[str, str], Callable[[], None]] = {
        **{("infer", k): infer(e) for k, e in encoders.items()},
        ("train", "fp32"): step(False),
        ("train", "bf16"): step(True),
    }
    tokens = {"infer": args.batch * args.seq, "train": args.train_batch * args.seq}
    best = {k: float("inf") for k in calls}
    with torch_threads(1):
        for r in range(args.rounds + 1):  # round 0 warms up
            for k, call in calls.items():
                t0 = time.thread_time()
                call()
                if r:
                    best[k] = min(best[k], time.thread_time() - t0)
            print(f"round {r}: " + ", ".join(f"{k[0]} {k[1]} {v:.2f} s" for k, v in best.items()))
    rates: dict[str, dict[str, float]] = {"infer": {}, "train": {}}
    for (kind, name), seconds in best.items():
        rates[kind][name] = round(tokens[kind] / seconds, 1)
    return rates["infer"], rates["train"]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()
    m = precision.measured(
        precision.Shape.of(resolve_backbone(args.backbone)), refresh=args.refresh
    )
    choice = precision.choose(m.rates, int8_auto=precision.INT8_AUTO)
    out: dict[str, Any] = {
        "cpu": m.machine.cpu,
        "flags": list(m.machine.flags),
        "native_bf16": m.machine.native_bf16,
        "cores": m.machine.cores,
        "torch": m.machine.torch,
    }
    if args.quick:
        infer, train = dict(m.rates.infer), dict(m.rates.train)
        source = "probe"
    else:
        infer, train = measure_backbone(args)
        source = (
            f"backbone, forward {args.batch} x {args.seq}, step {args.train_batch} x {args.seq}"
        )
    allowed = ("fp32", "bf16", "int8") if precision.INT8_AUTO else ("fp32", "bf16")
    fastest = {
        "train": max(train, key=lambda k: train[k]),
        "infer": max((k for k in infer if k in allowed), key=lambda k: infer[k]),
    }
    chosen = {"train": choice.train, "infer": choice.infer}
    out |= {
        "rates": infer,
        "train_rates": train,
        "chosen": chosen,
        "fastest": fastest,
        "chosen_share": {
            "train": round(train[chosen["train"]] / train[fastest["train"]], 3),
            "infer": round(infer[chosen["infer"]] / infer[fastest["infer"]], 3),
        },
        "int8_auto": precision.INT8_AUTO,
        "rates_unit": f"tokens/s on one core ({source})",
        "probe": {**m.rates.to_json(), "cached": m.cached},
        "load": [round(x, 2) for x in load],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(precision.describe(m, choice))
    print(f"measured: inference {infer}, training {train}; chosen {chosen}, fastest {fastest}")
    return out


def main(argv: list[str] | None = None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--backbone", default="", help="HF name or folder (default: MiniLM)")
    ap.add_argument("--batch", type=int, default=4, help="windows per forward pass")
    ap.add_argument("--train-batch", type=int, default=2, help="windows per training step")
    ap.add_argument("--seq", type=int, default=512, help="sub-tokens per window")
    ap.add_argument("--freeze-layers", type=int, default=3, help="frozen lower layers")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds (after a warm-up)")
    ap.add_argument("--quick", action="store_true", help="the probe's rates only")
    ap.add_argument("--refresh", action="store_true", help="probe again, not from the cache")
    run_benchmark(ap, measure, argv)


if __name__ == "__main__":
    main()
