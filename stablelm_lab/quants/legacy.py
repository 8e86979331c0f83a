"""The legacy formats: 32 weights per block, one fp16 scale d (and a min m for the _1 types).

    Q4_0  18 bytes  d | qs[16]                   x = (q - 8)·d          q in 0..15
    Q4_1  20 bytes  d | m | qs[16]               x = q·d + m            q in 0..15
    Q5_0  22 bytes  d | qh[4] | qs[16]           x = (q - 16)·d         q in 0..31
    Q5_1  24 bytes  d | m | qh[4] | qs[16]       x = q·d + m            q in 0..31
    Q8_0  34 bytes  d | qs[32] (int8)            x = q·d

The nibbles are not interleaved: byte qs[j] holds weight j in its low nibble and weight j+16 in its
high nibble. For the 5-bit types, bit j of the little-endian uint32 qh is the fifth bit of weight j.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .arrays import Array, is_torch
from .bits import join_nibbles, nibbles
from .cfloat import inverse, signed_absmax
from .format import QuantFormat
from .layout import f16, i8, struct, u8
from .rounding import round_away_from_zero, truncate
from .scaling import scale_levels
from .weighted import importance_weights, make_qkx3_quants, make_qx_quants, sum_of_squares


# ---- the fifth bit of the 5-bit types ----------------------------------------------------------
def fifth_bits(qh: Array) -> Array:
    """(n, 4) bytes of a little-endian uint32 -> (n, 32) values 0 or 16: bit j belongs to weight j.

    numpy unpacks them as one flat run of bits (qh must be contiguous): one long loop instead of one per
    block. torch fetches the eight bytes of each byte of qh as one int64 by index_select (torch shifts by
    a tensor of shift counts slowly, and indexes a 2-D table slowly).
    """
    if is_torch(qh):
        table = torch.from_numpy(_FIFTH_BITS_OF_BYTE).view(torch.int64).reshape(256).to(qh.device)
        bits = torch.index_select(table, 0, qh.reshape(-1).int()).view(torch.uint8)
        return bits.view(qh.shape[0], 32)  # byte b, bit s -> weight 8b + s
    bits = np.unpackbits(qh.reshape(-1), bitorder="little")
    return (bits << 4).reshape(len(qh), 32)


def pack_fifth_bits(q: np.ndarray) -> np.ndarray:
    """(..., 32) values in 0..31 -> (..., 4) bytes holding bit 4 of each value."""
    return np.packbits((q >> 4) & 1, axis=-1, bitorder="little")


#: For every byte value, its eight bits as eight bytes 0 or 16, lowest bit first.
_FIFTH_BITS_OF_BYTE = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") << 4


# ---- with an importance matrix ----------------------------------------------------------------
def block_weights(rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """The weights of quantize_row_q4_0_impl (and q4_1, q5_0, q5_1): qw·sqrt(sigma2 + x²) with sigma2
    the mean square of the whole row (``sum_x2/n_per_row``), as (m · n_per_row / 32, 32) blocks."""
    sigma2 = sum_of_squares(rows) / np.float32(rows.shape[1])
    return importance_weights(rows, importance, sigma2).reshape(-1, 32)


def symmetric_weighted(rows: np.ndarray, importance: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_0's and Q5_0's weighted encoder: make_qx_quants(32, nmax, xb, L, 1, weight) on every block.
    Returns d (k,) and levels (k, 32) in 0..2·nmax-1 (0 for an all-zero block)."""
    x = np.ascontiguousarray(rows.reshape(-1, 32).T)
    weights = np.ascontiguousarray(block_weights(rows, importance).T)
    d, levels = make_qx_quants(x, nmax, weights)
    return d, levels.T.astype(np.uint8)


