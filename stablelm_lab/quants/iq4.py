"""The 4-bit non-linear formats: each nibble indexes a fixed 16-value codebook, not a uniform grid.

    IQ4_NL  18 bytes   d | qs[16]                               x = d · kvalues_iq4nl[q]
    IQ4_XS  136 bytes  d | scales_h | scales_l[4] | qs[128]     x = d · (ls - 32) · kvalues_iq4nl[q]

kvalues_iq4nl = -127 -104 -83 -65 -49 -35 -22 -10 1 13 25 38 53 69 89 113: denser near zero, where most
weights are, with no zero: eight negative and eight positive values (ggml-common.h), asymmetric in
magnitude, not in count (-127 at one end, only 113 at the other). IQ4_NL lays out its 32 weights like
Q4_0; IQ4_XS is a 256-weight super-block of eight such sub-blocks, each with a 6-bit scale ls.

Encoding (quantize_row_iq4_nl_impl, with no importance matrix, so weight[j] = x[j]²): per 32-weight
sub-block, map the signed largest weight to the codebook end, snap every weight to its nearest value
(best_index_int8), take the weighted least-squares scale d = Σwqx / Σwq², retry the snapping with 15
scales near the first and keep the one that fits best. IQ4_XS then rounds its eight sub-block scales to
6 bits against the super-block's d and snaps every weight once more.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .arrays import Array, is_torch
from .bits import join_nibbles
from .cfloat import GROUP_MAX_EPS, inverse, sequential_sum, signed_absmax
from .codebook import decode_nibble_pairs, nibble_pair_table
from .format import QuantFormat
from .layout import f16, struct, u8
from .rounding import nearest_int
from .weighted import importance_weights, sum_of_squares

#: ggml-common.h's kvalues_iq4nl, indexed by the nibble.
KVALUES_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_VALUES = KVALUES_IQ4NL.astype(np.float32)
#: Weights the quantizer's scale searches handle per step (their temporaries are a few times this).
SEARCH_CHUNK_WEIGHTS = 1 << 16


#: The values of the low and the high nibble of every byte, for the vectorized decoders.
NIBBLE_VALUES = nibble_pair_table(_VALUES)


class IQ4_NL(QuantFormat):
    """IQ4_NL: 32 weights in 18 bytes (4.5 bits per weight), a 16-value non-linear codebook.

    bytes 0-1   d       fp16 scale
    bytes 2-17  qs[16]  byte j = nibble of weight j (low) | nibble of weight j+16 (high), as Q4_0

    decode: x = d · kvalues_iq4nl[q]
    encode: d0 = max / 127 (max = the weight of largest magnitude, with its sign), q = the codebook value
            nearest to x/d0, d = Σ x²·v·x / Σ x²·v·v (v = kvalues[q]); then 15 more tries with
            1/d = (itry - 127)/max, itry = -7..7, keeping the d of largest (Σwvx)²/Σwv², and q once more
            for the final d. This is quantize_iq4_nl, what llama-quantize writes (ntry = 7).
            ggml's quantize_row_iq4_nl_ref is another encoder: ntry = -1, i.e. d0 = max / -127 and
            no tries, no final snapping; IQ4_NL(ntry=-1) reproduces it.
    """

    qtype = T.IQ4_NL
    block_dtype = struct(f16("d"), u8("qs", 16))

    def __init__(self, ntry: int = 7) -> None:
        super().__init__()
        self.ntry = ntry

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        qs = block["qs"]
        y = np.empty(32, dtype=np.float32)
        for j in range(16):
            y[j] = d * _VALUES[qs[j] & 0x0F]
            y[j + 16] = d * _VALUES[qs[j] >> 4]
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        d = blocks["d"].astype(np.float32)
        qs = self.field(blocks, "qs")
        return decode_nibble_pairs(qs, d, NIBBLE_VALUES, self.weights_for(blocks, out))

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        d = self.field(blocks, "d").float()
        return decode_nibble_pairs(self.field(blocks, "qs"), d, NIBBLE_VALUES, self.weights_for(blocks, out))

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """quantize_iq4_nl with quant_weights: the same search, weighted by iq4_weights (always 7 tries)."""
        x = rows.reshape(-1, 32)
        weights = iq4_weights(x, np.broadcast_to(importance, rows.shape).reshape(-1, 32))
        return IQ4_NL(ntry=7).quantize_blocks(x, weights)

    def quantize_blocks(self, x: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        d = np.empty(len(x), dtype=np.float32)
        nibbles = np.empty(x.shape, dtype=np.uint8)
        skipped = np.empty(len(x), dtype=bool)
        for start in range(0, len(x), SEARCH_CHUNK_WEIGHTS // 32):
            chunk = slice(start, start + SEARCH_CHUNK_WEIGHTS // 32)
            d[chunk], nibbles[chunk], skipped[chunk] = _sub_block_scales(
                x[chunk], self.ntry, None if weights is None else weights[chunk]
            )
            if self.ntry > 0:
                nibbles[chunk] = best_index_int8(inverse(d[chunk])[:, None] * x[chunk])
        if self.ntry <= 0:
            nibbles = _reuse_previous_nibbles(nibbles, skipped)
        out = np.empty(len(x), self.block_dtype)
        out["d"] = d
        out["qs"] = join_nibbles(nibbles)
        return out


class IQ4_XS(QuantFormat):
    """IQ4_XS: 256 weights in 136 bytes (4.25 bits per weight): eight IQ4_NL-like sub-blocks of 32.

    bytes 0-1    d            fp16 super-block scale
    bytes 2-3    scales_h     uint16: bits 2ib..2ib+1 are the top two bits of sub-block ib's scale
    bytes 4-7    scales_l[4]  byte k: low four bits of the scale of sub-block 2k (low nibble), 2k+1 (high)
    bytes 8-135  qs[128]      sub-block ib in bytes 16ib..16ib+15, nibbles as in IQ4_NL

    decode: ls = scales_l nibble | scales_h bits << 4 (0..63), x = d · (ls - 32) · kvalues_iq4nl[q]
    encode (quantize_iq4_xs without an importance matrix): each sub-block's scale as in IQ4_NL (the 15
            tries included); d = -(the sub-block scale of largest magnitude)/32,
            ls - 32 = clamp(nearest_int(scale/d), -32, 31), and every nibble is chosen again for the
            6-bit scale d·(ls - 32).
    """

    qtype = T.IQ4_XS
    sub_block_size = 32
    block_dtype = struct(f16("d"), ("scales_h", "<u2"), u8("scales_l", 4), u8("qs", 128))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        scales_h, scales_l = int(block["scales_h"]), block["scales_l"]
        y = np.empty(256, dtype=np.float32)
        for ib in range(8):
            ls = ((int(scales_l[ib // 2]) >> 4 * (ib % 2)) & 0xF) | (((scales_h >> 2 * ib) & 3) << 4)
            dl = d * np.float32(ls - 32)
            qs = block["qs"][16 * ib : 16 * ib + 16]
            for j in range(16):
                y[32 * ib + j] = dl * _VALUES[qs[j] & 0x0F]
                y[32 * ib + j + 16] = dl * _VALUES[qs[j] >> 4]
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        ls = _six_bit_scales(blocks["scales_l"], blocks["scales_h"])
        dl = blocks["d"].astype(np.float32)[:, None] * _SCALE_MINUS_32[ls]  # (n, 8)
        return decode_nibble_pairs(
            self.field(blocks, "qs").reshape(n * 8, 16), dl.reshape(n * 8), NIBBLE_VALUES, self.weights_for(blocks, out)
        )

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        ls = _six_bit_scales(self.field(blocks, "scales_l"), self.field(blocks, "scales_h"))
        dl = self.field(blocks, "d").float()[:, None] * (ls.to(torch.int32) - 32)  # (n, 8)
        qs = self.field(blocks, "qs").unflatten(1, (8, 16))  # (n, 8, 16)
        return decode_nibble_pairs(qs, dl, NIBBLE_VALUES, self.weights_for(blocks, out))

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        return self.quantize_in_chunks(x, self._quantize_super_blocks, SEARCH_CHUNK_WEIGHTS // 256)

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """quantize_iq4_xs with quant_weights: the sub-block searches weighted by iq4_weights."""
        x = rows.reshape(-1, 256)
        weights = iq4_weights(x, np.broadcast_to(importance, rows.shape).reshape(-1, 256))
        return self.quantize_in_chunks(x, self._quantize_super_blocks, SEARCH_CHUNK_WEIGHTS // 256, weights)

    def _quantize_super_blocks(self, x, weights=None):
        n = len(x)
        sub_blocks = x.reshape(n * 8, 32)
        sub_weights = None if weights is None else weights.reshape(n * 8, 32)
        scales = _sub_block_scales(sub_blocks, ntry=7, weights=sub_weights)[0].reshape(n, 8)
        d = -signed_absmax(scales, axis=1) / np.float32(32)
        l = np.clip(nearest_int(inverse(d)[:, None] * scales), -32, 31)
        dl = d[:, None] * l.astype(np.float32)
        nibbles = best_index_int8(inverse(dl.reshape(-1))[:, None] * sub_blocks)
        ls = (l + 32).astype(np.uint8)
        out = np.empty(n, self.block_dtype)
        out["d"] = d
        out["scales_l"] = (ls[:, 0::2] & 0x0F) | ((ls[:, 1::2] & 0x0F) << 4)
        out["scales_h"] = ((ls.astype(np.uint16) >> 4) << np.arange(0, 16, 2, dtype=np.uint16)).sum(
            axis=1, dtype=np.uint16
        )
        out["qs"] = join_nibbles(nibbles).reshape(n, 128)
        return out


def iq4_weights(x: np.ndarray, importance: np.ndarray) -> np.ndarray:
    """quantize_row_iq4_nl_impl's weights with quant_weights, for x (m, super_block_size):
    qw·sqrt(sigma2 + x²), sigma2 = the sum of x² times 2/super_block_size (32 in IQ4_NL, 256 in IQ4_XS)."""
    sigma2 = sum_of_squares(x) * np.float32(2 / x.shape[1])
    return importance_weights(x, importance, sigma2)


# ---- decode helpers ------------------------------------------------------------------------------
#: (ls - 32) as float32 for every 6-bit scale ls.
_SCALE_MINUS_32 = (np.arange(64) - 32).astype(np.float32)


def _six_bit_scales(scales_l: Array, scales_h: Array) -> Array:
    """IQ4_XS's eight 6-bit scales per block: (n, 4) low nibbles (interleaved) and (n,) uint16 high bits."""
    if is_torch(scales_l):
        low = torch.stack([scales_l & 0x0F, scales_l >> 4], dim=-1).reshape(-1, 8)
        shifts = torch.arange(0, 16, 2, device=scales_h.device, dtype=torch.int32)
        high = (scales_h.to(torch.int32)[:, None] >> shifts) & 3
        return low | (high.to(torch.uint8) << 4)
    low = np.stack([scales_l & 0x0F, scales_l >> 4], axis=-1).reshape(-1, 8)
    high = (scales_h[:, None] >> np.arange(0, 16, 2, dtype=np.uint16)) & 3
    return low | (high.astype(np.uint8) << 4)


