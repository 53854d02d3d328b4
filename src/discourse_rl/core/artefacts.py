"""Checksums of a run's artefacts: recorded when a stage finishes, verified when they are loaded.

A damaged file (a copy cut short, a full disk, a 0-byte file) would otherwise surface as a
library's traceback (SafetensorError, EOFError, BadZipFile) or, worse, load. Each stage's files
are listed with their size and sha256 in ``RUN/manifests/<stage>.json``; loaders call `verify`
and a damaged file gets one line naming it and the command that rebuilds it, while `run`
re-runs a stage whose files no longer match (`damaged`).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from discourse_rl.core.common import DiscourseRLError, atomic_write_text, read_json
from discourse_rl.core.layout import FoldLayout, RunLayout, step_name

CHUNK = 1 << 20
"""Bytes read at a time while hashing (a fold model can be hundreds of MB)."""
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class Entry:
    size: int
    sha256: str


def entry(path: Path) -> Entry:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return Entry(path.stat().st_size, digest.hexdigest())


def stage_files(lay: RunLayout, stage: str) -> list[Path]:
    """The files of `stage` that later commands load (caches and checkpoints are left out:
    a trainer checks those itself)."""
    if stage == "ner":
        found = [
            lay.oof,
            lay.decode,
            lay.ner_folds,
            lay.ner_config,
            lay.ner_metrics,
            lay.test_probs,
        ]
        if lay.ner_encoder.is_dir():
            found += sorted(p for p in lay.ner_encoder.iterdir() if p.is_file())
        for fold in sorted(lay.ner.glob("fold*")):
            f = FoldLayout(fold)
            found += [f.head, f.model, f.oof]
    elif stage == "ner_rl":
        found = [p for arm in ("rl", "control") for p in sorted((lay.ner / arm).glob("*.*"))]
        for fold in sorted(lay.ner.glob("fold*")):
            for arm in ("rl", "control"):
                f = FoldLayout(fold / arm)
                found += [f.model, f.oof]
    elif stage == "agent":
        found = [lay.segments, lay.segments_config, lay.agent_results]
        if lay.agent.is_dir():
            found += sorted(lay.agent.rglob("policy.pt")) + sorted(lay.agent.rglob("config.toml"))
    else:
        found = sorted(p for p in lay.step_dir(stage).rglob("*") if p.is_file())
    return [p for p in found if p.is_file()]


def record(lay: RunLayout, stage: str, files: Iterable[Path] | None = None) -> None:
    """Write the stage's manifest: every file's size and sha256, relative to the run."""
    paths = stage_files(lay, stage) if files is None else list(files)
    listed = {
        p.relative_to(lay.root).as_posix(): vars(entry(p)) for p in sorted(paths) if p.is_file()
    }
    blob = {"format": MANIFEST_FORMAT, "stage": stage, "files": listed}
    atomic_write_text(lay.manifest(stage), json.dumps(blob, indent=2) + "\n")


def forget(lay: RunLayout, stage: str) -> None:
    """A stage about to re-run: its old checksums no longer describe what it will write."""
    lay.manifest(stage).unlink(missing_ok=True)


def _listed(lay: RunLayout, stage: str) -> dict[str, Entry]:
    path = lay.manifest(stage)
    if not path.is_file():
        return {}
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
        return {k: Entry(int(v["size"]), str(v["sha256"])) for k, v in blob["files"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        # A damaged manifest vouches for nothing: the files are checked by their format alone.
        return {}


def _problem(path: Path, want: Entry) -> str | None:
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != want.size:
        return f"damaged: {size:,} bytes, {want.size:,} when written"
    if entry(path).sha256 != want.sha256:
        return "damaged: its content changed since it was written (sha256 differs)"
    return None


def damaged(lay: RunLayout, stage: str) -> list[tuple[Path, str]]:
    """The stage's recorded files that are missing or changed, with what is wrong."""
    out = []
    for rel, want in _listed(lay, stage).items():
        if (problem := _problem(lay.root / rel, want)) is not None:
            out.append((lay.root / rel, problem))
    return out