def with_min_weighted(rows: np.ndarray, importance: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1's and Q5_1's weighted encoder: make_qkx3_quants(32, nmax, xb, weight, ...) on every block.
    Returns d (k,), m (k,) (the block's min, <= 0) and levels (k, 32) in 0..nmax."""
    scale, the_min, levels = make_qkx3_quants(rows.reshape(-1, 32), block_weights(rows, importance), nmax)
    return scale, -the_min, levels


class Q4_0(QuantFormat):
    """Q4_0: 32 weights in 18 bytes (4.5 bits per weight), symmetric.

    bytes 0-1   d       fp16 scale
    bytes 2-17  qs[16]  byte j = weight j (low nibble) | weight j+16 (high nibble)

    decode: x = (q - 8) · d
    encode: d = max / -8, where max is the signed value of largest magnitude, so that it maps to q = 0;
            q = min(15, trunc(x/d + 8.5)).
    """

    qtype = T.Q4_0
    block_dtype = struct(f16("d"), u8("qs", 16))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        y = np.empty(32, dtype=np.float32)
        for j in range(16):
            y[j] = np.float32((int(block["qs"][j]) & 0x0F) - 8) * d
            y[j + 16] = np.float32((int(block["qs"][j]) >> 4) - 8) * d
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        q = nibbles(self.field(blocks, "qs")).reshape(-1, 1, 32)
        q -= np.uint8(8)  # wraps: read as int8
        d = blocks["d"].astype(np.float32)[:, None]
        return scale_levels(self.weights_for(blocks, out), q.view(np.int8), d)

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        q = nibbles(self.field(blocks, "qs")).view(-1, 32).view(torch.int8) - 8
        d = self.field(blocks, "d").float()
        return scale_levels(self.weights_for(blocks, out), q, d)

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        signed_max = signed_absmax(x, axis=1)
        d = signed_max / np.float32(-8)
        q = np.minimum(15, truncate(x * inverse(d)[:, None] + np.float32(8.5)))
        out = np.empty(len(x), self.block_dtype)
        out["d"] = d
        out["qs"] = join_nibbles(q.astype(np.uint8))
        return out

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """quantize_row_q4_0_impl: the scale of least weighted squared error (make_qx_quants), not max/-8."""
        d, q = symmetric_weighted(rows, importance, nmax=8)
        out = np.empty(len(d), self.block_dtype)
        out["d"] = d
        out["qs"] = join_nibbles(q)
        return out


class Q4_1(QuantFormat):
    """Q4_1: 32 weights in 20 bytes (5 bits per weight), with a min.

    bytes 0-1   d       fp16 scale
    bytes 2-3   m       fp16 min (the block's smallest weight)
    bytes 4-19  qs[16]  nibbles as in Q4_0

    decode: x = q · d + m
    encode: d = (max - min) / 15, q = min(15, trunc((x - min)/d + 0.5)).
    """

    qtype = T.Q4_1
    block_dtype = struct(f16("d"), f16("m"), u8("qs", 16))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d, m = np.float32(block["d"]), np.float32(block["m"])
        y = np.empty(32, dtype=np.float32)
        for j in range(16):
            y[j] = np.float32(int(block["qs"][j]) & 0x0F) * d + m
            y[j + 16] = np.float32(int(block["qs"][j]) >> 4) * d + m
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        q = nibbles(self.field(blocks, "qs")).reshape(-1, 1, 32)
        return scale_levels(
            self.weights_for(blocks, out),
            q,
            blocks["d"].astype(np.float32)[:, None],
            plus=blocks["m"].astype(np.float32)[:, None],
        )

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        q = nibbles(self.field(blocks, "qs")).view(-1, 32)
        d, m = self.field(blocks, "d").float(), self.field(blocks, "m").float()
        return scale_levels(self.weights_for(blocks, out), q, d, plus=m)

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        lo, hi = x.min(axis=1), x.max(axis=1)
        d = (hi - lo) / np.float32(15)
        q = np.minimum(15, truncate((x - lo[:, None]) * inverse(d)[:, None] + np.float32(0.5)))
        out = np.empty(len(x), self.block_dtype)
        out["d"], out["m"] = d, lo
        out["qs"] = join_nibbles(q.astype(np.uint8))
        return out

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """quantize_row_q4_1_impl: scale and min of least weighted squared error (make_qkx3_quants)."""
        d, m, q = with_min_weighted(rows, importance, nmax=15)
        out = np.empty(len(d), self.block_dtype)
        out["d"], out["m"] = d, m
        out["qs"] = join_nibbles(q)
        return out


class Q5_0(QuantFormat):
    """Q5_0: 32 weights in 22 bytes (5.5 bits per weight), symmetric.

    bytes 0-1   d       fp16 scale
    bytes 2-5   qh[4]   the fifth bit of each weight: bit j of the little-endian uint32 is weight j's
    bytes 6-21  qs[16]  the low four bits, nibbles as in Q4_0

    decode: x = (q - 16) · d
    encode: d = max / -16, q = min(31, trunc(x/d + 16.5)).
    """

    qtype = T.Q5_0
    block_dtype = struct(f16("d"), u8("qh", 4), u8("qs", 16))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        qh = int.from_bytes(block["qh"].tobytes(), "little")
        y = np.empty(32, dtype=np.float32)
        for j in range(16):
            high_0 = ((qh >> j) & 1) << 4
            high_1 = ((qh >> (j + 16)) & 1) << 4
            y[j] = np.float32(((int(block["qs"][j]) & 0x0F) | high_0) - 16) * d
            y[j + 16] = np.float32(((int(block["qs"][j]) >> 4) | high_1) - 16) * d
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        q = nibbles(self.field(blocks, "qs")).reshape(-1, 1, 32)
        q |= fifth_bits(self.field(blocks, "qh")).reshape(q.shape)
        q -= np.uint8(16)  # wraps: read as int8
        d = blocks["d"].astype(np.float32)[:, None]
        return scale_levels(self.weights_for(blocks, out), q.view(np.int8), d)

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        q = nibbles(self.field(blocks, "qs")).view(-1, 32) | fifth_bits(self.field(blocks, "qh"))
        return scale_levels(self.weights_for(blocks, out), q.view(torch.int8) - 16, self.field(blocks, "d").float())

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        d = signed_absmax(x, axis=1) / np.float32(-16)
        q = np.minimum(31, truncate(x * inverse(d)[:, None] + np.float32(16.5))).astype(np.uint8)
        out = np.empty(len(x), self.block_dtype)
        out["d"] = d
        out["qh"] = pack_fifth_bits(q)
        out["qs"] = join_nibbles(q & 0x0F)
        return out

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """quantize_row_q5_0_impl: the scale of least weighted squared error (make_qx_quants)."""
        d, q = symmetric_weighted(rows, importance, nmax=16)
        out = np.empty(len(d), self.block_dtype)
        out["d"] = d
        out["qh"] = pack_fifth_bits(q)
        out["qs"] = join_nibbles(q & 0x0F)
        return out


class Q5_1(QuantFormat):
    """Q5_1: 32 weights in 24 bytes (6 bits per weight), with a min.

    bytes 0-1   d       fp16 scale
    bytes 2-3   m       fp16 min
    bytes 4-7   qh[4]   fifth bits as in Q5_0
    bytes 8-23  qs[16]  low four bits as in Q4_0

    decode: x = q · d + m
    encode: d = (max - min) / 31, q = trunc((x - min)/d + 0.5) (ggml does not clamp here).
    """

    qtype = T.Q5_1
    block_dtype = struct(f16("d"), f16("m"), u8("qh", 4), u8("qs", 16))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d, m = np.float32(block["d"]), np.float32(block["m"])
        qh = int.from_bytes(block["qh"].tobytes(), "little")
        y = np.empty(32, dtype=np.float32)
        for j in range(16):
            high_0 = ((qh >> j) & 1) << 4
            high_1 = ((qh >> (j + 16)) & 1) << 4
            y[j] = np.float32((int(block["qs"][j]) & 0x0F) | high_0) * d + m
            y[j + 16] = np.float32((int(block["qs"][j]) >> 4) | high_1) * d + m
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        q = nibbles(self.field(blocks, "qs")).reshape(-1, 1, 32)
        q |= fifth_bits(self.field(blocks, "qh")).reshape(q.shape)
        return scale_levels(
            self.weights_for(blocks, out),
            q,
            blocks["d"].astype(np.float32)[:, None],
            plus=blocks["m"].astype(np.float32)[:, None],
        )

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        q = nibbles(self.field(blocks, "qs")).view(-1, 32) | fifth_bits(self.field(blocks, "qh"))
        d, m = self.field(blocks, "d").float(), self.field(blocks, "m").float()
        return scale_levels(self.weights_for(blocks, out), q, d, plus=m)

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        lo, hi = x.min(axis=1), x.max(axis=1)
        d = (hi - lo) / np.float32(31)
        q = truncate((x - lo[:, None]) * inverse(d)[:, None] + np.float32(0.5)).astype(np.uint8)
        out = np.empty(len(x), self.block_dtype)
        out["d"], out["m"] = d, lo
        out["qh"] = pack_fifth_bits(q)
        out["qs"] = join_nibbles(q & 0x0F)
        return out

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """quantize_row_q5_1_impl: scale and min of least weighted squared error (make_qkx3_quants)."""
        d, m, q = with_min_weighted(rows, importance, nmax=31)
        out = np.empty(len(d), self.block_dtype)
        out["d"], out["m"] = d, m
        out["qh"] = pack_fifth_bits(q)
        out["qs"] = join_nibbles(q & 0x0F)
        return out


class Q8_0(QuantFormat):
    """Q8_0: 32 weights in 34 bytes (8.5 bits per weight).

    bytes 0-1   d       fp16 scale
    bytes 2-33  qs[32]  int8 weights

    decode: x = q · d
    encode: d = amax / 127, q = roundf(x/d) (halves away from zero).
    """

    qtype = T.Q8_0
    block_dtype = struct(f16("d"), i8("qs", 32))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        return np.array([np.float32(q) * d for q in block["qs"]], dtype=np.float32)

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        q = self.field(blocks, "qs").view(np.int8).reshape(-1, 1, 32)
        return scale_levels(self.weights_for(blocks, out), q, blocks["d"].astype(np.float32)[:, None])

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return scale_levels(self.weights_for(blocks, out), self.field(blocks, "qs"), self.field(blocks, "d").float())

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        d = np.abs(x).max(axis=1) / np.float32(127)
        out = np.empty(len(x), self.block_dtype)
        out["d"] = d
        out["qs"] = round_away_from_zero(x * inverse(d)[:, None])
        return out