# ---- encode: quantize_row_iq4_nl_impl, vectorized over sub-blocks ---------------------------------
def best_index_int8(x: np.ndarray) -> np.ndarray:
    """ggml's best_index_int8 on kvalues_iq4nl: the nearest codebook entry; the upper one on a tie.

    Its binary search ends with values[mu-1] <= x < values[mu], which is searchsorted(side="right");
    a NaN falls through every comparison there and gets 15, as here.
    """
    mu = np.clip(np.searchsorted(_VALUES, x, side="right"), 1, 15)
    below, above = _VALUES[mu - 1], _VALUES[mu]
    index = np.where(x - below < above - x, mu - 1, mu)
    index = np.where(x <= _VALUES[0], 0, index)
    return np.where(x >= _VALUES[15], 15, index).astype(np.uint8)


def _weighted_sums(x: np.ndarray, q: np.ndarray, weight: np.ndarray):
    """Σ w·q·x and Σ w·q·q over each sub-block, adding one weight after the other as the C loop does.

    The arrays are (32, m): weight index first, so that each step adds one contiguous row.
    """
    wq = weight * q
    return sequential_sum(wq * x), sequential_sum(wq * q)


def _sub_block_scales(x: np.ndarray, ntry: int, weights: np.ndarray | None = None):
    """The per-sub-block loop of quantize_row_iq4_nl_impl on (m, 32) weights x; the squared errors
    weighted by x² (no quant_weights) or by ``weights`` (m, 32) (see iq4_weights).

    Returns the scales d (m,), the nibbles of the first snapping (m, 32), and which sub-blocks were
    skipped (amax < GROUP_MAX_EPS: scale 0, nibbles not written). ntry > 0 starts from d = max/127 and
    also tries 1/d = (itry - 127)/max for itry = -ntry..ntry; ntry <= 0 starts from d = max/-127 only.
    """
    amax_signed = signed_absmax(x, axis=1)
    skipped = np.abs(amax_signed) < GROUP_MAX_EPS
    xt = np.ascontiguousarray(x.T)  # (32, m)
    weight = xt * xt if weights is None else np.ascontiguousarray(weights.T)
    values0 = _VALUES[0]
    d = -amax_signed / values0 if ntry > 0 else amax_signed / values0
    nibbles = best_index_int8(np.float32(1) / d * xt)
    sumqx, sumq2 = _weighted_sums(xt, _VALUES[nibbles], weight)
    d = np.where(sumq2 > 0, sumqx / sumq2, np.float32(0))
    best = d * sumqx
    for itry in range(-ntry, ntry + 1):
        inverse_d = np.float32(itry + values0) / amax_signed
        sumqx, sumq2 = _weighted_sums(xt, _VALUES[best_index_int8(inverse_d * xt)], weight)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = np.where(better, sumqx / sumq2, d)
        best = np.where(better, d * sumqx, best)
    return np.where(skipped, np.float32(0), d), nibbles.T, skipped


def _reuse_previous_nibbles(nibbles: np.ndarray, skipped: np.ndarray) -> np.ndarray:
    """quantize_row_iq4_nl_ref's skipped blocks: they pack the nibble buffer L unchanged.

    L lives for the whole call, so a skipped block repeats the nibbles of the last block that was not
    skipped. Before the first such block C reads uninitialized stack memory (any bytes); here those
    blocks get nibble 8 everywhere, what quantize_iq4_nl writes for a skipped block (the code of 1,
    nearest zero). The scale is 0 either way, so every such block decodes to zeros.
    """
    source = np.maximum.accumulate(np.where(skipped, -1, np.arange(len(nibbles))))
    padded = np.vstack([np.full((1, nibbles.shape[1]), 8, dtype=np.uint8), nibbles])
    return padded[source + 1]
