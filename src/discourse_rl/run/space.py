"""How much space a run's stages need, and the one line a run ends with when it cannot write.

`stage_started` says which stage the run is writing; `record_size` (when a stage finishes)
keeps the bytes its files take in ``RUN/sizes.json``; `write_failure` makes the line: the path,
the cause, and for a full disk what the stage needs (measured when it last finished, else
estimated from its inputs) and what is free.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from discourse_rl.core.common import DiscourseRLError, atomic_write_text
from discourse_rl.core.faults import SPACE_ERRORS, cause, free_bytes, inside
from discourse_rl.core.layout import RunLayout, step_name

SIZES_NAME = "sizes.json"
"""RUN/sizes.json: bytes each stage's files took when it last finished."""


@dataclass
class _Current:
    root: Path
    stage: str
    corpus: Any
    cfg: Any


_current: _Current | None = None


def stage_started(root: str | Path, stage: str, corpus: Any = None, cfg: Any = None) -> None:
    """The stage the run is writing now, with its inputs (what a full disk's line is about)."""
    global _current
    _current = _Current(Path(root), stage, corpus, cfg)


def stage_of(root: Path, path: Path) -> str | None:
    """The stage whose files `path` is, by its place in the run folder."""
    rel = inside(str(Path(path).resolve()), root.resolve())
    if rel is None:
        return None
    first = rel.split("/", 1)[0]
    if first in ("ner", "decode.json"):
        return "ner"
    if first in ("agent", "segments.npz", "tb"):
        return "agent"
    if step_name(first) == "gbdt":
        return "gbdt"
    return None


def sizes_path(root: str | Path) -> Path:
    return Path(root) / SIZES_NAME


def stage_paths(root: Path, stage: str) -> list[Path]:
    if stage == "ner":
        return [root / "ner", root / "decode.json"]
    if stage == "agent":
        return [root / "agent", root / "segments.npz", root / "tb"]
    return [RunLayout(root).step_dir(stage)]


def du(paths: list[Path]) -> int:
    """Bytes `paths` take on disk (a sparse file counts for the blocks it has)."""
    files: list[Path] = []
    for p in paths:
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files += [f for f in p.rglob("*") if f.is_file()]
    total = 0
    for f in files:
        st = f.stat()
        total += min(st.st_size, st.st_blocks * 512)
    return total


def read_sizes(root: str | Path) -> dict[str, int]:
    try:
        blob = json.loads(sizes_path(root).read_text(encoding="utf-8"))
        return {step_name(str(k)): int(v) for k, v in blob.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def record_size(root: str | Path, stage: str) -> None:
    """After `stage` finished: how many bytes its files take, for the next full disk's line."""
    global _current
    root = Path(root)
    sizes = read_sizes(root)
    sizes[stage] = du(stage_paths(root, stage))
    atomic_write_text(sizes_path(root), json.dumps(sizes, indent=2, sort_keys=True) + "\n")
    if _current is not None and _current.stage == stage:
        _current = None


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def space_hint(root: Path | None, path: Path) -> str:
    """For a full disk: what the stage writing `path` needs, and what is free."""
    stage = None
    estimate: int | None = None
    if _current is not None and (root is None or _current.root.resolve() == root.resolve()):
        root, stage = _current.root, _current.stage
        estimate = estimate_stage(stage, root, _current.corpus, _current.cfg)
    if root is not None and stage is None:
        stage = stage_of(root, path)
    free = free_bytes(path)
    free_text = f"{_mb(free)} free" if free >= 0 else "free space unknown"
    if root is None or stage is None:
        return f" ({free_text})"
    measured = read_sizes(root).get(stage)
    if measured is not None:
        need = f"the {stage} stage needs about {_mb(measured)} (measured when it last finished)"
    elif estimate is not None:
        need = f"the {stage} stage needs about {_mb(estimate)} (estimated)"
    else:
        need = f"the {stage} stage's size is not known yet"
    done = du(stage_paths(root, stage))
    return f" ({need}; {_mb(done)} of it written, {free_text})"


def write_failure(exc: OSError, root: str | Path | None) -> Exception:
    """The one-line error of a run that could not write: path, cause, space, what to do."""
    root = Path(root) if root is not None else None
    path = Path(exc.filename) if exc.filename else (root or Path("."))
    hint = space_hint(root, path) if exc.errno in SPACE_ERRORS else ""
    again = (
        "; the run folder keeps every finished stage: fix the cause and run the same command "
        "again to continue"
        if root is not None
        else ""
    )
    return DiscourseRLError(f"{path}: cannot write: {cause(exc)}{hint}{again}")


def ner_estimate(n_words: int, hidden: int, backbone_bytes: int, frozen: bool, folds: int) -> int:
    """Bytes the NER stage writes: the encoder's files, the frozen word vectors (float16), the
    fold models and the word probabilities (float16, 15 labels, out of fold and test)."""
    # Frozen: the encoder's weights once, its word vectors, small heads. Finetune: a whole
    # model per fold (the encoder folder then holds its config and tokenizer only).
    models = backbone_bytes if frozen else backbone_bytes * folds
    cache = n_words * hidden * 2 if frozen else 0
    probs = 2 * n_words * 15 * 2
    return int(models + cache + probs)


def folder_bytes(path: str | Path) -> int:
    p = Path(path)
    return du([p]) if p.exists() else 0


def estimate_stage(stage: str, root: Path, corpus: Any, cfg: Any) -> int | None:
    """A rough size of `stage`'s files before it ever finished (None: no estimate)."""
    if corpus is None or cfg is None:
        return None
    try:
        if stage == "ner":
            # The tagger's modules: only when a full disk asks for an estimate.
            from discourse_rl.ner import mpnet_parts
            from discourse_rl.ner.backbone import resolve_backbone

            if cfg.ner.backbone == mpnet_parts.NAME:
                return None  # resolving it may assemble it: not while the disk is full

            backbone = Path(resolve_backbone(cfg.ner.backbone))
            hidden = 384
            config = backbone / "config.json"
            if config.is_file():
                hidden = int(json.loads(config.read_text()).get("hidden_size", hidden))
            n_words = sum(len(e.words) for e in corpus.essays.values())
            frozen = cfg.ner.mode == "frozen"
            return ner_estimate(n_words, hidden, folder_bytes(backbone), frozen, cfg.ner.folds)
        oof = root / "ner" / "oof.npz"
        if oof.is_file():
            # The second stages' files (segments, features, models) scale with the essays'.
            return 2 * oof.stat().st_size + (5 << 20)
    except Exception:
        return None
    return None
