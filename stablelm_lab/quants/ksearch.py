"""The scale searches of the K-quant quantizers: make_qkx2_quants, make_qx_quants, and the last pass.

ggml's reference quantizers of Q2_K, Q4_K and Q5_K fit every sub-block with ``x ≈ scale·q - min``
using ``make_qkx2_quants``: a first guess from the sub-block's range, then ``nstep + 1`` trial scales,
each followed by the weighted least-squares scale and min for the levels it chose; the trial with the
smallest weighted error wins. Here the search runs for many sub-blocks at once, with the exact float32
operations of the C code, in its order. (Q3_K and Q6_K search symmetric scales instead, with
make_q3_quants and make_qx_quants, through ``search_sub_blocks``.) After the search, the scales and
mins are quantized themselves, and ``requantize_levels`` chooses every level again from the stored
values, in all five.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .cfloat import GROUP_MAX_EPS, sequential_sum, signed_absmax
from .rounding import nearest_int

#: Sub-blocks searched per step: the search's temporaries then stay in cache.
SEARCH_CHUNK = 8192


# ---- make_qkx2_quants -----------------------------------------------------------------------------
def make_qkx2_quants(
    x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants for m sub-blocks at once.

    x, weights: float32 (m, n), one sub-block of n weights per row.
    Returns scale (m,), the_min (m,) and the levels L (m, n) uint8 in 0..nmax, with x ≈ scale·L - the_min.
    """
    parts = [
        _make_qkx2_quants(x[i : i + SEARCH_CHUNK], weights[i : i + SEARCH_CHUNK], nmax, rmin, rdelta, nstep, use_mad)
        for i in range(0, len(x), SEARCH_CHUNK)
    ]
    if not parts:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(x.shape, np.uint8)
    return tuple(np.concatenate(column) for column in zip(*parts))


def _make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    f32 = np.float32
    x_t = np.ascontiguousarray(x.T)  # (n, m): one weight index per row, as the C loops run
    w_t = np.ascontiguousarray(weights.T)

    lo, hi, sum_w, sum_x = _first_pass(x_t, w_t)
    lo = np.where(lo > 0, f32(0), lo)  # the min is never above zero
    flat = hi == lo

    # the first guess: the range maps onto 0..nmax
    iscale = f32(nmax) / (hi - lo)
    scale = f32(1) / iscale
    levels = _levels(iscale, x_t, lo, nmax)
    best_error = _weighted_error(scale, lo, levels, x_t, w_t, use_mad)
    best_min = lo

    # C keeps using the variable min, which the best trial so far has overwritten
    for step in range(nstep + 1) if nstep >= 1 else ():
        iscale = (f32(rmin) + f32(rdelta) * f32(step) + f32(nmax)) / (hi - best_min)
        trial = _levels(iscale, x_t, best_min, nmax)
        wl = w_t * trial
        sum_l = sequential_sum(wl)
        sum_l2 = sequential_sum(wl * trial)
        sum_xl = sequential_sum(wl * x_t)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        min_above_zero = this_min > 0
        this_scale = np.where(min_above_zero, sum_xl / sum_l2, this_scale)
        this_min = np.where(min_above_zero, f32(0), this_min)
        cur_error = _weighted_error(this_scale, this_min, trial, x_t, w_t, use_mad)
        better = (D > 0) & (cur_error < best_error)
        levels = np.where(better, trial, levels)
        best_error = np.where(better, cur_error, best_error)
        scale = np.where(better, this_scale, scale)
        best_min = np.where(better, this_min, best_min)

    scale = np.where(flat, f32(0), scale)  # C returns early for a flat sub-block: L = 0
    the_min = -np.where(flat, lo, best_min)
    levels = np.where(flat, f32(0), levels)
    return scale, the_min, levels.T.astype(np.uint8)


def _first_pass(x_t: np.ndarray, w_t: np.ndarray):
    """min, max, sum_w and sum_x of make_qkx2_quants, as its first loop finds them: seeded with element
    0, then one element at a time (strict comparisons: a NaN never becomes the min or max)."""
    lo, hi = x_t[0], x_t[0]
    sum_w = w_t[0].copy()
    sum_x = sum_w * x_t[0]
    for x, w in zip(x_t[1:], w_t[1:]):
        lo = np.where(x < lo, x, lo)
        hi = np.where(x > hi, x, hi)
        sum_w += w
        sum_x += w * x
    return lo, hi, sum_w, sum_x


