"""Q4_K's and Q5_K's sub-blocks: 8 of 32 weights, each with a 6-bit scale and a 6-bit min, packed in 12 bytes.

The decode ``x = (d·sc)·q - dmin·m``, and the encoder the two formats share, which fits every sub-block
with make_qkx2_quants (or make_qkx3_quants with an importance matrix) and stores the scales and mins
(``get_scale_min_k4`` reads them back):

    byte 0-3    scale j (bits 0-5)  | high 2 bits of scale j+4 (bits 6-7)      j = 0..3
    byte 4-7    min j (bits 0-5)    | high 2 bits of min j+4 (bits 6-7)
    byte 8-11   low 4 bits of scale j+4 (bits 0-3) | low 4 bits of min j+4 (bits 4-7)
"""

from __future__ import annotations

import numpy as np
import torch

from .arrays import Array, is_torch
from .cfloat import running_max, sequential_sum
from .format import QuantFormat
from .ksearch import make_qkx2_quants, requantize_levels
from .rounding import nearest_int
from .scaling import scale_levels
from .weighted import k_quant_weights, make_qkx3_quants, make_qp_quants, sum_per_sub_block

#: What the shared encoder hands a format to pack: d (n,) fp16, dmin (n,) fp16, the 12 packed bytes of the
#: scales and mins (n, 12), and the levels (n, 8, 32).
K4Encoded = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ---- reading and packing the 12 bytes ------------------------------------------------------------
def get_scale_min_k4(j: int, q: np.ndarray) -> tuple[int, int]:
    """Scale and min of sub-block j from the 12 packed bytes q, as ggml's get_scale_min_k4 reads them."""
    q = [int(b) for b in q]
    if j < 4:
        return q[j] & 63, q[j + 4] & 63
    return (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4)


def sub_block_scale_min(j: int, block: np.void) -> tuple[np.float32, np.float32]:
    """``d·sc`` and ``dmin·m`` of sub-block j of a Q4_K/Q5_K block, float32, as dequantize_row_q4_K."""
    sc, m = get_scale_min_k4(j, block["scales"])
    return np.float32(block["d"]) * np.float32(sc), np.float32(block["dmin"]) * np.float32(m)


def unpack_scale_min_words(low: Array, high: Array, mixed: Array) -> tuple[Array, Array, Array, Array]:
    """The 12 packed bytes as three little-endian 32-bit words (bytes 0-3, 4-7, 8-11) -> four words
    holding one 6-bit value per byte: scales 0-3, scales 4-7, mins 0-3, mins 4-7.

    get_scale_min_k4 for four sub-blocks at a time: ``(b >> 6) << 4`` of every byte b is the word's
    ``(w >> 2) & 0x30303030``. numpy (uint32) and torch (int32: the sign bits are masked off) alike.
    """
    return (
        low & 0x3F3F3F3F,
        (mixed & 0x0F0F0F0F) | ((low >> 2) & 0x30303030),
        high & 0x3F3F3F3F,
        ((mixed >> 4) & 0x0F0F0F0F) | ((high >> 2) & 0x30303030),
    )


def scales_mins_k4(q: Array) -> tuple[Array, Array]:
    """(n, 12) packed bytes -> scales (n, 8) and mins (n, 8), uint8."""
    if is_torch(q):
        words = q.contiguous().view(torch.int32)  # (n, 3)
        values = torch.stack(unpack_scale_min_words(*words.T), dim=1).view(torch.uint8)  # (n, 16)
    else:
        words = q.view("<u4")  # (n, 3)
        values = np.stack(unpack_scale_min_words(*words.T), axis=1).view(np.uint8)  # (n, 16)
    return values[:, :8], values[:, 8:]


