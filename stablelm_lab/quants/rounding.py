"""The ways ggml's C code turns a float into an integer, reproduced bit for bit in numpy."""

from __future__ import annotations

import numpy as np

#: 1.5·2^23: adding it to a float32 of magnitude below 2^22 leaves the rounded integer in the mantissa.
_MAGIC = np.float32(12582912)


def nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: add 1.5·2^23 in float32 and read the low 23 bits of the sum, minus 2^22.

    For |v| <= 2^22 this is round half to even (np.rint). ggml only asserts that bound, and release
    builds drop the assert, so the quantizers do meet larger values, inf and NaN (a scale that
    overflowed, a sub-block whose range is a few ulps of a large offset); C then returns the
    wrapped-around bits, NaN reads as 0 and ±inf as -2^22, and so does this.
    """
    biased = np.asarray(v, dtype=np.float32) + _MAGIC
    return (biased.view(np.int32) & 0x007FFFFF) - 0x00400000


def round_away_from_zero(v: np.ndarray) -> np.ndarray:
    """C's ``roundf``: halves go away from zero. ``a - floor(a)`` is exact, so the test is exact."""
    a = np.abs(v)
    whole = np.floor(a)
    rounded = whole + (a - whole >= 0.5)
    return np.copysign(rounded, v).astype(np.int32)


def truncate(v: np.ndarray) -> np.ndarray:
    """C's cast of a float to an integer type, ``(int8_t)v``: toward zero (ggml keeps v in range)."""
    with np.errstate(invalid="ignore"):
        return np.trunc(v).astype(np.int32)
