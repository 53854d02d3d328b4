"""The run's NER step, as `discourse-rl train-ner` and the pipeline run it: the tagger's
cross-fitted fold models and out-of-fold word probabilities (`ner.stage.train_ner`), then the
naive and tuned decodings fitted and scored on them (RUN/decode.json, RUN/ner/metrics.json).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from discourse_rl.core.common import config_from_dict, load_toml
from discourse_rl.core.data import Corpus, load_word_probs
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders.decode import (
    DecodeConfig,
    DecodeReport,
    evaluate_decoding,
    report_to_json,
    save_thresholds,
)
from discourse_rl.launch import distributed
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.run import write_json
from discourse_rl.ner.stage import train_ner


@dataclass(frozen=True)
class NerStageConfig:
    """The part of a run config that the NER stage reads."""

    seed: int = 0
    """Seed of folds, initialisation and shuffling."""
    ner: NerConfig = field(default_factory=NerConfig)
    """Model and training."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """Span decoding."""


def stage_config(path: str | Path | None, **overrides: Any) -> NerStageConfig:
    """The `seed`, `[ner]` and `[decode]` of a TOML file (other tables belong to later stages)."""
    raw = load_toml(path) if path is not None else {}
    mine: dict[str, Any] = {k: raw[k] for k in ("seed", "ner", "decode") if k in raw}
    cfg = config_from_dict(NerStageConfig, mine, where=str(path or "config"))
    ner_over = {k: v for k, v in overrides.items() if v is not None and k != "seed"}
    if ner_over:
        cfg = replace(cfg, ner=replace(cfg.ner, **ner_over))
    if overrides.get("seed") is not None:
        cfg = replace(cfg, seed=int(overrides["seed"]))
    return cfg


def train_ner_stage(corpus: Corpus, cfg: NerStageConfig, out_dir: str | Path) -> DecodeReport:
    """Train the fold models, then fit and score the decodings on the out-of-fold probabilities."""
    layout = RunLayout(out_dir)
    result = train_ner(corpus, cfg.ner, layout.root, cfg.seed)

    def evaluate() -> DecodeReport:
        oof = load_word_probs(result.oof_path)
        report = evaluate_decoding(oof, corpus, result.folds, cfg.decode)
        save_thresholds(layout.decode, report.thresholds)
        metrics = report_to_json(report)
        metrics["seconds"] = round(result.seconds, 1)
        metrics["essays"] = len(oof)
        write_json(layout.ner_metrics, metrics)
        return report

    # Fitted and written once, by the main process; the others receive the report.
    return distributed.from_main(evaluate)
