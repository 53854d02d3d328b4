"""Exported models: what prediction needs from a run, in one compact .zip.

`export_model(run, out)` packs the NER config, tokenizer and fold weights (in float16, without
the tensors that equal the installed backbone's: a frozen encoder is not stored at all, a
fine-tuned one only in its trained layers), the decoding thresholds, the chosen stage's policy,
the run's held-out scores, and the licence and attribution of the corpus it was trained on.

`model_file.open_model(path)` reads one back. Float16 storage moves word probabilities by about
1e-3; decoded spans rarely change.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from discourse_rl.app.labeller import canonical_stage, default_stage, heldout_scores
from discourse_rl.app.labeller import offered_stages as offered
from discourse_rl.app.model_file import MANIFEST, PT_FORMAT, base_weights, match_base
from discourse_rl.core.common import DiscourseRLError, atomic_save
from discourse_rl.core.data import sample_dir
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders import registry

EXPORT_FORMAT = 1


def _pack(path: Path, base: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """Tensors of `path` that differ from `base`, as float16 safetensors; the tensors left out,
    each with the name of the backbone tensor it equals."""
    # torch and safetensors: only an export compares weights
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
        key = match_base(name, base)
        b = base[key] if key is not None else None
        if b is not None and b.shape == t.shape and b.dtype == t.dtype and torch.equal(b, t):
            omitted[name] = str(key)
            continue
        kept[name] = t.half() if t.is_floating_point() else t
    return save(kept, metadata=PT_FORMAT), omitted


def export_model(run: str | Path, out: str | Path, stage: str | None = None) -> Path:
    """Write the model .zip for `stage` (default: the run's best held-out stage)."""
    # torch comes with the tagger package: loaded only when exporting
    from discourse_rl.ner import run_ner_config

    run, out = Path(run), Path(out)
    layout = RunLayout(run)
    stage = default_stage(run) if stage is None else canonical_stage(stage)
    if stage not in offered(run):
        raise DiscourseRLError(f"{run}: stage {stage!r} not trained in this run")
    cfg = run_ner_config(run)
    base, base_sha = base_weights(cfg.backbone)
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