def remove_damaged(lay: RunLayout, stage: str) -> list[Path]:
    """Delete the stage's damaged files, and what would let its trainer skip rebuilding them
    (a NER fold counts as finished while its oof.npz and done.json exist)."""
    removed = []
    for path, _ in damaged(lay, stage):
        doomed = [path]
        if path.parent.parent == lay.ner and path.parent.name.startswith("fold"):
            fold = lay.fold(int(path.parent.name.removeprefix("fold")))
            doomed += [fold.oof, fold.done]
        for p in doomed:
            if p.is_file():
                p.unlink()
                removed.append(p)
    return removed


def _run_of(path: Path) -> tuple[RunLayout, str] | None:
    """The run folder holding `path` and the stage that wrote it, if a manifest lists it."""
    path = Path(path).absolute()
    for parent in list(path.parents)[:4]:
        lay = RunLayout(parent)
        if not lay.manifests.is_dir():
            continue
        rel = path.relative_to(parent).as_posix()
        for manifest in sorted(lay.manifests.glob("*.json")):
            if rel in _listed(lay, manifest.stem):
                return lay, step_name(manifest.stem)
        return lay, _stage_of(rel)
    return None


def _stage_of(rel: str) -> str:
    first = rel.split("/", 1)[0]
    if first in ("ner", "decode.json"):
        return "ner"
    if first in ("agent", "segments.npz"):
        return "agent"
    return step_name(first)


def rebuild_command(path: str | Path) -> str:
    """The command that rebuilds `path`: `run` on its run folder, with the data and config the
    stage was recorded with (`train-agent --simulate` for a simulated agent stage)."""
    path = Path(path)
    found = _run_of(path)
    if found is None:
        # No manifest: guess the run folder from the layout's names.
        root = path.parent
        for parent in list(path.parents)[:4]:
            if RunLayout(parent).format.is_file() or RunLayout(parent).stages.is_file():
                root = parent
                break
        lay, stage = (
            RunLayout(root),
            _stage_of(path.absolute().relative_to(root.absolute()).as_posix()),
        )
    else:
        lay, stage = found
    try:
        # The stage's record (`records.StageRecord`), read as plain JSON: records sit above.
        recorded = read_json(lay.stages, {})
    except DiscourseRLError:
        recorded = {}
    if isinstance(recorded, dict):  # a step recorded under an earlier name counts as itself
        recorded = {step_name(k): v for k, v in recorded.items()} | recorded
    rec = recorded.get(stage) if isinstance(recorded, dict) else None
    rec = rec if isinstance(rec, dict) else {}

    def absolute(key: str) -> str | None:
        value = rec.get(key)
        return value if isinstance(value, str) and value.startswith("/") else None

    data = f" --data {absolute('data')}" if absolute("data") else ""
    if rec.get("key") == "simulated":
        return f"discourse-rl train-agent --out {lay.root}{data} --simulate"
    config = f" --config {absolute('config')}" if absolute("config") else ""
    return f"discourse-rl run --out {lay.root}{data}{config}"


def unreadable(path: str | Path, what: str, exc: BaseException | None = None) -> DiscourseRLError:
    """The one-line error of an artefact that fails to load: which file, what it should be,
    and how to get it back."""
    why = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return DiscourseRLError(
        f"{path}: damaged or not {what}{why}; rebuild it with `{rebuild_command(path)}`"
    )


def load_npz(path: str | Path, name: str, what: str) -> dict[str, Any]:
    """Every array of an .npz artefact, checked against its run's manifest first; one clear line
    when the file is missing ('{path}: {name} not found'), differs from its record, or does not
    load ('damaged or not {what}')."""

    path = Path(path)
    if not path.is_file():
        raise DiscourseRLError(f"{path}: {name} not found")
    verify(path)
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise unreadable(path, what, exc) from None


def verify(path: str | Path) -> None:
    """Raise the one-line error when `path` differs from the size and sha256 recorded for it.

    A file no manifest lists (a run from before manifests, an unpacked model .zip) passes: its
    loader's own format checks are all there is."""
    path = Path(path)
    found = _run_of(path)
    if found is None:
        return
    lay, stage = found
    rel = path.absolute().relative_to(lay.root.absolute()).as_posix()
    want = _listed(lay, stage).get(rel)
    if want is None:
        return
    if (problem := _problem(path, want)) is not None and problem != "missing":
        raise DiscourseRLError(f"{path}: {problem}; rebuild it with `{rebuild_command(path)}`")
