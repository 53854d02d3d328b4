"""Rules after gbdt's selection, after the Kaggle runner-up's post-processing (each a switch,
all off by default, to be measured):

* `one_per_essay`: at most one span of each class the constrained decoder limits (Lead,
  Position, Concluding Statement on the shared data): the highest-scoring one stays;
* `repair_gap`: two spans of the same class in `repair_classes` with at most this many words
  between them and no other span between them are joined into one (the tagger broke it);
* `short_evidence`: an Evidence span shorter than this many words starts at the previous
  sentence start instead, if no other span lies in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from discourse_rl.core.common import DiscourseRLError
from discourse_rl.core.data import CLASS_INDEX, Essay, spans_to_frame
from discourse_rl.decoders.gbdt.features import essay_layout
from discourse_rl.decoders.gbdt.model import CandidateTable, GbdtConfig


@dataclass(frozen=True)
class RuleSettings:
    one_per_essay: bool = False
    repair_gap: int = -1
    """-1: off; 0 joins only touching spans."""
    repair_classes: tuple[str, ...] = ("Evidence", "Claim", "Counterclaim", "Rebuttal")
    short_evidence: int = 0

    @classmethod
    def of(cls, cfg: GbdtConfig) -> RuleSettings:
        """The rules a gbdt config switches on (`one_per_essay`, `repair_gap`, `short_evidence`)."""
        return cls(cfg.one_per_essay, cfg.repair_gap, short_evidence=cfg.short_evidence)

    @property
    def active(self) -> bool:
        return self.one_per_essay or self.repair_gap >= 0 or self.short_evidence > 0


@dataclass
class _Span:
    cls: int
    start: int
    end: int
    score: float


def essay_rules(
    spans: list[_Span],
    unique: frozenset[int],
    sentence: npt.NDArray[np.bool_] | None,
    cfg: RuleSettings,
) -> list[_Span]:
    """One essay's spans after the rules (sorted by start)."""
    out = sorted(spans, key=lambda x: (x.start, x.end))
    if cfg.one_per_essay:
        best: dict[int, _Span] = {}
        for sp in out:
            if sp.cls in unique and (sp.cls not in best or sp.score > best[sp.cls].score):
                best[sp.cls] = sp
        out = [sp for sp in out if sp.cls not in unique or best[sp.cls] is sp]
    if cfg.repair_gap >= 0:
        classes = {CLASS_INDEX[c] for c in cfg.repair_classes}
        joined: list[_Span] = []
        for sp in out:
            prev = joined[-1] if joined else None
            if (
                prev is not None
                and prev.cls == sp.cls
                and sp.cls in classes
                and 0 <= sp.start - prev.end <= cfg.repair_gap
            ):
                joined[-1] = _Span(prev.cls, prev.start, sp.end, max(prev.score, sp.score))
            else:
                joined.append(sp)
        out = joined
    if cfg.short_evidence > 0 and sentence is not None:
        ev = CLASS_INDEX["Evidence"]
        pos = np.flatnonzero(sentence)
        for k, sp in enumerate(out):
            if sp.cls != ev or sp.end - sp.start >= cfg.short_evidence:
                continue
            floor = out[k - 1].end if k > 0 else 0
            before = pos[(pos < sp.start) & (pos >= floor)]
            if before.size:
                out[k] = _Span(sp.cls, int(before[-1]), sp.end, sp.score)
    return out


def apply_rules(
    rows: npt.NDArray[np.int64],
    score: npt.NDArray[np.float64],
    table: CandidateTable,
    unique: frozenset[int],
    essays: Mapping[str, Essay] | None,
    cfg: RuleSettings,
) -> pd.DataFrame:
    """The spans of a candidate table's kept `rows` (gbdt's `kept_rows`, with every row's
    `score`) after the rules; `unique`: the classes of at most one span per essay. `essays`
    (their sentence starts) only for `short_evidence`."""
    if cfg.short_evidence > 0 and essays is None:
        raise DiscourseRLError("gbdt: short_evidence needs the essays' text")
    by_essay: dict[int, list[_Span]] = {}
    for r in rows.tolist():
        sp = _Span(int(table.cls[r]), int(table.start[r]), int(table.end[r]), float(score[r]))
        by_essay.setdefault(int(table.essay[r]), []).append(sp)
    ids: list[str] = []
    cls: list[int] = []
    start: list[int] = []
    end: list[int] = []
    for k, group in sorted(by_essay.items()):
        eid = table.ids[k]
        sent = None
        if cfg.short_evidence > 0:
            assert essays is not None
            lay = essay_layout(essays[eid])
            sent = lay.sentence | lay.paragraph
        for sp in essay_rules(group, unique, sent, cfg):
            ids.append(eid)
            cls.append(sp.cls)
            start.append(sp.start)
            end.append(sp.end)
    return spans_to_frame(
        ids, np.array(cls, np.int64), np.array(start, np.int64), np.array(end, np.int64)
    )
