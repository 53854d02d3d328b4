"""Why does int8 dynamic quantisation cost a fine-tuned tagger F1, and which linear layers can
be quantised without it? Out of fold (each fold model on the essays it did not see) on a trained
finetune run:

1. Activation and weight statistics of every linear layer of the encoder (fp32 pass): the
   largest |input| and how far it stands above the typical channel's largest (outlier channels
   make one per-tensor activation scale coarse for every other channel), and the same for the
   weights' output channels (per-tensor weight scales).
2. Each linear layer's own error under int8, measured in the same fp32 pass: its output with
   its input and weights quantised as `quantize_dynamic` does, against its fp32 output
   (relative L2 error), per-tensor and per-channel weights.
3. Schemes scored end to end against fp32 on `--max-essays` essays: word probabilities (mean
   and max |diff|, argmax agreement), naive and tuned cross-fitted macro F1, and the seconds of
   the pass. `all` is today's `infer_dtype = "int8"`; `skip:<names>` leaves the named linear
   layers (substrings of their module names) in fp32; `layers:<i,j>` quantises only those
   encoder layers; `perchannel` uses per-channel weight scales.

    nice -n 10 .venv/bin/python -m experiments.int8_study --run runs/proxy3k \\
        --data ../shared/data/feedback-prize-2021 --max-essays 300 --threads 1 --json
"""

from __future__ import annotations

import argparse
import copy
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.common import run_benchmark
from discourse_rl.core.arrays import FloatArray
from discourse_rl.core.common import torch_threads
from discourse_rl.decoders.decode import evaluate_decoding
from discourse_rl.ner import NerPredictor
from discourse_rl.ner.model import NerModel
from experiments.infer_dtype import add_run_args, out_of_fold, run_essays

DEFAULT_SCHEMES = (
    "fp32",
    "bf16",
    "all",
    "perchannel",
)


def _linears(encoder: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in encoder.named_modules() if isinstance(m, nn.Linear)}


def _quantize_per_tensor(x: torch.Tensor) -> torch.Tensor:
    """`x` through what dynamic quantisation does to an activation: one affine scale over the
    whole tensor (min and max of this call), 7 bits as x86's dynamic linear uses them
    (`reduce_range`), then back to float."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = max(hi - lo, 1e-8) / 127.0
    zero = round(-lo / scale)
    q = torch.clamp(torch.round(x / scale) + zero, 0, 127)
    return (q - zero) * scale


def _quantize_weight(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Symmetric int8 weights, one scale for the tensor or one per output channel."""
    if per_channel:
        scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
    else:
        scale = w.abs().max().clamp_min(1e-8) / 127.0
    return torch.clamp(torch.round(w / scale), -127, 127) * scale


