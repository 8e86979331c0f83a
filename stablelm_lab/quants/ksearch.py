"""What the K-quants with a min (Q2_K, Q4_K, Q5_K) share: the scale/min search and the 6-bit packing.

ggml's reference quantizers of these three types fit every sub-block with ``x ≈ scale·q - min`` using
``make_qkx2_quants``: a first guess from the sub-block's range, then ``nstep + 1`` trial scales, each
followed by the weighted least-squares scale and min for the levels it chose; the trial with the
smallest weighted error wins. Here the search runs for many sub-blocks at once, with the exact float32
operations of the C code, in its order. After it, the scales and mins are quantized themselves, and
``requantize_levels`` chooses every level again from the stored values.

Q4_K and Q5_K then store the eight 6-bit scales and eight 6-bit mins of a super-block in 12 bytes
(``get_scale_min_k4`` reads them back):

    byte 0-3    scale j (bits 0-5)  | high 2 bits of scale j+4 (bits 6-7)      j = 0..3
    byte 4-7    min j (bits 0-5)    | high 2 bits of min j+4 (bits 6-7)
    byte 8-11   low 4 bits of scale j+4 (bits 0-3) | low 4 bits of min j+4 (bits 4-7)
"""

from __future__ import annotations

import numpy as np

from .rounding import nearest_int

#: Sub-blocks searched per step: the search's temporaries then stay in cache.
SEARCH_CHUNK = 8192


# ---- the 6-bit scales and mins of Q4_K and Q5_K ---------------------------------------------------
def get_scale_min_k4(j: int, q: np.ndarray) -> tuple[int, int]:
    """Scale and min of sub-block j from the 12 packed bytes q, as ggml's get_scale_min_k4 reads them."""
    q = [int(b) for b in q]
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def unpack_scale_min_words(low, high, mixed):
    """The 12 packed bytes as three little-endian 32-bit words (bytes 0-3, 4-7, 8-11) -> four words
    holding one 6-bit value per byte: scales 0-3, scales 4-7, mins 0-3, mins 4-7.

    get_scale_min_k4 for four sub-blocks at a time: ``(b >> 6) << 4`` of every byte b is the word's
    ``(w >> 2) & 0x30303030``. numpy (uint32) and torch (int32: the sign bits are masked off) alike.
    """
    return (low & 0x3F3F3F3F, (mixed & 0x0F0F0F0F) | ((low >> 2) & 0x30303030),
            high & 0x3F3F3F3F, ((mixed >> 4) & 0x0F0F0F0F) | ((high >> 2) & 0x30303030))


def scales_mins_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 12) packed bytes -> scales (n, 8) and mins (n, 8), uint8."""
    words = q.view("<u4")                                                  # (n, 3)
    values = np.stack(unpack_scale_min_words(*words.T), axis=1).view(np.uint8)   # (n, 16)
    return values[:, :8], values[:, 8:]


def pack_scales_mins_k4(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """(n, 8) scales and (n, 8) mins, each in 0..63 -> (n, 12) bytes, the inverse of scales_mins_k4."""
    scales, mins = scales.astype(np.uint8), mins.astype(np.uint8)
    return np.concatenate([
        scales[:, :4] | ((scales[:, 4:] >> 4) << 6),
        mins[:, :4] | ((mins[:, 4:] >> 4) << 6),
        (scales[:, 4:] & 0xF) | ((mins[:, 4:] & 0xF) << 4),
    ], axis=1)


# ---- bit planes, fast ------------------------------------------------------------------------------
def byte_fields(data: np.ndarray, shifts, mask: int) -> np.ndarray:
    """(n, k) bytes -> (len(shifts), n, k): the field ``(b >> s) & mask`` of every byte b, for each s.

    Works on little-endian 64-bit words, eight bytes at a time (k must be a multiple of 8): the byte
    mask drops the bits that a shift carries over from the neighbouring byte.
    """
    words = data.view("<u8")[None]                                        # (1, n, k/8)
    shifts = np.asarray(shifts, dtype=np.uint64).reshape(-1, 1, 1)
    fields = (words >> shifts) & np.uint64(mask * 0x0101010101010101)
    return fields.view(np.uint8)


def interleave_runs(parts) -> np.ndarray:
    """Parts (p, n, k·32) -> (n, k, p, 32): run r of part j (its bytes 32r..32r+31) goes to [:, r, j],
    the order in which the K-quants lay out their bit planes.

    Copies each run of 32 bytes as one numpy 'V32' item: far fewer, longer copies than broadcasting.
    """
    n, k = parts[0].shape[0], parts[0].shape[1] // 32
    out = np.empty((n, k, len(parts), 32), dtype=np.uint8)
    runs = out.view("V32")[..., 0]                                        # (n, k, p)
    for j, part in enumerate(parts):
        runs[:, :, j] = np.ascontiguousarray(part).view("V32")
    return out


# ---- float32 sums in C's order --------------------------------------------------------------------
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


# ---- make_qkx2_quants -----------------------------------------------------------------------------
def make_qkx2_quants(x: np.ndarray, weights: np.ndarray, nmax: int, rmin: float, rdelta: float,
                     nstep: int, use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants for m sub-blocks at once.

    x, weights: float32 (m, n), one sub-block of n weights per row.
    Returns scale (m,), the_min (m,) and the levels L (m, n) uint8 in 0..nmax, with x ≈ scale·L - the_min.
    """
    parts = [_make_qkx2_quants(x[i:i + SEARCH_CHUNK], weights[i:i + SEARCH_CHUNK], nmax, rmin, rdelta,
                               nstep, use_mad) for i in range(0, len(x), SEARCH_CHUNK)]
    if not parts:
        return np.zeros(0, np.float32), np.zeros(0, np.float32), np.zeros(x.shape, np.uint8)
    return tuple(np.concatenate(column) for column in zip(*parts))


def _make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    f32 = np.float32
    x_t = np.ascontiguousarray(x.T)               # (n, m): one weight index per row, as the C loops run
    w_t = np.ascontiguousarray(weights.T)

    lo, hi, sum_w, sum_x = _first_pass(x_t, w_t)
    lo = np.where(lo > 0, f32(0), lo)             # the min is never above zero
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

    scale = np.where(flat, f32(0), scale)         # C returns early for a flat sub-block: L = 0
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


# ---- the last pass -------------------------------------------------------------------------------
def requantize_levels(x: np.ndarray, d: np.ndarray, dm: np.ndarray, levels: np.ndarray,
                      nmax: int) -> np.ndarray:
    """The last pass of the K-quantizers: levels again, from the scale and min as they are stored.

    x (n, k, size) weights, d and dm (n, k) the decoded sub-block scale and min, levels (n, k, size)
    from the search. C's ``if (!d) continue;`` keeps the search's levels where d is zero.
    """
    d, dm = d[..., None], dm[..., None]
    new = np.clip(nearest_int_unbounded((x + dm) / d), 0, nmax).astype(np.uint8)
    return np.where(d != 0, new, levels)


def nearest_int_unbounded(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int for every float: add 1.5·2^23, keep the low 23 bits of the sum, minus 2^22.

    Equal to rounding.nearest_int (np.rint) for |v| <= 2^22. Beyond that bound, which ggml's assert
    guards only in debug builds, C returns wrapped-around bits, and so does this. Only the last pass
    meets such values: (x + dm)/d explodes where a sub-block's range is a few ulps of a large offset.
    """
    bits = (np.asarray(v, dtype=np.float32) + np.float32(12582912)).view(np.int32)
    return (bits & 0x007FFFFF) - 0x00400000
