"""Array type aliases shared by every module (one definition, one meaning)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
"""Indices, word ranges, class ids, actions."""
FloatArray = npt.NDArray[np.float32]
"""Word probabilities and features (float32; float16 only on disk)."""
BoolArray = npt.NDArray[np.bool_]
"""Masks."""
Spans = tuple[IntArray, IntArray, IntArray]
"""An essay's spans as three parallel arrays: class index, word_start, word_end (half-open)."""
Probs = Mapping[str, FloatArray]
"""Essay id -> word probabilities (n_words x 15), the tagger's hand-off to every decoder."""