def pack_scales_mins_k4(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """(n, 8) scales and (n, 8) mins, each in 0..63 -> (n, 12) bytes, the inverse of scales_mins_k4."""
    scales, mins = scales.astype(np.uint8), mins.astype(np.uint8)
    return np.concatenate(
        [
            scales[:, :4] | ((scales[:, 4:] >> 4) << 6),
            mins[:, :4] | ((mins[:, 4:] >> 4) << 6),
            (scales[:, 4:] & 0xF) | ((mins[:, 4:] & 0xF) << 4),
        ],
        axis=1,
    )


# ---- decode ---------------------------------------------------------------------------------------
def decode_with_mins(fmt: QuantFormat, blocks: Array, q: Array, out: Array | None) -> Array:
    """C's ``(d·sc)·q - dmin·m`` for levels q (n, 8, 32) -> float32 (n, 256), into out if given."""
    sc, m = scales_mins_k4(fmt.field(blocks, "scales"))
    dl = _as_float32(fmt.field(blocks, "d"))[:, None] * sc  # d·sc first, then ·q
    ml = _as_float32(fmt.field(blocks, "dmin"))[:, None] * m
    return scale_levels(fmt.weights_for(blocks, out), q, dl, minus=ml)


def _as_float32(x: Array) -> Array:
    return x.float() if is_torch(x) else x.astype(np.float32)


# ---- encode ---------------------------------------------------------------------------------------
def quantize_k4(x: np.ndarray, nmax: int, rmin: float, nstep: int) -> K4Encoded:
    """The encoder Q4_K and Q5_K share (quantize_row_q4_K_ref / q5_K_ref without their bit packing).

    x (n, 256) -> d (n,) fp16, dmin (n,) fp16, scales (n, 12) packed bytes, levels (n, 8, 32) in 0..nmax.
    """
    f32 = np.float32
    sub = x.reshape(-1, 32)  # (n·8, 32): one sub-block a row
    av_x = np.sqrt(sequential_sum((sub * sub).T) / f32(32))
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, levels = make_qkx2_quants(sub, weights, nmax, rmin, 0.1, nstep, use_mad=False)
    scales, mins = scales.reshape(-1, 8), mins.reshape(-1, 8)

    max_scale, max_min = running_max(scales), running_max(mins)
    ls = _six_bits(_inverse_of_max(max_scale)[:, None] * scales)
    lm = _six_bits(_inverse_of_max(max_min)[:, None] * mins)
    d = (max_scale / f32(63)).astype(np.float16)
    dmin = (max_min / f32(63)).astype(np.float16)
    return store_k4(x, d, dmin, pack_scales_mins_k4(ls, lm), levels, nmax)


def quantize_k4_weighted(x: np.ndarray, importance: np.ndarray, nmax: int, cap_at_63: bool) -> K4Encoded:
    """quantize_row_q4_K_impl / q5_K_impl with quant_weights, without their bit packing.

    x (n, 256), importance (n, 256) of each weight's column. Each sub-block's scale and min by
    make_qkx3_quants, weighted by qw·sqrt(sigma2 + x²) (sigma2 = 2·sum_x2/256 of the super-block); the
    eight scales and the eight mins then by make_qp_quants (6 bits), each sub-block weighted by the sum
    of its weights. Q5_K caps the levels at 63 (``MIN(63, ls)``), Q4_K stores them as they come.
    Returns what quantize_k4 returns.
    """
    n = len(x)
    weights = k_quant_weights(x, importance, 2)
    sub, sub_weights = x.reshape(-1, 32), weights.reshape(-1, 32)
    scales, mins, levels = make_qkx3_quants(sub, sub_weights, nmax)
    sw = sum_per_sub_block(sub_weights).reshape(n, 8).T
    d, ls = make_qp_quants(np.ascontiguousarray(scales.reshape(n, 8).T), 63, sw)
    dmin, lm = make_qp_quants(np.ascontiguousarray(mins.reshape(n, 8).T), 63, sw)
    ls, lm = ls.T, lm.T
    if cap_at_63:
        ls, lm = np.minimum(ls, 63), np.minimum(lm, 63)
    return store_k4(x, d.astype(np.float16), dmin.astype(np.float16), pack_scales_mins_k4(ls, lm), levels, nmax)


def store_k4(
    x: np.ndarray, d: np.ndarray, dmin: np.ndarray, packed: np.ndarray, levels: np.ndarray, nmax: int
) -> K4Encoded:
    """The levels again, from the scale and min as the decoder will see them: d·sc and dmin·m with sc, m
    what get_scale_min_k4 reads back from the packed bytes. Returns d, dmin, packed, levels (n, 8, 32)."""
    f32 = np.float32
    sc, m = scales_mins_k4(np.ascontiguousarray(packed))
    d_sub = d.astype(f32)[:, None] * sc.astype(f32)
    dm_sub = dmin.astype(f32)[:, None] * m.astype(f32)
    levels = requantize_levels(x.reshape(-1, 8, 32), d_sub, levels.reshape(-1, 8, 32), 0, nmax, dm=dm_sub)
    return d, dmin, packed, levels


def _inverse_of_max(max_value: np.ndarray) -> np.ndarray:
    """C's ``max > 0 ? 63.f/max : 0.f``."""
    with np.errstate(divide="ignore"):
        return np.where(max_value > 0, np.float32(63) / max_value, np.float32(0)).astype(np.float32)


def _six_bits(v: np.ndarray) -> np.ndarray:
    """C's ``uint8_t l = nearest_int(v); l = MIN(63, l);`` (the uint8_t store keeps the low 8 bits)."""
    return np.minimum(nearest_int(v) & 0xFF, 63).astype(np.uint8)
