"""Array type aliases shared by every module (one definition, one meaning)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
"""Indices, word ranges, class ids, actions."""
FloatArray = npt.NDArray[np.float32]
"""Word probabilities and features (float32; float16 only on disk)."""
BoolArray = npt.NDArray[np.bool_]
"""Masks."""
