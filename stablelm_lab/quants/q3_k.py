"""Q3_K: 256 weights in 110 bytes (3.4375 bits per weight), 16 sub-blocks of 16 with 6-bit scales.

Also home of ``make_q3_quants``, the scale search of Q3_K's reference quantizer, and of the packing
of sixteen 6-bit scales into 12 bytes (``pack_scales`` / ``unpack_scales``).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .arrays import Array, is_torch
from .bits import bit_fields
from .cfloat import GROUP_MAX_EPS, sequential_sum, signed_absmax
from .format import QuantFormat
from .ksearch import make_qx_quants, requantize_levels, search_sub_blocks
from .layout import QK_K, f16, struct, u8
from .rounding import nearest_int
from .scaling import scale_levels
from .tuning import QUANTIZE_CHUNK_BLOCKS
from .weighted import k_quant_weights, sum_per_sub_block


# ---- sixteen 6-bit scales in 12 bytes -----------------------------------------------------------
def scale_value(scales: np.ndarray, s: int) -> int:
    """Sub-block s's scale, read from the 12 packed bytes: its low 4 bits are a nibble of bytes 0-7
    (low nibbles for s < 8, high nibbles for s >= 8), its high 2 bits a crumb of bytes 8-11."""
    low = (int(scales[s % 8]) >> (4 * (s // 8))) & 0xF
    high = (int(scales[8 + s % 4]) >> (2 * (s // 4))) & 3
    return (low | (high << 4)) - 32


def unpack_scale_words(aux0: Array, aux1: Array, tmp: Array) -> tuple[Array, Array, Array, Array]:
    """C's kmask dance in dequantize_row_q3_K, four scales at a time: the 12 packed bytes as three
    little-endian 32-bit words (bytes 0-3, 4-7, 8-11) -> four words holding the stored scales 0-3,
    4-7, 8-11, 12-15, one per byte, each ``low nibble | crumb << 4`` as scale_value reads it.

    Works on numpy uint32 and torch int32 words alike: the masks drop the sign bits that torch's
    arithmetic shift of an int32 brings in.
    """
    kmask1, kmask2 = 0x03030303, 0x0F0F0F0F
    return (
        (aux0 & kmask2) | (((tmp >> 0) & kmask1) << 4),
        (aux1 & kmask2) | (((tmp >> 2) & kmask1) << 4),
        ((aux0 >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4),
        ((aux1 >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4),
    )


def unpack_scales(scales: Array) -> Array:
    """(n, 12) packed bytes -> (n, 16) stored scales in 0..63, i.e. scale_value(s) + 32 for every s.

    Why the kmask words equal the index formula for all 2^96 inputs: both only select and move bits
    (shifts, masks, ORs of disjoint fields; no carries, no constants), so both are linear over GF(2),
    and two linear maps that agree on the 96 one-bit inputs agree everywhere.
    """
    if is_torch(scales):
        # copied: view(int32) needs a 4-byte boundary, which a lone 110-byte block may not give
        words = scales.clone(memory_format=torch.contiguous_format).view(torch.int32)  # (n, 3)
        return torch.stack(unpack_scale_words(*words.T), dim=1).view(torch.uint8)
    words = np.ascontiguousarray(scales).view("<u4")  # (n, 3)
    return np.stack(unpack_scale_words(*words.T), axis=1).view(np.uint8)


def pack_scales(values: np.ndarray) -> np.ndarray:
    """(n, 16) scales in 0..63 -> (n, 12) bytes, the inverse of unpack_scales."""
    v = values.astype(np.uint8)
    low = v & 0x0F
    high = (v >> 4).reshape(len(v), 4, 4)  # (n, s//4, s%4)
    crumbs = high[:, 0] | (high[:, 1] << 2) | (high[:, 2] << 4) | (high[:, 3] << 6)
    return np.concatenate([low[:, :8] | (low[:, 8:] << 4), crumbs], axis=1)


# ---- the scale search ---------------------------------------------------------------------------
def make_q3_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_q3_quants(n, nmax, x, L, do_rmse=true)`` for many groups at once.

    x: float32 (n, groups), element i of every group in row i (so ``x[i]`` reads as in the C).
    Returns (scale (groups,), L (n, groups) in 0..2·nmax-1) with x ≈ scale · (L - nmax).

    Start from l = round(-nmax · x / max), then up to 5 sweeps over the elements: take element i out of
    sumlx = Σ w·x·l and suml2 = Σ w·l² (w = x²), re-round it against the best scale of the others,
    and keep the change if it raises sumlx²/suml2 (lowers the weighted error). Stop after a sweep
    that changed nothing. The scale is then the least-squares one, sumlx / suml2.
    """
    max_value = signed_absmax(x, axis=0)
    all_zero = np.abs(max_value) < GROUP_MAX_EPS
    w = x * x
    wx = w * x

    L = np.clip(nearest_int(np.float32(-nmax) / max_value * x), -nmax, nmax - 1)
    Lf = L.astype(np.float32)
    sumlx, suml2 = sequential_sum(wx * Lf), sequential_sum(w * Lf * Lf)

    searching = ~all_zero
    for _ in range(5):
        changed = np.zeros_like(searching)
        for i in range(len(x)):
            old = L[i].astype(np.float32)
            slx = sumlx - wx[i] * old  # the sums without element i
            sl2 = suml2 - w[i] * old * old
            new_l = np.clip(nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1)
            new = new_l.astype(np.float32)
            new_slx = slx + wx[i] * new
            new_sl2 = sl2 + w[i] * new * new
            keep = (
                searching
                & (slx > 0)
                & (new_l != L[i])
                & (new_sl2 > 0)
                & (new_slx * new_slx * suml2 > sumlx * sumlx * new_sl2)
            )
            L[i] = np.where(keep, new_l, L[i])
            sumlx = np.where(keep, new_slx, sumlx)
            suml2 = np.where(keep, new_sl2, suml2)
            changed |= keep
        searching &= changed
        if not searching.any():
            break
    scale = np.where(suml2 > 0, sumlx / suml2, np.float32(0))
    scale = np.where(all_zero, np.float32(0), scale)
    return scale, np.where(all_zero, 0, L + nmax)


