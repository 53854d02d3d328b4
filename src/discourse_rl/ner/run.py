"""The NER stage's part of a run folder: its settings record, folds, encoder and fold models.

Paths come from `RunLayout`; this module reads and writes what lives at them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discourse_rl.core import artefacts, rules
from discourse_rl.core.common import (
    DiscourseRLError,
    atomic_write_text,
    config_from_dict,
    config_to_toml,
    load_toml,
)
from discourse_rl.core.data import Corpus
from discourse_rl.core.layout import RunLayout
from discourse_rl.ner.backbone import encoder_from_config
from discourse_rl.ner.config import NerConfig
from discourse_rl.ner.model import NerHead, NerModel


@dataclass(frozen=True)
class NerRecord:
    """What `RUN/ner/config.toml` holds: the resolved NER settings and the seed they ran with."""

    seed: int
    """Seed of folds, initialisation and shuffling."""
    ner: NerConfig
    """The NER settings."""


def write_record(layout: RunLayout, record: NerRecord) -> None:
    atomic_write_text(layout.ner_config, config_to_toml(record))


def run_ner_config(run_dir: str | Path) -> NerConfig:
    """The NER settings a run was trained with."""
    layout = RunLayout(run_dir)
    path = layout.ner_config
    if not path.is_file():
        raise DiscourseRLError(f"{layout.root}: not a trained run folder (no ner/config.toml)")
    return config_from_dict(NerConfig, load_toml(path).get("ner", {}), where=str(path), table="ner")


def inputs_key(corpus: Corpus, cfg: NerConfig, seed: int) -> str:
    """What every fold model and probability of the stage depends on."""
    text = json.dumps([rules.plain(cfg), seed, corpus.content_key()], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def keep_or_clear(layout: RunLayout, key: str) -> None:
    """Keep the NER outputs of the same inputs (an interrupted stage resumes from them); remove
    those of other inputs, so that no fold model of an earlier configuration or data is reused.
    The encoder's word-vector cache stays: it checks its own settings."""
    marker = layout.ner_inputs
    try:
        same = json.loads(marker.read_text(encoding="utf-8")).get("key") == key
    except (OSError, ValueError, AttributeError):
        same = False
    if same:
        return
    # The marker goes first: a crash mid-removal then still clears on the next run.
    marker.unlink(missing_ok=True)
    stale = [layout.ner_encoder, layout.oof, layout.test_probs, layout.ner_metrics, layout.decode]
    if layout.ner.is_dir():
        stale += [p for p in layout.ner.glob("fold*") if p.is_dir()]
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    write_json(marker, {"key": key})


def write_folds(layout: RunLayout, folds: dict[str, int]) -> None:
    write_json(layout.ner_folds, folds)


def fold_split(folds: dict[str, int], k: int) -> tuple[list[str], list[str]]:
    """(training essays, held-out essays) of fold `k`."""
    train = [i for i, f in folds.items() if f != k]
    return train, [i for i, f in folds.items() if f == k]


def require_encoder(layout: RunLayout) -> Path:
    """The run's saved backbone folder; a run may hold out-of-fold probabilities without models
    (e.g. when the NER stage was trained on another machine), which cannot predict."""
    if not layout.ner_encoder_config.is_file():
        raise DiscourseRLError(f"{layout.ner_encoder}: missing (this run has no NER model)")
    return layout.ner_encoder


def _weights(path: Path) -> dict[str, Any]:
    # safetensors: loaded when weights are read
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise DiscourseRLError(f"{path}: fold model missing (is the NER training finished?)")
    artefacts.verify(path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise artefacts.unreadable(path, "a safetensors file", exc) from None


def load_heads(run_dir: str | Path, cfg: NerConfig, in_dim: int) -> list[NerHead]:
    """Frozen mode: every fold's head."""
    heads = []
    for fold in RunLayout(run_dir).folds(cfg.folds):
        weights = _weights(fold.head)
        head = NerHead(in_dim, cfg)
        head.load_state_dict(weights)
        heads.append(head)
    return heads


def fed_arm(layout: RunLayout) -> str:
    """Whose fold weights label new essays: 'ce' (the cross-entropy tagger's) or the RL phase's
    arm ('rl', 'control') whose probabilities the second stages were fitted on, as the run
    recorded in RUN/ner/feeds.json (`[ner_rl] feeds`)."""
    path = layout.ner / "feeds.json"
    if not path.is_file():
        return "ce"
    try:
        arm = json.loads(path.read_text(encoding="utf-8"))["arm"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DiscourseRLError(f"{path}: unreadable ({exc})") from None
    if arm not in ("ce", "rl", "control"):
        raise DiscourseRLError(f"{path}: unknown arm {arm!r}")
    return str(arm)


def write_fed_arm(layout: RunLayout, arm: str) -> None:
    """Record (or, for 'ce', clear) the arm whose weights label new essays."""
    path = layout.ner / "feeds.json"
    if arm == "ce":
        path.unlink(missing_ok=True)
    elif layout.ner.is_dir():
        write_json(path, {"arm": arm})


def fold_weights(layout: RunLayout, k: int) -> Path:
    """Fold `k`'s weights that label new essays (`fed_arm`)."""
    arm = fed_arm(layout)
    return layout.fold(k).model if arm == "ce" else layout.ner_fold(k) / arm / "model.safetensors"


def load_finetuned(run_dir: str | Path, cfg: NerConfig) -> list[NerModel]:
    """Finetune mode: every fold's encoder and head (the fed arm's weights, `fold_weights`)."""
    layout = RunLayout(run_dir)
    models = []
    for k in range(cfg.folds):
        weights = _weights(fold_weights(layout, k))
        model = NerModel(encoder_from_config(layout.ner_encoder), cfg)
        model.load_state_dict(weights)
        models.append(model)
    return models


def write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")