def _levels(iscale: np.ndarray, x_t: np.ndarray, lo: np.ndarray, nmax: int) -> np.ndarray:
    """``MAX(0, MIN(nmax, nearest_int(iscale*(x - min))))`` as float32 (exact small integers)."""
    return np.clip(nearest_int(iscale * (x_t - lo)), 0, nmax).astype(np.float32)


def _weighted_error(scale, the_min, levels, x_t, w_t, use_mad: bool) -> np.ndarray:
    """C's ``sum of w·|scale·L + min - x|`` (use_mad) or ``w·(scale·L + min - x)²``, in C's order."""
    diff = scale * levels + the_min - x_t
    diff = np.abs(diff) if use_mad else diff * diff
    return sequential_sum(w_t * diff)


# ---- make_qx_quants: the symmetric search of Q6_K (and Q3_K, Q4_0, Q5_0 with an importance matrix) ---
def make_qx_quants(x: np.ndarray, nmax: int, weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw)`` for many groups at once.

    x: float32 (n, groups), element i of every group in row i (so ``x[i]`` reads as in the C);
    weights: qw in the same layout, or None for C's qw = NULL, which weighs each element by x².
    Returns (scale (groups,), L (n, groups) in 0..2·nmax-1) with x ≈ scale · (L - nmax).

    The search: start from iscale = -nmax/max (max = the signed value of largest magnitude), then try
    the 18 scales -(nmax + 0.1·is)/max for is = -9..9, is != 0, keeping a candidate when it lowers the
    error weighted by w (x², or qw) -- i.e. raises sumlx²/suml2, where sumlx = Σ w·x·l and suml2 = Σ w·l².
    """
    max_value = signed_absmax(x, axis=0)
    all_zero = np.abs(max_value) < GROUP_MAX_EPS
    w = x * x if weights is None else weights
    wx = w * x

    def quants(iscale):
        return np.clip(nearest_int(iscale * x), -nmax, nmax - 1)

    def sums(l):
        lf = l.astype(np.float32)
        return sequential_sum(wx * lf), sequential_sum(w * lf * lf)

    l = quants(np.float32(-nmax) / max_value)
    sumlx, suml2 = sums(l)
    scale = np.where(suml2 != 0, sumlx / suml2, np.float32(0))  # C: suml2 ? ... (NaN is true)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(np.float32(nmax) + np.float32(0.1) * np.float32(step)) / max_value
        trial = quants(iscale)
        sumlx, suml2 = sums(trial)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        l = np.where(better, trial, l)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    scale = np.where(all_zero, np.float32(0), scale)
    return scale, np.where(all_zero, 0, l + nmax)


# ---- the last pass -------------------------------------------------------------------------------
def requantize_levels(
    x: np.ndarray, d: np.ndarray, levels: np.ndarray, lowest: int, highest: int, dm: np.ndarray | None = None
) -> np.ndarray:
    """The last pass of every K-quantizer: levels again, from the scales (and mins) as they are stored.

    x (n, k, size) weights, d (n, k) the decoded sub-block scales, levels (n, k, size) from the search.
    level = clamp(nearest_int(x/d), lowest, highest) - lowest, or with a min dm (n, k):
    clamp(nearest_int((x + dm)/d), lowest, highest). C's ``if (!d) continue;`` keeps the search's
    levels where d is zero. Returns uint8.
    """
    d = d[..., None]
    v = x / d if dm is None else (x + dm[..., None]) / d
    new = np.clip(nearest_int(v), lowest, highest) - lowest
    return np.where(d != 0, new, levels).astype(np.uint8)


def search_sub_blocks(
    x: np.ndarray, search: Callable[..., tuple[np.ndarray, np.ndarray]], nmax: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run a symmetric scale search (make_qx_quants, make_q3_quants) on the 16 sub-blocks of 16 weights
    of every super-block of x (n, 256): scales (n, 16) and levels (n, 16, 16) in 0..2·nmax-1. With
    weights (n, 256), the search minimizes the error weighted by them (make_qx_quants' qw)."""
    n = len(x)
    groups = np.ascontiguousarray(x.reshape(n * 16, 16).T)  # (16, n·16): element i of each sub-block
    if weights is None:
        scales, levels = search(groups, nmax=nmax)
    else:
        scales, levels = search(groups, nmax=nmax, weights=np.ascontiguousarray(weights.reshape(n * 16, 16).T))
    return scales.reshape(n, 16), levels.T.reshape(n, 16, 16)
