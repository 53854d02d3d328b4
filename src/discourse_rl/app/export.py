"""Exported models: what prediction needs from a run, in one compact .zip.

`export_model(run, out)` packs the NER config, tokenizer and fold weights (in float16, without
the tensors that equal the installed backbone's: a frozen encoder is not stored at all, a
fine-tuned one only in its trained layers), the decoding thresholds, the chosen stage's files
(every trained stage's with `every_stage=True`, as the shipped model has), the run's held-out
scores, a model card, and the licence and attribution of the corpus it was trained on. It also
records the labels the packed model gives the embedded sample's test essays (`samples.jsonl`),
so that a later load can be checked against them.

`model_file.open_model(path)` reads one back. Float16 storage moves word probabilities by about
1e-3; decoded spans rarely change.
"""

from __future__ import annotations

import json
import subprocess
import zipfile
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from discourse_rl import __version__
from discourse_rl.app.labeller import canonical_stage, default_stage, heldout_scores
from discourse_rl.app.labeller import offered_stages as offered
from discourse_rl.app.model_file import (
    EXPORT_FORMAT,
    MANIFEST,
    PT_FORMAT,
    base_weights,
    match_base,
)
from discourse_rl.core.common import DiscourseRLError, atomic_save, read_json
from discourse_rl.core.data import sample_dir
from discourse_rl.core.layout import RunLayout
from discourse_rl.decoders import registry
from discourse_rl.run import lock


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


def export_model(
    run: str | Path,
    out: str | Path,
    stage: str | None = None,
    every_stage: bool = False,
    note: str = "",
) -> Path:
    """Write the model .zip for `stage` (default: the run's best held-out stage); with
    `every_stage`, every stage the run trained comes along and `stage` is the default one."""
    # A .zip written into a run folder: that folder's one writer.
    target = lock.run_folder_of(Path(out).parent)
    with lock.writing(target, "export") if target is not None else nullcontext():
        return _export(Path(run), Path(out), stage, every_stage, note)


def _export(run: Path, out: Path, stage: str | None, every_stage: bool, note: str) -> Path:
    # torch comes with the tagger package: loaded only when exporting
    from discourse_rl.ner import run_ner_config
    from discourse_rl.ner.run import fold_weights

    layout = RunLayout(run)
    stage = default_stage(run) if stage is None else canonical_stage(stage)
    chosen = offered(run) if every_stage else (stage,)
    needs = tuple(dict.fromkeys(s for name in chosen for s in lock.stages_for(name, run)))
    before = lock.snapshot(run, needs)  # a stage being rewritten: one line, not a mixed .zip
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
            # A run whose second stages read the RL phase's tagger: its weights take the fold
            # model's place, so the export labels with the tagger they were fitted on.
            src = (
                fold_weights(layout, int(p.parent.name[4:]))
                if p.name == "model.safetensors" and p.parent.name.startswith("fold")
                else p
            )
            files[rel], omitted[rel] = _pack(src, base)
    # format.json too: the unpacked folder must read as a run of this format.
    for p in (
        layout.format,
        layout.ner_config,
        layout.ner_metrics,
        layout.agent_results,
        layout.gbdt_results,
        layout.decode,
        layout.heldout_recall,
    ):
        if p.is_file():
            add(p)
    packed = offered(run) if every_stage else (stage,)
    for name in packed:
        for p in registry.get(name).files(layout):
            add(p)
    if every_stage and layout.config.is_file():
        add(layout.config)
    files["LICENSE.md"] = (sample_dir() / "LICENSE.md").read_bytes()
    files["MODEL.md"] = model_card(run, stage, packed, heldout_scores(run), note).encode("utf-8")
    manifest = {
        "format": EXPORT_FORMAT,
        "stage": stage,
        "stages": list(packed),
        "backbone": cfg.backbone,
        "backbone_sha256": base_sha if any(omitted.values()) else "",
        "omitted": omitted,
        "dtype": "float16",
        "licence": "CC BY-NC-SA 4.0",
    }
    files[MANIFEST] = json.dumps(manifest, indent=2).encode("utf-8")
    lock.unchanged(run, needs, before)  # every file from one complete state of the run

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in sorted(files.items()):
                zf.writestr(name, data)

    atomic_save(out, write)
    _record_samples(out, write, files)
    return out


