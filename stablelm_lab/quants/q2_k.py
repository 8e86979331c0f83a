"""Q2_K: 256 weights in 84 bytes (2.625 bits per weight), sixteen sub-blocks of 16 with a scale and a min."""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .bits import bit_fields
from .cfloat import running_max
from .format import QuantFormat
from .ksearch import make_qkx2_quants, requantize_levels
from .layout import f16, struct, u8
from .rounding import nearest_int
from .scaling import scale_levels
from .weighted import k_quant_weights, make_qkx3_quants, make_qp_quants, sum_per_sub_block

#: the four 2-bit fields of a byte, lowest first
CRUMB_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8).reshape(1, 1, 4, 1)


class Q2_K(QuantFormat):
    """Q2_K: 256 weights in 84 bytes (2.625 bits per weight), with mins.

    bytes 0-15    scales[16]  sub-block s: scale sc in the low nibble, min m in the high nibble
    bytes 16-79   qs[64]      2-bit levels; half h = 0, 1 is qs[32h..32h+31], and its byte 32h + l holds
                              weight 128h + 32j + l in bits 2j..2j+1 (j = 0..3)
    bytes 80-81   d           fp16 super-block scale of the sub-block scales
    bytes 82-83   dmin        fp16 super-block scale of the sub-block mins

    decode: x = (d·sc)·q - dmin·m      q in 0..3, sub-block s = i // 16 of weight i
    encode: each sub-block's scale and min by make_qkx2_quants (weights |x|, absolute error,
            16 trial scales); the largest of each is stored in d, dmin as max/15, the others as 4-bit
            multiples of them; then q = nearest((x + dmin·m) / (d·sc)) with the stored values.
    """

    qtype = T.Q2_K
    sub_block_size = 16
    block_dtype = struct(u8("scales", 16), u8("qs", 64), f16("d"), f16("dmin"))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d, dmin = np.float32(block["d"]), np.float32(block["dmin"])
        y = np.empty(256, dtype=np.float32)
        sub = 0
        for n in range(0, 256, 128):
            q = block["qs"][n // 4 : n // 4 + 32]
            for j, shift in enumerate(range(0, 8, 2)):
                for half in (0, 16):  # two sub-blocks of 16 share the shift
                    sc = int(block["scales"][sub])
                    dl, ml = d * np.float32(sc & 0xF), dmin * np.float32(sc >> 4)
                    start = n + 32 * j + half
                    y[start : start + 16] = dl * ((q[half : half + 16] >> shift) & 3).astype(np.float32) - ml
                    sub += 1
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        scales = self.field(blocks, "scales")
        dl = blocks["d"].astype(np.float32)[:, None] * (scales & 0xF)  # (n, 16)
        ml = blocks["dmin"].astype(np.float32)[:, None] * (scales >> 4)
        q = bit_fields(self.field(blocks, "qs").reshape(2 * n, 32), [0, 2, 4, 6], 3)  # (2n, j, l)
        return scale_levels(self.weights_for(blocks, out), q.reshape(n, 16, 16), dl, minus=ml)

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        scales = self.field(blocks, "scales")
        dl = self.field(blocks, "d").float()[:, None] * (scales & 0xF)  # (n, 16)
        ml = self.field(blocks, "dmin").float()[:, None] * (scales >> 4)
        qs = self.field(blocks, "qs").unflatten(1, (2, 32))
        q = bit_fields(qs, [0, 2, 4, 6], 3)  # (n, h, j, l)
        return scale_levels(self.weights_for(blocks, out), q.reshape(-1, 16, 16), dl, minus=ml)

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        f32 = np.float32
        sub = x.reshape(-1, 16)  # (n·16, 16): one sub-block a row
        scales, mins, levels = make_qkx2_quants(sub, np.abs(sub), 3, -0.5, 0.1, 15, use_mad=True)
        scales, mins = scales.reshape(-1, 16), mins.reshape(-1, 16)

        max_scale, max_min = running_max(scales), running_max(mins)
        ls = np.where(max_scale[:, None] > 0, _scale_byte(f32(15) / max_scale[:, None] * scales), 0)
        lm = np.where(max_min[:, None] > 0, _scale_byte(f32(15) / max_min[:, None] * mins), 0)
        d = np.where(max_scale > 0, max_scale / f32(15), f32(0)).astype(np.float16)
        dmin = np.where(max_min > 0, max_min / f32(15), f32(0)).astype(np.float16)
        return self._store(x, (ls | (lm << 4)).astype(np.uint8), d, dmin, levels)

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """quantize_row_q2_K_impl: each sub-block's scale and min by make_qkx3_quants, weighted by
        qw·sqrt(sigma2 + x²) (sigma2 = sumx2/256 of the super-block); then the 16 scales and the 16 mins
        by make_qp_quants (4 bits), each sub-block weighted by the sum of its weights."""
        x = rows.reshape(-1, 256)
        n = len(x)
        weights = k_quant_weights(x, np.broadcast_to(importance, rows.shape).reshape(-1, 256), 1)
        sub, sub_weights = x.reshape(-1, 16), weights.reshape(-1, 16)
        scales, mins, levels = make_qkx3_quants(sub, sub_weights, 3)
        sw = sum_per_sub_block(sub_weights).reshape(n, 16).T
        dm, ls = make_qp_quants(np.ascontiguousarray(scales.reshape(n, 16).T), 15, sw)
        mm, lm = make_qp_quants(np.ascontiguousarray(mins.reshape(n, 16).T), 15, sw)
        return self._store(x, ls.T | (lm.T << 4), dm.astype(np.float16), mm.astype(np.float16), levels)

    def _store(self, x, packed, d, dmin, levels):
        """The blocks, the levels chosen once more from the stored scales and mins."""
        f32 = np.float32
        d_sub = d.astype(f32)[:, None] * (packed & 0xF).astype(f32)
        dm_sub = dmin.astype(f32)[:, None] * (packed >> 4).astype(f32)
        levels = requantize_levels(x.reshape(-1, 16, 16), d_sub, levels.reshape(-1, 16, 16), 0, 3, dm=dm_sub)

        out = np.empty(len(x), self.block_dtype)
        out["scales"], out["d"], out["dmin"] = packed, d, dmin
        crumbs = levels.reshape(-1, 2, 4, 32) << CRUMB_SHIFTS  # weight 128h + 32j + l -> bits 2j
        out["qs"] = crumbs.sum(axis=2, dtype=np.uint8).reshape(-1, 64)
        return out


def _scale_byte(v: np.ndarray) -> np.ndarray:
    """C's ``int l = nearest_int(v)`` stored into a uint8_t scale byte (the low 8 bits survive)."""
    return nearest_int(v) & 0xFF
