"""ggml's C loops over floats, vectorized across blocks with the same float32 results.

The quantizers scan a group of weights with loops like ``for (...) sum += x[i]`` or
``if (ax > amax) { amax = ax; max = x[i]; }``. numpy's reductions give other bits (np.sum adds pairwise)
or other choices (argmax picks NaN), so the loops are written out here, once.
"""

from __future__ import annotations

import numpy as np

#: ggml's GROUP_MAX_EPS: a group whose largest magnitude is below it counts as all zero.
GROUP_MAX_EPS = np.float32(1e-15)


def sequential_sum(terms: np.ndarray) -> np.ndarray:
    """C's ``float s = 0; for (i...) s += terms[i];`` for every column of terms (n, m) at once.

    np.sum adds pairwise and rounds differently; this adds one row at a time, as the C loop does.
    """
    total = np.zeros(terms.shape[1:], dtype=np.float32)
    for term in terms:
        total += term
    return total


def running_max(values: np.ndarray) -> np.ndarray:
    """C's ``float max = 0; for (j...) if (v[j] > max) max = v[j];`` along axis 1 of values (n, k)."""
    result = np.zeros(len(values), dtype=np.float32)
    for column in values.T:
        result = np.where(column > result, column, result)
    return result


def signed_absmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Along ``axis``, the value of largest magnitude, with its sign.

    As the C loop ``amax = 0; if (fabsf(v) > amax) { amax = fabsf(v); max = v; }``: the first one wins
    ties, NaN never wins, and a group with nothing above zero (all ±0 or NaN) gives +0.
    """
    magnitude = np.abs(x)
    magnitude = np.where(magnitude > 0, magnitude, np.float32(0))  # NaN > 0 is False
    first = np.expand_dims(magnitude.argmax(axis=axis), axis)
    picked = np.take_along_axis(x, first, axis=axis).squeeze(axis)
    return np.where(magnitude.max(axis=axis) > 0, picked, np.float32(0))


def inverse(d: np.ndarray) -> np.ndarray:
    """C's ``id = d ? 1.0f/d : 0.0f``."""
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)