@contextmanager
def _statistics(encoder: nn.Module, out: dict[str, dict[str, Any]]) -> Iterator[None]:
    """While inside, every linear layer's inputs are measured (see the module's doc, 1 and 2)."""
    acc: dict[str, dict[str, Any]] = defaultdict(dict)
    hooks = []
    for name, lin in _linears(encoder).items():

        def hook(mod: nn.Module, args: tuple[Any, ...], result: Any, name: str = name) -> None:
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            weight = mod.weight
            assert isinstance(weight, torch.Tensor)
            w = weight.detach().float()
            a = acc[name]
            chan = x.abs().amax(dim=0)
            a["chan_max"] = chan if "chan_max" not in a else torch.maximum(a["chan_max"], chan)
            ref = result.detach().float().reshape(-1, w.shape[0])
            xq = _quantize_per_tensor(x)
            for key, per_channel in (("err_tensor", False), ("err_channel", True)):
                y = torch.nn.functional.linear(xq, _quantize_weight(w, per_channel), mod.bias)  # type: ignore[arg-type]
                a.setdefault(key, []).append(float((y - ref).norm() / ref.norm().clamp_min(1e-8)))
            y = torch.nn.functional.linear(x, _quantize_weight(w, False), mod.bias)  # type: ignore[arg-type]
            a.setdefault("err_weights_only", []).append(
                float((y - ref).norm() / ref.norm().clamp_min(1e-8))
            )
            y = torch.nn.functional.linear(xq, w, mod.bias)  # type: ignore[arg-type]
            a.setdefault("err_inputs_only", []).append(
                float((y - ref).norm() / ref.norm().clamp_min(1e-8))
            )

        hooks.append(lin.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        for name, a in acc.items():
            chan = a["chan_max"]
            w = _linears(encoder)[name].weight.detach().float()
            rows = w.abs().amax(dim=1)
            top = torch.topk(chan, k=min(3, len(chan)))
            out[name] = {
                "input_max": round(float(chan.max()), 2),
                "input_outlier_ratio": round(float(chan.max() / chan.median().clamp_min(1e-8)), 1),
                "top_input_channels": [int(i) for i in top.indices],
                "weight_outlier_ratio": round(float(rows.max() / rows.median().clamp_min(1e-8)), 1),
                **{
                    k: round(float(np.mean(a[k])), 4)
                    for k in ("err_tensor", "err_channel", "err_weights_only", "err_inputs_only")
                },
            }


def quantized(model: NerModel, scheme: str) -> NerModel:
    """A copy of `model` whose encoder is quantised as `scheme` says (module docstring, 3)."""
    out = copy.deepcopy(model).eval()
    if scheme == "fp32":
        return out
    if scheme == "bf16":
        out.encoder.to(torch.bfloat16)
        return out
    names = list(_linears(out.encoder))
    qconfig = torch.ao.quantization.default_dynamic_qconfig
    if scheme.startswith("perchannel"):
        qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
        scheme = scheme.removeprefix("perchannel").lstrip("+") or "all"
    if scheme.startswith("skip:"):
        skip = scheme.removeprefix("skip:").split(",")
        names = [n for n in names if not any(s in n for s in skip)]
    elif scheme.startswith("layers:"):
        keep = [f"layer.{i}." for i in scheme.removeprefix("layers:").split(",")]
        names = [n for n in names if any(k in n for k in keep)]
    elif scheme != "all":
        raise SystemExit(f"unknown scheme {scheme!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
            out.encoder, dict.fromkeys(names, qconfig), dtype=torch.qint8, inplace=True
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_run_args(ap, "a trained finetune run folder", max_essays=300)
    ap.add_argument("--stats-essays", type=int, default=40, help="essays of the statistics pass")
    ap.add_argument("--schemes", nargs="+", default=list(DEFAULT_SCHEMES))
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument(
        "--probs-dir", type=Path, default=None, help="keep each scheme's probabilities here"
    )
    ap.add_argument("--no-stats", action="store_true", help="skip the statistics pass")
    run_benchmark(ap, measure, argv)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    folds, decode, corpus, ids, essays, out = run_essays(args)
    with torch_threads(args.threads):
        base = NerPredictor.load(args.run, threads=args.threads, infer_dtype="fp32")
        if not base.models:
            raise SystemExit("a finetune run is needed (fold models)")
        if not args.no_stats:
            stats: dict[str, dict[str, Any]] = {}
            few = {i: essays[i] for i in ids[: args.stats_essays]}
            with _statistics(base.models[0].encoder, stats):
                out_of_fold(replace(base, models=base.models[:1]), few, dict.fromkeys(few, 0))
            out["fold0_linears"] = stats
            for name, stat in stats.items():
                print(f"{name:<45} {stat}", flush=True)
        probs: dict[str, dict[str, FloatArray]] = {}
        for scheme in args.schemes:
            kept = (
                args.probs_dir / f"{scheme.replace(':', '_')}-{len(ids)}.npz"
                if args.probs_dir
                else None
            )
            t0 = time.perf_counter()
            cpu0 = time.process_time()
            if kept is not None and kept.is_file():
                with np.load(kept) as z:
                    probs[scheme] = {i: z[i] for i in ids}
            else:
                pred = replace(base, models=[quantized(m, scheme) for m in base.models])
                probs[scheme] = out_of_fold(pred, essays, folds)
                if kept is not None:
                    kept.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(kept, **probs[scheme])
            row: dict[str, Any] = {
                "seconds": round(time.perf_counter() - t0, 1),
                "cpu_seconds": round(time.process_time() - cpu0, 1),
            }
            rep = evaluate_decoding(probs[scheme], corpus, folds, decode)
            row["naive"] = round(rep.naive.macro_f1, 4)
            row["tuned_cf"] = round(rep.tuned_cross_fitted.macro_f1, 4)
            if scheme != "fp32" and "fp32" in probs:
                ref, got = probs["fp32"], probs[scheme]
                diff = np.concatenate([np.abs(got[i] - ref[i]).ravel() for i in ids])
                agree = np.concatenate([got[i].argmax(1) == ref[i].argmax(1) for i in ids])
                row |= {
                    "mean_abs_diff": round(float(diff.mean()), 5),
                    "max_abs_diff": round(float(diff.max()), 3),
                    "argmax_agree": round(float(agree.mean()), 4),
                    "naive_minus_fp32": round(row["naive"] - out["fp32"]["naive"], 4),
                    "tuned_cf_minus_fp32": round(row["tuned_cf"] - out["fp32"]["tuned_cf"], 4),
                }
            out[scheme] = row
            print(f"{scheme}: {row} (load {os.getloadavg()})", flush=True)
    return out


if __name__ == "__main__":
    main()
