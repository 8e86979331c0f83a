"""Q6_K: 256 weights in 210 bytes (6.5625 bits per weight), 16 sub-blocks of 16 with int8 scales.

Also home of ``make_qx_quants``, the symmetric scale search Q6_K's reference quantizer runs on every
sub-block.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import QK_K, QUANTIZE_CHUNK_BLOCKS, QuantFormat, f16, i8, scale_levels, struct, u8
from .bits import bit_fields, torch_bit_fields
from .cfloat import GROUP_MAX_EPS, sequential_sum, signed_absmax
from .ksearch import requantize_levels, search_sub_blocks
from .rounding import nearest_int


# ---- the scale search ---------------------------------------------------------------------------
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


class Q6_K(QuantFormat):
    """Q6_K: 256 weights in 210 bytes (6.5625 bits per weight), 16 sub-blocks of 16 weights.

    bytes   0-127  ql[128]     low 4 bits of each weight, two per byte
    bytes 128-191  qh[64]      high 2 bits of each weight, four per byte
    bytes 192-207  scales[16]  int8 scale of each 16-weight sub-block
    bytes 208-209  d           fp16 super-block scale

    Weight i of the block, with h = i//128, k = (i%128)//32, l = i%32:
        low4  = (ql[64h + l + 32·(k&1)] >> 4·(k>>1)) & 0xF
        high2 = (qh[32h + l] >> 2k) & 3
        q     = low4 | high2 << 4                      (0..63)
    decode: x = d · scales[i//16] · (q - 32)

    encode: make_qx_quants finds a scale and 6-bit quants for every sub-block (weighted by x²); the
    16 scales are then quantized to int8 against the one of largest magnitude (which maps to -128),
    d = max_scale / -128, and the weights are re-rounded against their final d · scale.
    """

    qtype = T.Q6_K
    block_dtype = struct(u8("ql", QK_K // 2), u8("qh", QK_K // 4), i8("scales", QK_K // 16), f16("d"))

    def dequantize_block(self, block):
        d = np.float32(block["d"])
        y = np.empty(QK_K, dtype=np.float32)
        l = np.arange(32)
        is_ = l // 16
        for n in range(0, QK_K, 128):  # each half: ql += 64, qh += 32, sc += 8
            ql = block["ql"][n // 2 : n // 2 + 64].astype(np.int32)
            qh = block["qh"][n // 4 : n // 4 + 32].astype(np.int32)
            sc = block["scales"][n // 16 : n // 16 + 8].astype(np.float32)
            q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32
            q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32
            q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
            q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
            y[n + l + 0] = d * sc[is_ + 0] * q1.astype(np.float32)
            y[n + l + 32] = d * sc[is_ + 2] * q2.astype(np.float32)
            y[n + l + 64] = d * sc[is_ + 4] * q3.astype(np.float32)
            y[n + l + 96] = d * sc[is_ + 6] * q4.astype(np.float32)
        return y

    def dequantize_blocks(self, blocks, out=None):
        n = len(blocks)
        ql = self.field_bytes(blocks, "ql").reshape(2 * n, 64)
        low4 = bit_fields(ql, [0, 4], 0x0F)  # (2n, k>>1, 32·(k&1) + l)
        q = low4.reshape(n, 16, 16)
        q |= bit_fields(self.field_bytes(blocks, "qh").reshape(2 * n, 32), [0, 2, 4, 6], 3, place=4).reshape(
            n, 16, 16
        )  # (2n, k, l)
        q -= np.uint8(32)  # wraps: read as int8
        dl = blocks["d"].astype(np.float32)[:, None] * self.field_bytes(blocks, "scales").view(np.int8)
        return scale_levels(self.weights_for(blocks, out), q.view(np.int8), dl)

    def dequantize_blocks_torch(self, blocks, out=None):
        import torch

        n = len(blocks)
        ql = self.torch_field(blocks, "ql").unflatten(1, (2, 64))
        qh = self.torch_field(blocks, "qh").unflatten(1, (2, 32))
        q = torch_bit_fields(ql, [0, 4], 0x0F)  # (n, h, k>>1, 32·(k&1) + l)
        q |= torch_bit_fields(qh, [0, 2, 4, 6], 3, place=4).view(q.shape)  # (n, h, k, l)
        q -= 32  # wraps: read as int8
        q = q.view(torch.int8).view(n, 16, 16)
        dl = self.torch_field(blocks, "d").float()[:, None] * self.torch_field(blocks, "scales")
        return scale_levels(self.torch_weights_for(blocks, out), q, dl)

    def quantize_blocks(self, x):
        return self.quantize_in_chunks(x, self._quantize_chunk, QUANTIZE_CHUNK_BLOCKS)

    def quantize_rows_weighted(self, rows, importance):
        """quantize_row_q6_K_impl: make_qx_quants weighs each weight by its column's importance alone
        (ggml left the sqrt(sigma2 + x²) factor of the other K-quants commented out here)."""
        weights = np.broadcast_to(importance, rows.shape).reshape(-1, QK_K)
        return self.quantize_in_chunks(rows.reshape(-1, QK_K), self._quantize_chunk, QUANTIZE_CHUNK_BLOCKS, weights)

    def _quantize_chunk(self, x, weights=None):
        n = len(x)
        sub_scales, L = search_sub_blocks(x, make_qx_quants, nmax=32, weights=weights)

        max_scale = signed_absmax(sub_scales, axis=1)
        zero_block = np.abs(max_scale) < GROUP_MAX_EPS
        iscale = np.float32(-128) / max_scale
        d = (np.float32(1) / iscale).astype(np.float16)
        scales = np.minimum(127, nearest_int(iscale[:, None] * sub_scales)).astype(np.int8)

        # Re-round each weight against its final scale; a sub-block whose scale came out 0 keeps its L.
        dl = d.astype(np.float32)[:, None] * scales.astype(np.float32)
        L = requantize_levels(x.reshape(n, 16, 16), dl, L, -32, 31).reshape(n, QK_K)

        out = np.empty(n, self.block_dtype)
        out["ql"], out["qh"] = pack_6bit_quants(L)
        out["scales"], out["d"] = scales, d
        out[zero_block] = np.zeros(1, self.block_dtype)
        return out


def pack_6bit_quants(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 256) values in 0..63 -> ql (n, 128), qh (n, 64): the inverse of the index map above."""
    n = len(L)
    q = L.reshape(n, 2, 4, 32)  # (n, h, k, l)
    low4, high2 = q & 0x0F, q >> 4
    ql = np.concatenate(
        [low4[:, :, 0] | (low4[:, :, 2] << 4), low4[:, :, 1] | (low4[:, :, 3] << 4)], axis=-1
    )  # (n, h, 64)
    qh = high2[:, :, 0] | (high2[:, :, 1] << 2) | (high2[:, :, 2] << 4) | (high2[:, :, 3] << 6)
    return ql.reshape(n, 128), qh.reshape(n, 64)
