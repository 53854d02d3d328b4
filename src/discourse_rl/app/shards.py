"""`predict` over many essays in shares: `--shard I/N` (a scheduler's jobs) or one share per
process of a launcher. Each share writes its own part beside the output; the parts, back to
back in share order, are the output a single process would have written, and the share that
finds every part present (or the main process, under a launcher) combines them atomically.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from discourse_rl.core.common import DiscourseRLError, atomic_write_text


@dataclass(frozen=True)
class Shard:
    """Share `index` (from 0) of `count`."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if m is None or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise DiscourseRLError(f"--shard {text}: expected I/N with 0 <= I < N, e.g. 0/4")
        return cls(int(m.group(1)), int(m.group(2)))

    def part(self, out: Path, index: int | None = None) -> Path:
        i = self.index if index is None else index
        return out.parent / f"{out.name}.shard-{i}-of-{self.count}"

    def parts(self, out: Path) -> list[Path]:
        return [self.part(out, i) for i in range(self.count)]


def combine(out: Path, shard: Shard, fmt: str) -> bool:
    """Write `out` from every share's part and remove the parts; False (nothing done) while a
    part is missing. A csv keeps the first part's header only."""
    parts = shard.parts(out)
    try:
        texts = [p.read_text(encoding="utf-8") for p in parts]
    except FileNotFoundError:
        # A share still running, or another share combined them first.
        return False
    atomic_write_text(out, join(texts, fmt))
    for p in parts:
        p.unlink(missing_ok=True)
    return True


def join(texts: Sequence[str], fmt: str) -> str:
    if fmt != "csv":
        return "".join(texts)
    head, *rest = texts
    return head + "".join(t.split("\n", 1)[1] if "\n" in t else "" for t in rest)
