"""The agent on top of gbdt: gbdt's candidate scores and labelling as segment inputs, gbdt's
labelling as the behaviour to clone, then the episode trainer on the metric (KL to that start).

* `cross_fit_gbdt`: gbdt's scores and spans for the training essays out of fold (each fold's
  essays by a model fitted on the other folds), so the agent does not learn to trust scores that
  are in-sample and overconfident; the held-out essays get the model fitted on every training
  essay.
* `gbdt_segments`: segments cut where the tagger's readings cut them (`segments.cut_points`)
  and also at every start and end of gbdt's spans, so that the agent can reproduce gbdt's
  labelling exactly; each segment's features are the usual ones plus `N_GBDT_FEATURES`: per
  class the best gbdt score of a candidate covering the segment, starting at its first word and
  ending at its last word, and the action gbdt's labelling gives the segment (one-hot).
* `spans_actions`: the segment actions a labelling gives (gold's rule, for any spans): BC clones
  gbdt's labelling with them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd

from discourse_rl.core.arrays import FloatArray, IntArray
from discourse_rl.core.data import CLASS_INDEX, CLASSES, Corpus, Essay
from discourse_rl.decoders.gbdt.gbdt import SpanModel, TrainingTable, fit_table
from discourse_rl.decoders.gbdt.model import CandidateTable, GbdtConfig, score_candidates
from discourse_rl.decoders.gbdt.search import inner_folds
from discourse_rl.decoders.segments import (
    N_ACTIONS,
    EssaySegments,
    SegmentConfig,
    cut_points,
    essay_gold_actions,
    punctuation_starts,
    rich_segment_features,
    segment_features,
)

N_CLASSES = len(CLASSES)
N_GBDT_FEATURES = 3 * N_CLASSES + N_ACTIONS
Spans = tuple[IntArray, IntArray, IntArray]
Scored = tuple[IntArray, IntArray, IntArray, npt.NDArray[np.float64]]
"""Candidates' class, start, end and gbdt score."""


@dataclass(frozen=True, eq=False)
class GbdtView:
    """gbdt's reading of some essays: every candidate with its score, and the selected spans."""

    table: CandidateTable
    score: npt.NDArray[np.float64]
    spans: pd.DataFrame
    """id, class, word_start, word_end (`SpanModel.predict_table`'s frame)."""

    def essay_candidates(self) -> dict[str, Scored]:
        out = {}
        order = np.argsort(self.table.essay, kind="stable")
        bounds = np.searchsorted(self.table.essay[order], np.arange(len(self.table.ids) + 1))
        for k, eid in enumerate(self.table.ids):
            r = order[bounds[k] : bounds[k + 1]]
            out[eid] = (self.table.cls[r], self.table.start[r], self.table.end[r], self.score[r])
        return out

    def essay_spans(self) -> dict[str, Spans]:
        out: dict[str, Spans] = {}
        for eid, g in self.spans.groupby("id", sort=False):
            out[str(eid)] = (
                np.asarray(g["class"].map(CLASS_INDEX), np.int64),
                g["word_start"].to_numpy(np.int64),
                g["word_end"].to_numpy(np.int64),
            )
        return out


def view_of(
    model: SpanModel, table: CandidateTable, essays: Mapping[str, Essay] | None = None
) -> GbdtView:
    """`essays`: their text, for gbdt's rules that read it (`short_evidence`)."""
    return GbdtView(
        table, score_candidates(model.boosters, table.features), model.predict_table(table, essays)
    )


def cross_fit_gbdt(
    data: TrainingTable, corpus: Corpus, cfg: GbdtConfig, folds: int = 2
) -> GbdtView:
    """gbdt's scores and spans of the training essays, each fold by a model blind to it."""
    score = np.zeros(data.table.cls.size)
    frames = []
    for part, held, held_rows in inner_folds(data, folds, [cfg.seed, 11]):
        model = fit_table(part, corpus, cfg)
        in_fold = np.isin(data.table.essay, held_rows)
        score[in_fold] = score_candidates(model.boosters, data.table.features[in_fold])
        frames.append(model.predict_table(held, corpus.essays))
    spans = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return GbdtView(data.table, score, spans)


