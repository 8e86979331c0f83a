"""The two ways ggml's C code turns a float into an integer, reproduced bit for bit in numpy."""

from __future__ import annotations

import numpy as np


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: adds 1.5·2^23 and reads the mantissa, i.e. round half to even.

    That is exactly ``np.rint`` for every |v| <= 2^22 (ggml asserts this bound).
    """
    return np.rint(v).astype(np.int32)


def round_away_from_zero(v: np.ndarray) -> np.ndarray:
    """C's ``roundf``: halves go away from zero. ``a - floor(a)`` is exact, so the test is exact."""
    a = np.abs(v)
    whole = np.floor(a)
    rounded = whole + (a - whole >= 0.5)
    return np.copysign(rounded, v).astype(np.int32)
