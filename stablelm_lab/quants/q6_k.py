"""Q6_K: 256 weights in 210 bytes (6.5625 bits per weight), 16 sub-blocks of 16 with int8 scales."""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .bits import bit_fields
from .cfloat import GROUP_MAX_EPS, signed_absmax
from .format import QuantFormat
from .ksearch import make_qx_quants, requantize_levels, search_sub_blocks
from .layout import QK_K, f16, i8, struct, u8
from .rounding import nearest_int
from .scaling import scale_levels
from .tuning import QUANTIZE_CHUNK_BLOCKS


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
    sub_block_size = 16
    block_dtype = struct(u8("ql", QK_K // 2), u8("qh", QK_K // 4), i8("scales", QK_K // 16), f16("d"))

    def dequantize_block(self, block: np.void) -> np.ndarray:
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

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        ql = self.field(blocks, "ql").reshape(2 * n, 64)
        low4 = bit_fields(ql, [0, 4], 0x0F)  # (2n, k>>1, 32·(k&1) + l)
        q = low4.reshape(n, 16, 16)
        q |= bit_fields(self.field(blocks, "qh").reshape(2 * n, 32), [0, 2, 4, 6], 3, place=4).reshape(
            n, 16, 16
        )  # (2n, k, l)
        q -= np.uint8(32)  # wraps: read as int8
        dl = blocks["d"].astype(np.float32)[:, None] * self.field(blocks, "scales").view(np.int8)
        return scale_levels(self.weights_for(blocks, out), q.view(np.int8), dl)

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        n = len(blocks)
        ql = self.field(blocks, "ql").unflatten(1, (2, 64))
        qh = self.field(blocks, "qh").unflatten(1, (2, 32))
        q = bit_fields(ql, [0, 4], 0x0F)  # (n, h, k>>1, 32·(k&1) + l)
        q |= bit_fields(qh, [0, 2, 4, 6], 3, place=4).view(q.shape)  # (n, h, k, l)
        q -= 32  # wraps: read as int8
        q = q.view(torch.int8).view(n, 16, 16)
        dl = self.field(blocks, "d").float()[:, None] * self.field(blocks, "scales")
        return scale_levels(self.weights_for(blocks, out), q, dl)

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        return self.quantize_in_chunks(x, self._quantize_chunk, QUANTIZE_CHUNK_BLOCKS)

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
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
