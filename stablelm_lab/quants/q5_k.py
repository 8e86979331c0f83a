"""Q5_K: 256 weights in 176 bytes (5.5 bits per weight): Q4_K plus a fifth bit for every weight."""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .bits import bit_fields, join_nibbles, nibbles
from .format import QuantFormat
from .layout import f16, struct, u8
from .scales_mins import decode_with_mins, quantize_k4, quantize_k4_weighted, sub_block_scale_min

#: bit s of qh[l] is the fifth bit of weight l of sub-block s
SUB_BLOCK_BITS = np.arange(8, dtype=np.uint8).reshape(1, 8, 1)


class Q5_K(QuantFormat):
    """Q5_K: 256 weights in 176 bytes (5.5 bits per weight), with mins.

    bytes 0-1     d           fp16 super-block scale of the sub-block scales
    bytes 2-3     dmin        fp16 super-block scale of the sub-block mins
    bytes 4-15    scales[12]  eight 6-bit scales sc and eight 6-bit mins m, packed as in Q4_K
    bytes 16-47   qh[32]      bit s of qh[l] is the fifth bit (value 16) of weight l of sub-block s
    bytes 48-175  qs[128]     the low four bits, nibbles as in Q4_K: chunk c = qs[32c..32c+31] holds
                              sub-block 2c in its low nibbles, 2c+1 in its high nibbles

    decode: x = (d·sc)·q - dmin·m      q in 0..31, sub-block s = i // 32 of weight i
    encode: as Q4_K with levels 0..31 (make_qkx2_quants: rmin -0.5, 16 trial scales).
    """

    qtype = T.Q5_K
    sub_block_size = 32
    block_dtype = struct(f16("d"), f16("dmin"), u8("scales", 12), u8("qh", 32), u8("qs", 128))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        qh = block["qh"]
        y = np.empty(256, dtype=np.float32)
        u1, u2 = 1, 2
        for j in range(0, 256, 64):
            d1, m1 = sub_block_scale_min(j // 32, block)
            d2, m2 = sub_block_scale_min(j // 32 + 1, block)
            ql = block["qs"][j // 2 : j // 2 + 32]
            y[j : j + 32] = d1 * ((ql & 0xF) + np.where(qh & u1, 16, 0)).astype(np.float32) - m1
            y[j + 32 : j + 64] = d2 * ((ql >> 4) + np.where(qh & u2, 16, 0)).astype(np.float32) - m2
            u1, u2 = u1 << 2, u2 << 2
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        q = nibbles(self.field(blocks, "qs"), run=32).reshape(-1, 8, 32)  # (n, s, l)
        q |= bit_fields(self.field(blocks, "qh"), range(8), 1, place=4)  # (n, s, l)
        return decode_with_mins(self, blocks, q, out)

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        q = nibbles(self.field(blocks, "qs"), run=32).view(-1, 8, 32)
        q |= bit_fields(self.field(blocks, "qh"), range(8), 1, place=4)  # (n, s, l)
        return decode_with_mins(self, blocks, q, out)

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        return self._pack(*quantize_k4(x, nmax=31, rmin=-0.5, nstep=15))

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """quantize_row_q5_K_impl with quant_weights (see scales_mins.quantize_k4_weighted)."""
        importance = np.broadcast_to(importance, rows.shape).reshape(-1, 256)
        return self._pack(*quantize_k4_weighted(rows.reshape(-1, 256), importance, nmax=31, cap_at_63=True))

    def _pack(self, d: np.ndarray, dmin: np.ndarray, scales: np.ndarray, levels: np.ndarray) -> np.ndarray:
        out = np.empty(len(d), self.block_dtype)
        out["d"], out["dmin"], out["scales"] = d, dmin, scales
        out["qh"] = ((levels >> 4) << SUB_BLOCK_BITS).sum(axis=1, dtype=np.uint8)
        out["qs"] = join_nibbles((levels & 0xF).reshape(len(d), 256), run=32)
        return out
