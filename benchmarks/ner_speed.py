"""Speed of the NER stage: encoder training and inference tokens/s (fp32 and bf16), and the wall
time to predict a batch of essays with a trained run.

    .venv/bin/python -m benchmarks.ner_speed                  # default backbone, ~2 minutes
    .venv/bin/python -m benchmarks.ner_speed --threads 1      # when other jobs share the cores
    .venv/bin/python -m benchmarks.ner_speed --predict-run runs/reference \\
        --data ../shared/data/feedback-prize-2021 --predict-essays 1500 [--predict-only]
    .venv/bin/python -m benchmarks.ner_speed --batch 1 --seq 64 --steps 1 --json   # seconds

Training tokens/s is one fine-tuning step (forward, backward, AdamW) of encoder + head on
windows of `--seq` sub-tokens, with the encoder dropout of `NerConfig` (attention dropout 0 lets
PyTorch use its fused attention kernel; `--attention-dropout 0.1` shows the unfused cost) and
`--freeze-layers` lower layers frozen; inference is the encoder's forward pass (autocast; the
`bf16 w.` row: bf16 weights without autocast, as prediction runs it). The uptime load
average is printed because shared cores make every figure here pessimistic.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import add_json_flag, report, require
from discourse_rl.common import torch_threads
from discourse_rl.data import NUM_LABELS, load_corpus
from discourse_rl.layout import RunLayout
from discourse_rl.ner import NerConfig, predict_word_probs
from discourse_rl.ner.backbone import freeze_lower, load_encoder, resolve_backbone
from discourse_rl.ner.inference import autocast, bf16_available, bf16_encoder_copy
from discourse_rl.ner.model import NerModel


def tokens_per_second(
    model: NerModel, batch: int, seq: int, steps: int, bf16: bool, train: bool
) -> float:
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
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times = []
    for _ in range(steps + 1):  # the first step warms up kernels and is not counted
        t0 = time.perf_counter()
        if train:
            model.train()
            with autocast(device, bf16):
                loss = model(**inputs)["loss"]
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
    add_json_flag(ap)
    args = ap.parse_args(argv)
    report(lambda: measure(args), args.json)


def token_rates(args: argparse.Namespace) -> dict[str, float]:
    """Training and inference tokens/s of a fresh encoder + head, fp32 and bf16."""
    out: dict[str, float] = {}
    torch.manual_seed(0)
    encoder = load_encoder(
        resolve_backbone(args.backbone), args.attention_dropout, args.hidden_dropout
    )
    model = NerModel(encoder, NerConfig())
    freeze_lower(model, args.freeze_layers)
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
    return out


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
        if not args.predict_only:
            out.update(token_rates(args))
        if args.predict_run is not None:
            corpus = load_corpus(args.data)
            ids = sorted(corpus.essays)[: args.predict_essays]
            essays = {i: corpus.essays[i] for i in ids}
            t0 = time.perf_counter()
            probs = predict_word_probs(args.predict_run, essays, threads=args.threads)
            dt = time.perf_counter() - t0
            n_words = sum(p.shape[0] for p in probs.values())
            print(f"predicted {len(essays)} essays ({n_words:,} words) in {dt:.1f} s")
            out.update(predict_essays=len(essays), predict_words=n_words, predict_s=dt)
        print(f"load average after {os.getloadavg()}")
    out["load_after"] = os.getloadavg()
    return out


if __name__ == "__main__":
    main()