def spans_actions(word_start: IntArray, word_end: IntArray, spans: Spans) -> IntArray:
    """Per segment: the action a labelling by `spans` gives it (a segment takes the span that
    covers most of its words if that covers over half of them; it begins the span unless the
    segment before took the same one)."""
    g_cls, g_start, g_end = spans
    n = word_start.size
    actions = np.zeros(n, dtype=np.int64)
    if g_cls.size == 0 or n == 0:
        return actions
    inter = np.minimum(word_end[:, None], g_end[None, :]) - np.maximum(
        word_start[:, None], g_start[None, :]
    )
    inter = np.maximum(inter, 0)
    best = inter.argmax(1)
    owned = 2 * inter[np.arange(n), best] > word_end - word_start
    owner = np.where(owned, best, -1)
    prev = np.concatenate(([-1], owner[:-1]))
    cls = g_cls[np.maximum(owner, 0)]
    actions[owned] = np.where(owner == prev, 2 + 2 * cls, 1 + 2 * cls)[owned]
    return actions


def gbdt_segment_features(
    word_start: IntArray,
    word_end: IntArray,
    cand: Scored,
    spans: Spans,
) -> FloatArray:
    """(n_segments, N_GBDT_FEATURES): per class the best score of a candidate covering the
    segment, starting at its first word, ending at its last word; gbdt's action (one-hot)."""
    c, s, e, score = cand
    n = word_start.size
    out = np.zeros((n, N_GBDT_FEATURES), np.float32)
    if n == 0:
        return out
    onehot = np.eye(N_CLASSES, dtype=np.float64)[c]  # (m, 7)
    sc = onehot * score[:, None]
    covers = (s[None, :] <= word_start[:, None]) & (e[None, :] >= word_end[:, None])  # (n, m)
    starts = s[None, :] == word_start[:, None]
    ends = e[None, :] == word_end[:, None]
    for j, mask in enumerate((covers, starts, ends)):
        # max over candidates of score * one-hot, where the mask holds (scores are >= 0)
        out[:, j * N_CLASSES : (j + 1) * N_CLASSES] = (
            (mask[:, :, None] * sc[None, :, :]).max(1) if c.size else 0.0
        )
    act = spans_actions(word_start, word_end, spans)
    out[np.arange(n), 3 * N_CLASSES + act] = 1.0
    return out


def gbdt_segments(
    probs: Mapping[str, FloatArray],
    ids: Sequence[str],
    seg_cfg: SegmentConfig,
    words: Mapping[str, Sequence[str]],
    paragraphs: Mapping[str, npt.NDArray[np.bool_]],
    view: GbdtView,
) -> list[EssaySegments]:
    """Segments of `ids` cut also at gbdt's span edges, with gbdt's features appended."""
    cands = view.essay_candidates()
    spans_by = view.essay_spans()
    empty: Spans = (np.zeros(0, np.int64),) * 3  # type: ignore[assignment]
    out = []
    for eid in ids:
        p = np.asarray(probs[eid], dtype=np.float32)
        n = p.shape[0]
        w = words[eid]
        sp = spans_by.get(eid, empty)
        edges = np.concatenate([sp[1], sp[2]])
        starts = np.union1d(cut_points(p, seg_cfg, w), edges[(edges > 0) & (edges < n)])
        starts = np.union1d(starts, [0]).astype(np.int64)
        ends = np.append(starts[1:], n).astype(np.int64)
        feats = segment_features(p, starts, ends, seg_cfg.start_window)
        sent, clause = punctuation_starts(w)
        feats = np.concatenate(
            [feats, np.stack([sent[starts], clause[starts]], 1).astype(np.float32)], 1
        )
        if seg_cfg.rich_features:
            para = np.asarray(paragraphs[eid], dtype=np.bool_)
            rich = rich_segment_features(p, starts, ends, sent | para, para)
            feats = np.concatenate([feats, rich], 1)
        cand: Scored = cands.get(eid, (*empty, np.zeros(0, np.float64)))
        feats = np.concatenate([feats, gbdt_segment_features(starts, ends, cand, sp)], 1)
        out.append(EssaySegments(eid, n, starts, ends, feats.astype(np.float32)))
    return out


def with_actions(
    segs: Sequence[EssaySegments], view: GbdtView | None, corpus: Corpus | None = None
) -> list[EssaySegments]:
    """The segments with `gold_action` set to gbdt's labelling (`view`) or the true one."""
    if view is None:
        assert corpus is not None
        return [s.with_gold(essay_gold_actions(s, corpus)) for s in segs]
    spans_by = view.essay_spans()
    empty: Spans = (np.zeros(0, np.int64),) * 3  # type: ignore[assignment]
    return [
        s.with_gold(spans_actions(s.word_start, s.word_end, spans_by.get(s.essay_id, empty)))
        for s in segs
    ]
