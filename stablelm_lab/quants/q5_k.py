"""Q5_K: 256 weights in 176 bytes (5.5 bits per weight): Q4_K plus a fifth bit for every weight."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import QuantFormat, f16, struct, u8
from .ksearch import byte_fields, get_scale_min_k4, interleave_runs
from .q4_k import (decode_with_mins, join_chunk_nibbles, quantize_k4, split_chunk_nibbles,
                   torch_chunk_nibbles, torch_decode_with_mins)

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
    block_dtype = struct(f16("d"), f16("dmin"), u8("scales", 12), u8("qh", 32), u8("qs", 128))

    def dequantize_block(self, block):
        d, dmin = np.float32(block["d"]), np.float32(block["dmin"])
        qh = block["qh"]
        y = np.empty(256, dtype=np.float32)
        u1, u2 = 1, 2
        for j in range(0, 256, 64):
            sub = j // 32
            sc, m = get_scale_min_k4(sub, block["scales"])
            d1, m1 = d * np.float32(sc), dmin * np.float32(m)
            sc, m = get_scale_min_k4(sub + 1, block["scales"])
            d2, m2 = d * np.float32(sc), dmin * np.float32(m)
            ql = block["qs"][j // 2:j // 2 + 32]
            y[j:j + 32] = d1 * ((ql & 0xF) + np.where(qh & u1, 16, 0)).astype(np.float32) - m1
            y[j + 32:j + 64] = d2 * ((ql >> 4) + np.where(qh & u2, 16, 0)).astype(np.float32) - m2
            u1, u2 = u1 << 2, u2 << 2
        return y

    def dequantize_blocks(self, blocks):
        fifth = interleave_runs(byte_fields(blocks["qh"], range(8), 1) << 4)      # (n, 1, 8, 32)
        q = split_chunk_nibbles(blocks["qs"])
        q |= fifth.reshape(q.shape)
        return decode_with_mins(blocks, q)

    def dequantize_blocks_torch(self, blocks):
        import torch
        qh = self.torch_field(blocks, "qh")
        bits = torch.arange(8, dtype=torch.uint8, device=blocks.device).reshape(1, 8, 1)
        fifth = ((qh[:, None, :] >> bits) & 1) << 4
        q = torch_chunk_nibbles(self.torch_field(blocks, "qs")) | fifth
        return torch_decode_with_mins(self, blocks, q)

    def quantize_blocks(self, x):
        d, dmin, scales, levels = quantize_k4(x, nmax=31, rmin=-0.5, nstep=15)
        out = np.empty(len(x), self.block_dtype)
        out["d"], out["dmin"], out["scales"] = d, dmin, scales
        out["qh"] = ((levels >> 4) << SUB_BLOCK_BITS).sum(axis=1, dtype=np.uint8)
        out["qs"] = join_chunk_nibbles(levels & 0xF)
        return out
