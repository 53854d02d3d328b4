"""Per-essay rewards computed from the metric: the one home of every reward the project's RL
trains on (the segment agent's trainers in `decoders.agent`, the tagger's RL phase in `ner.rl`).

Every reward starts from `metric.essay_counts` (TP, FP, FN per class of one essay's labelling
against its true spans), so a policy is rewarded by the metric it is scored with:

- "f1": the essay's F-score (`metric.essay_f1`);
- "jaccard": the seed's per-essay score TP / (TP + FP + FN) (`metric.essay_jaccard`);
- "macro": the essay's first-order contribution to the corpus macro F1 (`MacroReward`). It needs
  running class statistics over many labellings, so only trainers that sample many offer it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from discourse_rl.core import metric
from discourse_rl.core.arrays import IntArray, Spans
from discourse_rl.core.data import CLASSES, Corpus

Float64Array = npt.NDArray[np.float64]

ESSAY_REWARDS: dict[str, Callable[[IntArray], float]] = {
    "f1": metric.essay_f1,
    "jaccard": metric.essay_jaccard,
}
"""Rewards that depend on one essay's counts alone (the step-wise environment offers these)."""
REWARDS = (*ESSAY_REWARDS, "macro")


def gold_table(corpus: Corpus, ids: Sequence[str]) -> dict[str, Spans]:
    """True spans per essay, (class index, word_start, word_end): the answer key every reward
    is computed against."""
    out: dict[str, Spans] = {}
    for i in ids:
        el = corpus.essay_elements(i)
        out[i] = tuple(el[c].to_numpy(np.int64) for c in ("class_idx", "word_start", "word_end"))  # type: ignore[assignment]
    return out


def essay_reward(counts: IntArray, kind: str) -> float:
    """The `kind` reward ('f1' or 'jaccard') of one essay's (7, 3) counts."""
    try:
        fn = ESSAY_REWARDS[kind]
    except KeyError:
        raise ValueError(f"reward must be one of {tuple(ESSAY_REWARDS)}, got {kind!r}") from None
    return fn(counts)


class MacroReward:
    """An essay's first-order contribution to the corpus macro F1.

    With corpus totals D_c = 2 TP_c + FP_c + FN_c and F_c = 2 TP_c / D_c, adding an essay's
    (tp, fp, fn) moves F_c by about (2 tp (1 - F_c) - F_c (fp + fn)) / D_c. Averaged over the
    classes, with D_c per essay, this weighs a rare class's hits and misses as the macro mean
    does. F_c and D_c are moving averages over the sampled labellings.
    """

    def __init__(self, counts: IntArray, momentum: float) -> None:
        self.momentum = momentum
        self.stats = self._stats(counts)

    @staticmethod
    def _stats(counts: IntArray) -> Float64Array:
        """(7, 3) mean per-essay TP, FP, FN."""
        return np.asarray(counts.reshape(-1, len(CLASSES), 3).mean(0), dtype=np.float64)

    def update(self, counts: IntArray) -> None:
        m = self.momentum
        self.stats = m * self.stats + (1 - m) * self._stats(counts)

    def __call__(self, counts: IntArray) -> Float64Array:
        tp, fp, fn = self.stats.T
        d = 2 * tp + fp + fn
        live = d > 1e-9
        f = np.where(live, 2 * tp / np.maximum(d, 1e-9), 0.0)
        c = counts.astype(np.float64)
        gain = (2 * c[..., 0] * (1 - f) - f * (c[..., 1] + c[..., 2])) / np.maximum(d, 1e-9)
        return np.asarray(np.where(live, gain, 0.0).sum(-1) / max(int(live.sum()), 1))


def rewards(counts: IntArray, kind: str, macro: MacroReward | None = None) -> Float64Array:
    """Reward of each labelling from its (..., 7, 3) counts; 'macro' needs `macro`."""
    if kind == "macro":
        if macro is None:
            raise ValueError("the 'macro' reward needs its class statistics (MacroReward)")
        return macro(counts)
    flat = counts.reshape(-1, len(CLASSES), 3)
    return np.array([essay_reward(c, kind) for c in flat], np.float64).reshape(counts.shape[:-2])
