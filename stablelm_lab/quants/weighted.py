"""Quantizing with an importance matrix: the weighted scale searches of ggml's quantize_<type>.

An importance matrix (llama-imatrix) holds, for every matrix the model multiplies and every input
column j, the mean over tokens of that column's squared activation: ``importance[j] = Σ a_j² / count``
(llama-imatrix sums x² per column and counts tokens; llama-quantize divides). A row's output moves by
``Σ_j error_j · a_j`` when its weights move by error_j; keeping only the diagonal of E[a aᵀ], the
output's expected squared error is ``Σ_j importance[j] · error_j²``: a weighted least-squares problem.
With ``quant_weights`` ggml's quantizers solve exactly that: every scale search (``make_qx_quants``,
``make_qkx3_quants``, ``make_qp_quants``, IQ4's) picks the scale, min and levels that minimize
``Σ w_j (x_j - scale·q_j)²`` with, per weight, (ggml-quants.c, quantize_row_q4_0_impl and the others)

    w_j = importance[j] · sqrt(sigma2 + x_j²)

sigma2 being the mean square of the row (legacy types: ``sum_x2/n_per_row``), or of the super-block
(Q2_K: ``sumx2/QK_K``; Q3_K, Q4_K, Q5_K: ``2*sum_x2/QK_K``; IQ4_NL and IQ4_XS: ``2/size`` times the sum
over their 32 or 256 weights). The square root keeps large weights a little more important than small
ones in the same column; Q6_K alone uses ``w_j = importance[j]`` unchanged. Without an importance
matrix the same searches weigh by x² (or ``av_x + |x|``, or |x|): large weights matter most.

The K-quants also fit their sub-block scales and mins themselves with weights: ``make_qp_quants`` and
``make_qx_quants`` weigh each sub-block's scale by ``sw``, the sum of its weights.

Here the C loops run for many groups at once, with the same float32 operations in the same order, so
the bytes are ggml's (tests/test_quantize_imatrix.py checks every format against ggml_quantize_chunk).
"""

from __future__ import annotations

import numpy as np

from .cfloat import GROUP_MAX_EPS, sequential_sum
from .format import check_importance
from .ksearch import make_qkx2_quants, make_qx_quants
from .rounding import nearest_int

__all__ = [
    "check_importance",
    "importance_weights",
    "k_quant_weights",
    "sum_of_squares",
    "sum_per_sub_block",
    "make_qx_quants",
    "make_qkx3_quants",
    "make_qp_quants",
]


def sum_of_squares(x: np.ndarray) -> np.ndarray:
    """C's ``float s = 0; for (j...) s += x[j]*x[j];`` over the last axis of x (m, n) -> (m,)."""
    return sequential_sum(np.ascontiguousarray((x * x).T))


def importance_weights(x: np.ndarray, importance: np.ndarray, sigma2: np.ndarray) -> np.ndarray:
    """ggml's ``weight[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j])`` for groups x (m, n).

    importance: (n,) or (m, n), the importance of each weight's column; sigma2 (m,), one per group.
    """
    return importance * np.sqrt(sigma2[:, None] + x * x)


def k_quant_weights(x: np.ndarray, importance: np.ndarray, sigma2_factor: int) -> np.ndarray:
    """The weights of the K-quants' _impl quantizers for super-blocks x (n, 256) and the importance of
    each weight's column (n, 256): qw·sqrt(sigma2 + x²), sigma2 = sigma2_factor·sumx2/QK_K of the
    super-block (1 in Q2_K, 2 in Q3_K, Q4_K, Q5_K)."""
    sigma2 = np.float32(sigma2_factor) * sum_of_squares(x) / np.float32(256)
    return importance_weights(x, importance, sigma2)


def sum_per_sub_block(weights: np.ndarray) -> np.ndarray:
    """C's ``sw[j] = Σ weight[l]`` for sub-blocks weights (m, n) -> (m,), added in order."""
    return sequential_sum(np.ascontiguousarray(weights.T))


