"""A run folder's format (RUN/format.json): which version wrote it, and one clear line for a
folder this version cannot read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from discourse_rl import __version__
from discourse_rl.core.common import DiscourseRLError, atomic_write_text
from discourse_rl.core.layout import FORMAT_VERSION, RunLayout
from discourse_rl.core.records import _read_json, older_format


@dataclass(frozen=True)
class RunFormat:
    """RUN/format.json: the folder's format version and the code that wrote it."""

    format: int
    discourse_rl: str
    torch: str | None
    transformers: str | None

    @classmethod
    def current(cls) -> RunFormat:

        def ver(pkg: str) -> str | None:
            try:
                return version(pkg)
            except PackageNotFoundError:
                return None

        return cls(FORMAT_VERSION, __version__, ver("torch"), ver("transformers"))

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(vars(self), indent=2) + "\n")

    def versions(self) -> dict[str, str | None]:
        return {
            "discourse_rl": self.discourse_rl,
            "torch": self.torch,
            "transformers": self.transformers,
        }


def version_changes(then: Mapping[str, str | None], now: Mapping[str, str | None]) -> list[str]:
    """'torch 2.1.0 -> 2.13.0' for each package whose version differs (unknown ones skipped)."""
    return [
        f"{pkg} {then[pkg]} -> {now.get(pkg)}"
        for pkg in sorted(then)
        if then[pkg] is not None and then[pkg] != now.get(pkg)
    ]


def check_format(run: str | Path) -> RunFormat | None:
    """The run folder's format; one clear error for a folder an other version wrote.

    None for a folder holding no run yet (a fresh `--out`)."""
    lay = RunLayout(run)
    if lay.format.is_file():
        d = _read_json(lay.format)
        fmt = d.get("format")
        if not isinstance(fmt, int):
            raise DiscourseRLError(f"{lay.format}: no format version")
        if fmt < FORMAT_VERSION:
            raise DiscourseRLError(older_format(lay.root, fmt))
        if fmt > FORMAT_VERSION:
            raise DiscourseRLError(
                f"{lay.root}: written by a newer discourse-rl (format {fmt}; this one reads "
                f"format {FORMAT_VERSION}): upgrade discourse-rl"
            )
        return RunFormat(fmt, str(d.get("discourse_rl")), d.get("torch"), d.get("transformers"))
    if lay.stages.is_file() or lay.ner_config.is_file() or lay.legacy_ppo.is_dir():
        raise DiscourseRLError(older_format(lay.root, 1))
    return None
