"""Saving and loading a run's segments (RUN/segments.npz)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from discourse_rl.core import artefacts
from discourse_rl.core.common import DiscourseRLError, atomic_save
from discourse_rl.decoders.segments.types import (
    N_BASE_FEATURES,
    EssaySegments,
)


def save_segments(path: str | Path, segs: Sequence[EssaySegments]) -> None:
    """All essays' segments in one .npz (gold actions stored as -1 where unknown)."""
    counts = np.array([s.n_segments for s in segs], dtype=np.int64)
    n_feat = segs[0].features.shape[1] if segs else N_BASE_FEATURES

    def cat(
        xs: list[npt.NDArray[np.generic]], dtype: type, width: int = 0
    ) -> npt.NDArray[np.generic]:
        shape = (0, width) if width else (0,)
        return np.concatenate(xs).astype(dtype) if xs else np.zeros(shape, dtype)

    gold = [s.gold_action if s.gold_action is not None else np.full(s.n_segments, -1) for s in segs]

    def write(tmp: Path) -> None:
        with tmp.open("wb") as fh:
            np.savez(
                fh,
                ids=np.array([s.essay_id for s in segs], dtype=str),
                n_words=np.array([s.n_words for s in segs], dtype=np.int64),
                counts=counts,
                word_start=cat([s.word_start for s in segs], np.int64),
                word_end=cat([s.word_end for s in segs], np.int64),
                features=cat([s.features for s in segs], np.float32, n_feat),
                gold_action=cat(gold, np.int64),
            )

    atomic_save(path, write)


def load_segments(path: str | Path) -> list[EssaySegments]:

    data = artefacts.load_npz(path, "segments file", "a segments file")
    need = {"ids", "n_words", "counts", "word_start", "word_end", "features", "gold_action"}
    if not need <= set(data):
        raise DiscourseRLError(f"{path}: not a segments file (missing {sorted(need - set(data))})")
    bounds = np.concatenate(([0], np.cumsum(data["counts"])))
    out = []
    for k, eid in enumerate(data["ids"]):
        sl = slice(bounds[k], bounds[k + 1])
        gold = data["gold_action"][sl]
        out.append(
            EssaySegments(
                str(eid),
                int(data["n_words"][k]),
                data["word_start"][sl],
                data["word_end"][sl],
                data["features"][sl],
                None if gold.size and gold[0] < 0 else gold,
            )
        )
    return out
