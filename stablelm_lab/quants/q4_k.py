"""Q4_K: 256 weights in 144 bytes (4.5 bits per weight): 8 sub-blocks of 32, each with a scale and a min."""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .bits import join_nibbles, nibbles, nibbles_into
from .format import QuantFormat
from .layout import f16, struct, u8
from .scales_mins import decode_with_mins, quantize_k4, quantize_k4_weighted, sub_block_scale_min


class Q4_K(QuantFormat):
    """Q4_K: 256 weights in 144 bytes (4.5 bits per weight), with mins.

    bytes 0-1     d           fp16 super-block scale of the sub-block scales
    bytes 2-3     dmin        fp16 super-block scale of the sub-block mins
    bytes 4-15    scales[12]  eight 6-bit scales sc and eight 6-bit mins m (see scales_mins.py)
    bytes 16-143  qs[128]     chunk c = 0..3 is qs[32c..32c+31]: its low nibbles are the 32 weights of
                              sub-block 2c, its high nibbles those of sub-block 2c+1

    decode: x = (d·sc)·q - dmin·m      q in 0..15, sub-block s = i // 32 of weight i
    encode: each sub-block's scale and min by make_qkx2_quants (weights av_x + |x|, 21 trial scales);
            the largest of each is stored in d, dmin as max/63, the others as 6-bit multiples of them;
            then q = nearest((x + dmin·m) / (d·sc)) with the stored values.
    """

    qtype = T.Q4_K
    sub_block_size = 32
    block_dtype = struct(f16("d"), f16("dmin"), u8("scales", 12), u8("qs", 128))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        y = np.empty(256, dtype=np.float32)
        for j in range(0, 256, 64):
            d1, m1 = sub_block_scale_min(j // 32, block)
            d2, m2 = sub_block_scale_min(j // 32 + 1, block)
            q = block["qs"][j // 2 : j // 2 + 32]
            y[j : j + 32] = d1 * (q & 0xF).astype(np.float32) - m1
            y[j + 32 : j + 64] = d2 * (q >> 4).astype(np.float32) - m2
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        q = nibbles(self.field(blocks, "qs"), run=32)  # (n, c, low/high, l)
        return decode_with_mins(self, blocks, q.reshape(-1, 8, 32), out)

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        out = self.weights_for(blocks, out)
        levels = nibbles_into(out, self.field(blocks, "qs"), run=32)  # no interleaved uint8 copy between
        return decode_with_mins(self, blocks, levels, out)

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        return self._pack(*quantize_k4(x, nmax=15, rmin=-1.0, nstep=20))

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """quantize_row_q4_K_impl with quant_weights (see quantize_k4_weighted)."""
        importance = np.broadcast_to(importance, rows.shape).reshape(-1, 256)
        return self._pack(*quantize_k4_weighted(rows.reshape(-1, 256), importance, nmax=15, cap_at_63=False))

    def _pack(self, d: np.ndarray, dmin: np.ndarray, scales: np.ndarray, levels: np.ndarray) -> np.ndarray:
        out = np.empty(len(d), self.block_dtype)
        out["d"], out["dmin"], out["scales"] = d, dmin, scales
        out["qs"] = join_nibbles(levels.reshape(len(d), 256), run=32)
        return out