def make_qkx3_quants(x: np.ndarray, weights: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's ``make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, -0.9f, 0.05f, 36, false)``.

    The asymmetric search ``x ≈ scale·L - the_min`` with 37 trial scales, each followed by the weighted
    least-squares scale and min for its levels, the trial of least weighted squared error winning. It is
    make_qkx2_quants with the weights given (C's ``max <= min`` test instead of ``max == min`` is the
    same, as max >= min), which ksearch.make_qkx2_quants runs. x, weights: (m, n), one group a row.
    Returns scale (m,), the_min (m,), L (m, n) uint8.
    """
    return make_qkx2_quants(x, weights, nmax, -0.9, 0.05, 36, use_mad=False)


def make_qp_quants(x: np.ndarray, nmax: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qp_quants(n, nmax, x, L, quant_weights)``: a positive scale for the values x >= 0
    (the sub-block scales or mins of a K-quant super-block), weighted by quant_weights.

    x, weights: float32 (n, groups), element i of every group in row i, as the C indexes ``x[i]``.
    Returns (scale (groups,), L (n, groups) uint8) with x ≈ scale · L, L <= nmax.

    The search: start from scale = max/nmax; try the 8 scales max/(nmax + 0.1·is), is = -4..4, keeping
    the one of least weighted squared error; then, as make_q3_quants, up to 5 sweeps that re-round one
    level at a time against the least-squares scale of the others, keeping a change when it raises
    sumlx²/suml2. L is C's uint8_t: a negative level wraps around, as it does there.
    """
    f32 = np.float32
    top = np.zeros(x.shape[1], dtype=np.float32)
    for value in x:  # C's MAX(max, x[i]): a NaN x[i] is taken
        top = np.where(top > value, top, value)
    all_zero = top < GROUP_MAX_EPS

    iscale = f32(nmax) / top
    first = (nearest_int(iscale * x) & 0xFF).astype(np.float32)
    best_mse = _squared_error(x, f32(1) / iscale, first, weights)
    for step in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_is = (f32(0.1) * f32(step) + f32(nmax)) / top
        trial = np.minimum(nmax, nearest_int(iscale_is * x)).astype(np.float32)
        mse = _squared_error(x, f32(1) / iscale_is, trial, weights)
        better = mse < best_mse
        best_mse = np.where(better, mse, best_mse)
        iscale = np.where(better, iscale_is, iscale)

    levels = np.minimum(nmax, nearest_int(iscale * x))
    lf = levels.astype(np.float32)
    sumlx, suml2 = sequential_sum(weights * x * lf), sequential_sum(weights * lf * lf)
    L = (levels & 0xFF).astype(np.int32)
    sumlx, suml2 = _refine_one_level_at_a_time(x, weights, nmax, L, sumlx, suml2, ~all_zero)
    scale = np.where(suml2 > 0, sumlx / suml2, f32(0))
    return np.where(all_zero, f32(0), scale), np.where(all_zero, 0, L).astype(np.uint8)


def _squared_error(x, scale, levels, weights):
    """C's ``diff = x[i] - scale*L[i]; mse += w*diff*diff;`` over each group."""
    diff = x - scale * levels
    return sequential_sum(weights * diff * diff)


def _refine_one_level_at_a_time(x, weights, nmax, L, sumlx, suml2, searching):
    """make_qp_quants' sweeps; L (n, groups) int32 holding the uint8 values, updated in place."""
    for _ in range(5):
        changed = np.zeros_like(searching)
        for i in range(len(x)):
            w, xi, old = weights[i], x[i], L[i].astype(np.float32)
            slx = sumlx - w * xi * old  # the sums without element i
            sl2 = suml2 - w * old * old
            with np.errstate(all="ignore"):
                new_l = np.minimum(nmax, nearest_int(xi * sl2 / slx))
            new = new_l.astype(np.float32)
            new_slx = slx + w * xi * new
            new_sl2 = sl2 + w * new * new
            keep = (
                searching
                & (slx > 0)
                & (sl2 > 0)
                & (new_l != L[i])
                & (new_slx * new_slx * suml2 > sumlx * sumlx * new_sl2)
            )
            L[i] = np.where(keep, new_l & 0xFF, L[i])
            sumlx = np.where(keep, new_slx, sumlx)
            suml2 = np.where(keep, new_sl2, suml2)
            changed |= keep
        searching = searching & changed
        if not searching.any():
            break
    return sumlx, suml2