SAMPLES = "samples.jsonl"
"""Inside an export: the packed model's labels of the embedded sample's test essays."""


def sample_labels(model: str | Path) -> list[dict[str, Any]]:
    """The labels `model`'s default stage gives the embedded sample's test essays, one dict per
    essay (id, then each element's type, word range and confidence)."""
    # the labeller loads torch: only when labels are recorded or checked
    from discourse_rl.app.labeller import Labeller

    labeller = Labeller.load(model)
    rows = []
    for path in sorted((sample_dir() / "test").glob("*.txt")):
        elements = labeller.label(path.read_text(encoding="utf-8"))
        rows.append(
            {
                "id": path.stem,
                "stage": labeller.stage,
                "elements": [
                    [e.type, e.word_start, e.word_end, round(e.confidence, 6)] for e in elements
                ],
            }
        )
    return rows


def _record_samples(out: Path, write: Any, files: dict[str, bytes]) -> None:
    """Label the sample essays with the model just written, and store those labels in it."""
    rows = sample_labels(out)
    files[SAMPLES] = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
    atomic_save(out, write)


def model_card(
    run: Path, stage: str, stages: tuple[str, ...], scores: dict[str, Any], note: str = ""
) -> str:
    """The model card: what it labels, how well on held-out essays, what it was trained on and
    where, and the licence of the data it derives from."""
    lay = RunLayout(run)
    lines = [
        f"# discourse-rl model (exported from the run {run.name})",
        "",
        "Labels the discourse elements of student argumentative essays (Lead, Position, Claim,",
        "Counterclaim, Rebuttal, Evidence, Concluding Statement). Load it with",
        '`Labeller.load("model.zip")`, `discourse-rl label ESSAY.txt --model model.zip` or',
        "`discourse-rl serve --model model.zip`.",
        "",
        *([note, ""] if note else []),
        f"Default stage: {stage}. Stages in this file: {', '.join(stages)}.",
        "",
    ]
    rows = [(s, scores[s]) for s in stages if s in scores]
    if rows:
        types = list(rows[0][1].per_type)
        lines += [
            f"## Held-out scores ({rows[0][1].source})",
            "",
            "| stage | macro F1 | " + " | ".join(types) + " |",
            "|---" * (len(types) + 2) + "|",
        ]
        for name, sc in rows:
            per = " | ".join(f"{sc.per_type[t]:.3f}" for t in types)
            lines.append(f"| {name} | {sc.macro_f1:.3f} | {per} |")
        lines.append("")
    lines += ["## Training", ""]
    stages_file = read_json(lay.stages, {})
    if isinstance(stages_file, dict):
        for step, rec in stages_file.items():
            if isinstance(rec, dict):
                secs = rec.get("seconds")
                where = rec.get("data") or "the embedded sample"
                took = f"{secs:,.0f} s" if isinstance(secs, (int, float)) else "?"
                lines.append(f"- step `{step}`: {took}, data {where}")
    report = lay.report.read_text(encoding="utf-8") if lay.report.is_file() else ""
    machine = next((ln for ln in report.splitlines() if "Machine:" in ln), "")
    if machine:
        lines.append(f"- {machine.strip()}")
    lines += [
        f"- exported {datetime.now(UTC):%Y-%m-%d} by discourse-rl {__version__}"
        + (f" at commit {_commit()}" if _commit() else ""),
        "- the run's resolved configuration is `config.toml` in this file",
        "",
        "## Licence and attribution",
        "",
        "Trained on essays of the PERSUADE corpus by Scott Crossley et al. (The Learning Agency",
        "Lab, Georgia State University), licensed CC BY-NC-SA 4.0. This model is derived from",
        "them and carries the same licence: non-commercial use only, with attribution, shared",
        "under the same terms. See LICENSE.md.",
        "",
    ]
    return "\n".join(lines)


def _commit() -> str:
    """The source tree's git commit, if the code runs from a checkout (else empty)."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except OSError:
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""