class Q3_K(QuantFormat):
    """Q3_K: 256 weights in 110 bytes (3.4375 bits per weight), 16 sub-blocks of 16 weights.

    bytes   0-31   hmask[32]   high bit of each weight
    bytes  32-95   qs[64]      low 2 bits of each weight, four per byte
    bytes  96-107  scales[12]  sixteen 6-bit scales, stored plus 32
    bytes 108-109  d           fp16 super-block scale

    Weight i of the block, with h = i//128, j = (i%128)//32, l = i%32:
        low2 = (qs[32h + l] >> 2j) & 3
        high = (hmask[l] >> (4h + j)) & 1              (bit b of hmask[l] belongs to weight 32b + l)
        q    = low2 - (high ? 0 : 4)                   (-4..3)
    Scale s = i//16: low 4 bits = (scales[s%8] >> 4·(s//8)) & 0xF, high 2 bits = (scales[8 + s%4] >>
    2·(s//4)) & 3, value = (low | high << 4) - 32.
    decode: x = d · scale · q

    encode: make_q3_quants finds a scale and 3-bit quants for every sub-block (weighted by x²); the
    16 scales are quantized to 6 bits against the one of largest magnitude (which maps to -32),
    d = max_scale / -32, and the weights are re-rounded against their final d · scale.
    """

    qtype = T.Q3_K
    sub_block_size = 16
    block_dtype = struct(u8("hmask", QK_K // 8), u8("qs", QK_K // 4), u8("scales", 12), f16("d"))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d_all = np.float32(block["d"])
        y = np.empty(QK_K, dtype=np.float32)
        l = np.arange(16)
        hm = block["hmask"].astype(np.int32)
        s = 0  # sub-block: C's is
        m = 1  # the hmask bit of the current 32 weights
        for n in range(0, QK_K, 128):
            q = block["qs"][n // 4 : n // 4 + 32].astype(np.int32)  # C: q += 32 after each 128
            for j in range(4):
                shift = 2 * j
                for half in (0, 16):
                    dl = d_all * np.float32(scale_value(block["scales"], s))
                    low2 = (q[l + half] >> shift) & 3
                    minus = np.where(hm[l + half] & m, 0, 4)
                    start = n + 32 * j + half
                    y[start : start + 16] = dl * (low2 - minus).astype(np.float32)
                    s += 1
                m <<= 1
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        low2 = bit_fields(self.field(blocks, "qs").reshape(2 * n, 32), [0, 2, 4, 6], 3)  # (2n, j, l)
        q = low2.reshape(n, 16, 16)
        q |= bit_fields(self.field(blocks, "hmask"), range(8), 1, place=2).reshape(n, 16, 16)  # 4h + j
        q -= np.uint8(4)  # low2 - (high ? 0 : 4), wrapping: read as int8
        sc = unpack_scales(self.field(blocks, "scales")) - np.uint8(32)
        dl = blocks["d"].astype(np.float32)[:, None] * sc.view(np.int8)  # (n, 16)
        return scale_levels(self.weights_for(blocks, out), q.view(np.int8), dl)

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        n = len(blocks)
        qs = self.field(blocks, "qs").unflatten(1, (2, 32))
        q = bit_fields(qs, [0, 2, 4, 6], 3)  # (n, h, j, l)
        q |= bit_fields(self.field(blocks, "hmask"), range(8), 1, place=2).view(q.shape)  # 4h + j
        q -= 4  # low2 - (high ? 0 : 4), wrapping: read as int8
        sc = unpack_scales(self.field(blocks, "scales")).view(torch.int8) - 32
        dl = self.field(blocks, "d").float()[:, None] * sc
        return scale_levels(self.weights_for(blocks, out), q.view(torch.int8).view(n, 16, 16), dl)

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        return self.quantize_in_chunks(x, self._quantize_chunk, QUANTIZE_CHUNK_BLOCKS)

    def _quantize_chunk(self, x):
        sub_scales, L = search_sub_blocks(x, make_q3_quants, nmax=4)

        max_scale = signed_absmax(sub_scales, axis=1)
        iscale = np.float32(-32) / max_scale
        # C: int8_t l = nearest_int(...) -- the cast to int8 comes before the clamp.
        levels = nearest_int(iscale[:, None] * sub_scales).astype(np.int8)
        levels = np.clip(levels, -32, 31) + 32
        has_scale = max_scale != 0
        packed = np.where(has_scale[:, None], pack_scales(levels), np.uint8(0))
        d = np.where(has_scale, np.float32(1) / iscale, np.float32(0)).astype(np.float16)
        return self._store(x, packed, d, L)

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """quantize_row_q3_K_impl: each sub-block by make_qx_quants weighted by qw·sqrt(sigma2 + x²)
        (sigma2 = 2·sumx2/256 of the super-block), not make_q3_quants; then the 16 scales themselves
        by make_qx_quants (6 bits), each weighted by the sum of its sub-block's weights."""
        importance = np.broadcast_to(importance, rows.shape).reshape(-1, QK_K)
        return self.quantize_in_chunks(
            rows.reshape(-1, QK_K), self._quantize_weighted_chunk, QUANTIZE_CHUNK_BLOCKS, importance
        )

    def _quantize_weighted_chunk(self, x, importance):
        n = len(x)
        weights = k_quant_weights(x, importance, 2)
        sub_scales, L = search_sub_blocks(x, make_qx_quants, nmax=4, weights=weights)
        sw = sum_per_sub_block(weights.reshape(n * 16, 16)).reshape(n, 16)
        d, levels = make_qx_quants(np.ascontiguousarray(sub_scales.T), 32, np.ascontiguousarray(sw.T))
        return self._store(x, pack_scales(levels.T), d.astype(np.float16), L)

    def _store(self, x, packed, d, L):
        """The blocks, each level chosen once more from its stored scale."""
        n = len(x)
        # Re-round each weight against its final scale; a sub-block whose scale came out 0 keeps its L.
        sc = unpack_scales(packed).astype(np.int8) - np.int8(32)
        dl = d.astype(np.float32)[:, None] * sc.astype(np.float32)
        L = requantize_levels(x.reshape(n, 16, 16), dl, L, -4, 3).reshape(n, QK_K)

        out = np.empty(n, self.block_dtype)
        out["hmask"], out["qs"] = pack_3bit_quants(L)
        out["scales"], out["d"] = packed, d
        return out


def pack_3bit_quants(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 256) values in 0..7 -> hmask (n, 32), qs (n, 64): the inverse of the index map above."""
    n = len(L)
    high = (L > 3).reshape(n, 8, 32)  # (n, b, l): weight 32b + l
    hmask = np.packbits(high, axis=1, bitorder="little").reshape(n, 32)
    low2 = (L & 3).reshape(n, 2, 4, 32)  # (n, h, j, l)
    qs = low2[:, :, 0] | (low2[:, :, 1] << 2) | (low2[:, :, 2] << 4) | (low2[:, :, 3] << 6)
    return hmask, qs.reshape(n, 64)
