"""The lattice i-quants: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M.

A K-quant stores one small integer per weight. An i-quant stores a *group* of weights (8, or 4 for IQ3)
as one index into a table of points, a grid; a few sign bits; and an odd scale per 16 or 32 weights:

    x = scale · grid[index][j] · sign_j                   (IQ2_*, IQ3_*)
    x = scale · (grid[index][j] + delta)                  (IQ1_*: no signs, the grid holds -1, 0, +1)

Every table is ggml-common.h's (stablelm_lab/quants/iq_grids.py, generated from it). What the points
are, read from the source:

- IQ2's grids (iq2xxs_grid, iq2xs_grid, iq2s_grid) hold 8 magnitudes per point, each byte 0x08, 0x19
  or 0x2b. The quantizer builds the same points in its own units (ggml-quants.c, iq2xs_init_impl:
  ``int l = (kgrid[k] >> 2*i) & 0x3; pos[i] = 2*l + 1;``): odd coordinates 1, 3, 5. Every point's
  coordinate sum is a multiple of 4 (tests/test_iquants.py counts them), so with signs they are
  points of 2·E8, the odd half of the lattice E8 doubled, whose rule is "odd coordinates, sum ≡ 0
  (mod 4)"; an even number of sign flips keeps that sum's class, which is why IQ2_XXS and IQ2_XS need
  only 7 sign bits for 8 weights: the 8th is their parity (ksigns_iq2xs). The quantizer makes the
  count of minus signs even by flipping the least important weight
  (quantize_row_iq2_xxs_impl: ``if (nflip%2) { ... xval[8*k+imin] = -xval[8*k+imin]; ... }
  block_signs[k] = s & 127;``). IQ2_S stores all 8 sign bits.
- IQ3's grids hold 4 magnitudes per point ("3-bit using D4 lattice", ggml-quants.c; iq3xs_init_impl:
  ``int l = (kgrid[k] >> 3*i) & 0x7; pos[i] = 2*l + 1;``): odd coordinates 1..15. IQ3_XXS's points
  (stored as bytes 4, 12, ..., 52, 62) all have a coordinate sum ≡ 0 (mod 4): (1,1,1,1) + 2·D4.
  IQ3_XXS keeps the parity sign trick over 8 weights (two points); IQ3_S stores free sign bits.
- IQ1's grid holds 2048 points with coordinates -1, 0, +1, shifted as a whole by ±IQ1S_DELTA = 0.125
  (``y[j] = dl * (grid[j] + delta)`` in dequantize_row_iq1_s): about 1.5 bits per weight.

The scales are odd multiples of the block's fp16 d: IQ2 d·(2s+1)/8 (``d * (0.5f + s) * 0.25f``),
IQ3_XXS d·(2s+1)/4 (``* 0.5f``), IQ3_S and IQ1 d·(2s+1), computed in float32 in exactly the C order.

The fast decoders fetch each group's signed values (or grid + delta) with one lookup in a table
made from the grid, the sign patterns (or the delta) folded in: ±v is exact, so scale·(±v) has the bits
of ±(scale·v), what C computes. The i-quants have no quantizer here: ggml's encoders search each
group's neighbourhood on the grid, weighted by an importance matrix (IQ2_XXS, IQ2_XS and IQ1_S cannot
be made without one: ggml_quantize_requires_imatrix).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from . import iq_grids
from .arrays import Array, is_torch
from .bits import lookup_rows
from .format import QuantFormat
from .layout import f16, struct, u8

# ---- tables made from ggml-common.h's ---------------------------------------------------------------
#: bit j of a sign byte belongs to weight j of a group (ggml's kmask_iq2xs = 1, 2, 4, ..., 128)
_BITS = np.arange(8, dtype=np.uint8)


def grid_points(grid: np.ndarray, signed: bool = False) -> np.ndarray:
    """A grid of uint64 (8 coordinates) or uint32 (4) as float32 (points, coordinates): byte j of an
    entry is coordinate j, unsigned for IQ2/IQ3, int8 for IQ1 (the C casts to uint8_t*, int8_t*)."""
    width = grid.dtype.itemsize
    little_endian = grid.astype(grid.dtype.newbyteorder("<"))
    return little_endian.view(np.int8 if signed else np.uint8).reshape(len(grid), width).astype(np.float32)


def sign_patterns(n_bits: int) -> np.ndarray:
    """(2^n_bits, n_bits) float32 of ±1: row b has -1 where bit j of b is set."""
    b = np.arange(1 << n_bits)[:, None]
    return np.where((b >> np.arange(n_bits)) & 1, np.float32(-1), np.float32(1))


def signed_table(points: np.ndarray, n_sign_bits: int) -> np.ndarray:
    """Every point under every sign pattern: row (signs << log2(len(points))) | index."""
    return (sign_patterns(n_sign_bits)[:, None, :] * points[None, :, :]).reshape(-1, points.shape[1])


_IQ2XXS = grid_points(iq_grids.IQ2XXS_GRID)
_IQ2XS = grid_points(iq_grids.IQ2XS_GRID)
_IQ2S = grid_points(iq_grids.IQ2S_GRID)
_IQ3XXS = grid_points(iq_grids.IQ3XXS_GRID)
_IQ3S = grid_points(iq_grids.IQ3S_GRID)
_IQ1S = grid_points(iq_grids.IQ1S_GRID, signed=True)
_KSIGNS = iq_grids.KSIGNS_IQ2XS
#: IQ3_XXS: a 7-bit sign index -> the two 4-weight points' sign nibbles of ksigns, moved to bits 8-11
#: (rows of _IQ3XXS_SIGNED), as one uint32 of two uint16 (numpy) and as two int32 (torch)
_KSIGN_NIBBLES_HIGH_INT32 = np.stack([_KSIGNS & 0xF, _KSIGNS >> 4], axis=-1).astype(np.int32) << 8
_KSIGN_NIBBLES_HIGH = _KSIGN_NIBBLES_HIGH_INT32.astype(np.uint16).view(np.uint32).reshape(-1)

#: 8 signs from a sign byte, (256, 8)
_SIGN_PATTERNS = sign_patterns(8)
#: 8 signs from a 7-bit index: the ksigns byte's bits as ±1, (128, 8)
_KSIGN_PATTERNS = _SIGN_PATTERNS[_KSIGNS]
#: IQ2_XXS: row (sign index << 8) | grid index, (32768, 8)
_IQ2XXS_SIGNED = (_KSIGN_PATTERNS[:, None, :] * _IQ2XXS[None]).reshape(-1, 8)
#: IQ2_XS: row = the uint16 itself, (sign index << 9) | grid index, (65536, 8)
_IQ2XS_SIGNED = (_KSIGN_PATTERNS[:, None, :] * _IQ2XS[None]).reshape(-1, 8)
#: IQ3_XXS and IQ3_S: a point of 4 with 4 free sign bits, row (signs << 8 or 9) | grid index
_IQ3XXS_SIGNED = signed_table(_IQ3XXS, 4)
_IQ3S_SIGNED = signed_table(_IQ3S, 4)
#: IQ1: row (delta sign << 11) | grid index: grid + 0.125 for rows < 2048, grid - 0.125 after
_IQ1_SHIFTED = np.concatenate([_IQ1S + iq_grids.IQ1S_DELTA, _IQ1S - iq_grids.IQ1S_DELTA])
#: IQ1_S: bits 8-11 of the four groups' rows in _IQ1_SHIFTED, for every 13-bit key (qh's index bits
#: 0-11, delta bit 15 moved to bit 12): ((qh >> 3l) & 7) << 8 | delta sign << 11, as one uint64 of 4
_IQ1S_KEYS = np.arange(1 << 13)[:, None]
_IQ1S_HIGH_BITS = (
    ((((_IQ1S_KEYS & 0xFFF) >> np.array([0, 3, 6, 9])) & 7) << 8 | (_IQ1S_KEYS >> 12) << 11)
    .astype(np.uint16)
    .view(np.uint64)
    .reshape(-1)
)
#: IQ1_M: a qh byte's two nibbles shifted to bits 8-11 (grid index bits 8-10, delta sign → bit 11),
#: as one uint32 of two uint16
_IQ1M_HIGH_BITS = (
    (((np.arange(256)[:, None] >> np.array([0, 4])) & 0xF) << 8).astype(np.uint16).view(np.uint32).reshape(-1)
)
#: (0.5 + s) for the 4-bit scales of IQ2 and IQ3_XXS, (2s + 1) for IQ3_S's 4 bits and IQ1's 3 bits
_HALF_PLUS = np.float32(0.5) + np.arange(16, dtype=np.float32)
_ODD = (2 * np.arange(16) + 1).astype(np.float32)


def _signs(byte: int, count: int = 8) -> np.ndarray:
    """The readable decoders' signs: -1 where bit j of ``byte`` is set (kmask_iq2xs[j] = 1 << j), for
    the first ``count`` bits (a row of the table sign_patterns(8))."""
    return _SIGN_PATTERNS[int(byte) & 0xFF, :count]


def _nibble_scales(d: np.float32, scale: int) -> tuple[np.float32, np.float32]:
    """IQ2_XS, IQ2_S, one group of 32 weights: d·(0.5 + s)·0.25 for the low nibble s (its first 16 weights)
    and for the high nibble (the other 16)."""
    return d * np.float32(0.5 + (scale & 0xF)) * np.float32(0.25), d * np.float32(0.5 + (scale >> 4)) * np.float32(0.25)


def _scaled(table: np.ndarray, index: Array, scale: Array, out: Array) -> Array:
    """out = scale · table[index]: index (n, g, k) into rows of ``width`` values, scale (n, g) float32,
    out (n, g·k·width). One lookup per group, one product written straight into out."""
    if is_torch(index):
        rows = _torch_table(table, index.device)
        values = torch.index_select(rows, 0, index.reshape(-1).long()).view(*index.shape, table.shape[1])
        torch.mul(values, scale[:, :, None, None], out=out.view(values.shape))
        return out
    values = lookup_rows(table, index.astype(np.intp))  # (n, g, k, width)
    np.multiply(values, scale[:, :, None, None], out=out.reshape(values.shape))
    return out


_torch_tables: dict = {}


def _torch_table(table: np.ndarray, device: torch.device) -> torch.Tensor:
    """A decode table as a tensor on ``device``, made once per table and device."""
    key = (id(table), str(device))
    if key not in _torch_tables:
        _torch_tables[key] = torch.from_numpy(table).to(device)
    return _torch_tables[key]


def _int32(b: torch.Tensor) -> torch.Tensor:
    """Bytes of a torch uint8 tensor as int32, for index arithmetic past bit 7."""
    return b.to(torch.int32)


def _torch_words(b: torch.Tensor) -> torch.Tensor:
    """(..., 4k) int32 bytes -> (..., k) little-endian words as int64 (no sign trouble at bit 31)."""
    b = b.to(torch.int64).unflatten(-1, (-1, 4))
    return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)


# ---- IQ2 ---------------------------------------------------------------------------------------------
class IQ2_XXS(QuantFormat):
    """IQ2_XXS: 256 weights in 66 bytes (2.0625 bits per weight): 32 points of E8, 7 sign bits each.

    bytes 0-1    d        fp16 super-block scale
    bytes 2-65   qs[32]   uint16, read as eight pairs of uint32 (aux0, aux1), one pair per 32 weights:
                          byte l of aux0 = grid index of weights 8l..8l+7 (iq2xxs_grid, 256 points);
                          aux1 bits 7l..7l+6 = their sign index (ksigns_iq2xs, 128 even-parity bytes);
                          aux1 bits 28-31 = the 4-bit scale s of the 32 weights

    decode: x = d·(0.5 + s)·0.25 · grid[j] · (-1 if bit j of ksigns[sign index] else +1)
    (dequantize_row_iq2_xxs)
    """

    qtype = T.IQ2_XXS
    sub_block_size = 32
    block_dtype = struct(f16("d"), ("qs", "<u2", (32,)))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        aux = block["qs"].astype("<u2").view("<u4")  # 16 words: (aux0, aux1) × 8
        y = np.empty(256, dtype=np.float32)
        for ib32 in range(8):
            aux0, aux1 = int(aux[2 * ib32]), int(aux[2 * ib32 + 1])
            db = d * np.float32(0.5 + (aux1 >> 28)) * np.float32(0.25)
            for l in range(4):
                grid = _IQ2XXS[(aux0 >> 8 * l) & 0xFF]
                signs = _signs(_KSIGNS[(aux1 >> 7 * l) & 127])
                y[32 * ib32 + 8 * l : 32 * ib32 + 8 * l + 8] = db * grid * signs
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        qs = self.field(blocks, "qs").view(np.uint8).reshape(n, 8, 8)  # per 32 weights: aux0, aux1
        aux1 = np.ascontiguousarray(qs[:, :, 4:]).view("<u4")[..., 0]  # (n, 8)
        signs = (aux1[:, :, None] >> np.array([0, 7, 14, 21], np.uint32)) & 127
        index = (signs.astype(np.uint16) << 8) | qs[:, :, :4]  # (n, 8, 4)
        d = blocks["d"].astype(np.float32)[:, None]
        db = d * _HALF_PLUS[aux1 >> 28] * np.float32(0.25)  # (n, 8)
        return _scaled(_IQ2XXS_SIGNED, index, db, self.weights_for(blocks, out))

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        n = blocks.shape[0]
        qs = _int32(self.byte_range(blocks, 2, 64)).view(n, 8, 8)
        aux1 = _torch_words(qs[:, :, 4:])[..., 0]  # (n, 8)
        shifts = [0, 7, 14, 21]
        signs = (aux1[:, :, None] >> aux1.new_tensor(shifts)) & 127
        index = (signs << 8) | qs[:, :, :4]
        d = self.field(blocks, "d").float()[:, None]
        s = (aux1 >> 28).float()
        db = d * (0.5 + s) * 0.25
        return _scaled(_IQ2XXS_SIGNED, index, db, self.weights_for(blocks, out))


class IQ2_XS(QuantFormat):
    """IQ2_XS: 256 weights in 74 bytes (2.3125 bits per weight): 32 points of E8, a scale per 16.

    bytes 0-1    d           fp16 super-block scale
    bytes 2-65   qs[32]      uint16 per 8 weights: bits 0-8 grid index (iq2xs_grid, 512 points),
                             bits 9-15 sign index (ksigns_iq2xs)
    bytes 66-73  scales[8]   per 32 weights: low nibble s of the first 16, high nibble of the next 16

    decode: x = d·(0.5 + s)·0.25 · grid[j] · (-1 if bit j of ksigns[sign index] else +1)
    (dequantize_row_iq2_xs)
    """

    qtype = T.IQ2_XS
    sub_block_size = 16
    block_dtype = struct(f16("d"), ("qs", "<u2", (32,)), u8("scales", 8))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        y = np.empty(256, dtype=np.float32)
        for ib32 in range(8):
            db = _nibble_scales(d, int(block["scales"][ib32]))
            for l in range(4):
                q = int(block["qs"][4 * ib32 + l])
                grid, signs = _IQ2XS[q & 511], _signs(_KSIGNS[q >> 9])
                y[32 * ib32 + 8 * l : 32 * ib32 + 8 * l + 8] = db[l // 2] * grid * signs
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        index = self.field(blocks, "qs").reshape(n, 16, 2)  # the uint16 is the row
        return _scaled(_IQ2XS_SIGNED, index, _iq2_scales(self, blocks), self.weights_for(blocks, out))

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        n = blocks.shape[0]
        b = _int32(self.byte_range(blocks, 2, 64)).view(n, 32, 2)
        index = (b[..., 0] | (b[..., 1] << 8)).view(n, 16, 2)
        return _scaled(_IQ2XS_SIGNED, index, _iq2_scales(self, blocks), self.weights_for(blocks, out))


class IQ2_S(QuantFormat):
    """IQ2_S: 256 weights in 82 bytes (2.5625 bits per weight): 10-bit grid indices, 8 free sign bits.

    bytes 0-1    d           fp16 super-block scale
    bytes 2-65   qs[64]      bytes 0-31 of qs: low 8 bits of the grid index of each 8 weights
                             (iq2s_grid, 1024 points); bytes 32-63: their 8 sign bits, one byte each
    bytes 66-73  qh[8]       per 32 weights: bits 2l..2l+1 are bits 8-9 of group l's grid index
    bytes 74-81  scales[8]   per 32 weights: low nibble s of the first 16, high nibble of the next 16

    decode: x = d·(0.5 + s)·0.25 · grid[j] · (-1 if bit j of the sign byte else +1)
    (dequantize_row_iq2_s)
    """

    qtype = T.IQ2_S
    sub_block_size = 16
    block_dtype = struct(f16("d"), u8("qs", 64), u8("qh", 8), u8("scales", 8))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        qs, signs, qh = block["qs"][:32], block["qs"][32:], block["qh"]
        y = np.empty(256, dtype=np.float32)
        for ib32 in range(8):
            db = _nibble_scales(d, int(block["scales"][ib32]))
            for l in range(4):
                index = int(qs[4 * ib32 + l]) | ((int(qh[ib32]) >> 2 * l) & 3) << 8
                grid = _IQ2S[index]
                y[32 * ib32 + 8 * l : 32 * ib32 + 8 * l + 8] = db[l // 2] * grid * _signs(signs[4 * ib32 + l])
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        qs = self.field(blocks, "qs")
        high = (self.field(blocks, "qh")[:, :, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
        index = qs[:, :32].astype(np.uint16) | (high.reshape(n, 32).astype(np.uint16) << 8)
        points = lookup_rows(_IQ2S, index.astype(np.intp))  # (n, 32, 8)
        points *= lookup_rows(_SIGN_PATTERNS, qs[:, 32:])  # the sign bits, exact
        out = self.weights_for(blocks, out)
        np.multiply(
            points.reshape(n, 16, 2, 8), _iq2_scales(self, blocks)[:, :, None, None], out=out.reshape(n, 16, 2, 8)
        )
        return out

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        n = blocks.shape[0]
        qs = _int32(self.byte_range(blocks, 2, 64))
        qh = _int32(self.byte_range(blocks, 66, 8))
        high = torch.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], dim=-1).reshape(n, 32)
        index = qs[:, :32] | (high << 8)
        table, signs = _torch_table(_IQ2S, blocks.device), _torch_table(_SIGN_PATTERNS, blocks.device)
        points = torch.index_select(table, 0, index.reshape(-1).long()).view(n, 16, 2, 8)
        points *= torch.index_select(signs, 0, qs[:, 32:].reshape(-1).long()).view(n, 16, 2, 8)
        out = self.weights_for(blocks, out)
        torch.mul(points, _iq2_scales(self, blocks)[:, :, None, None], out=out.view(n, 16, 2, 8))
        return out


def _iq2_scales(fmt: QuantFormat, blocks: Array) -> Array:
    """IQ2_XS, IQ2_S: d·(0.5 + s)·0.25 per 16 weights, (n, 16) float32 (s: the nibbles, low first)."""
    if is_torch(blocks):
        scales = fmt.field(blocks, "scales").to(torch.int32)
        s = torch.stack([scales & 0xF, scales >> 4], dim=-1).reshape(blocks.shape[0], 16).float()
        return fmt.field(blocks, "d").float()[:, None] * (0.5 + s) * 0.25
    nibbles = np.stack([blocks["scales"] & 0xF, blocks["scales"] >> 4], axis=-1).reshape(len(blocks), 16)
    return blocks["d"].astype(np.float32)[:, None] * _HALF_PLUS[nibbles] * np.float32(0.25)


# ---- IQ3 ---------------------------------------------------------------------------------------------
class IQ3_XXS(QuantFormat):
    """IQ3_XXS: 256 weights in 98 bytes (3.0625 bits per weight): 64 points of D4, 4 weights each.

    bytes 0-1    d        fp16 super-block scale
    bytes 2-97   qs[96]   bytes 0-63 of qs: one grid index per 4 weights (iq3xxs_grid, 256 points);
                          bytes 64-95: a uint32 per 32 weights: bits 7l..7l+6 = the sign index of
                          weights 8l..8l+7 (ksigns_iq2xs; bits 0-3 of the sign byte for the first
                          point, 4-7 for the second), bits 28-31 = the 4-bit scale s

    decode: x = d·(0.5 + s)·0.5 · grid[j] · (-1 if the weight's bit of ksigns[sign index] else +1)
    (dequantize_row_iq3_xxs)
    """

    qtype = T.IQ3_XXS
    sub_block_size = 32
    block_dtype = struct(f16("d"), u8("qs", 96))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        qs = block["qs"]
        scales_and_signs = qs[64:].view("<u4")
        y = np.empty(256, dtype=np.float32)
        for ib32 in range(8):
            aux = int(scales_and_signs[ib32])
            db = d * np.float32(0.5 + (aux >> 28)) * np.float32(0.5)
            for l in range(4):
                signs = _signs(_KSIGNS[(aux >> 7 * l) & 127])
                grid = np.concatenate([_IQ3XXS[qs[8 * ib32 + 2 * l]], _IQ3XXS[qs[8 * ib32 + 2 * l + 1]]])
                y[32 * ib32 + 8 * l : 32 * ib32 + 8 * l + 8] = db * grid * signs
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        qs = self.field(blocks, "qs")
        aux = np.ascontiguousarray(qs[:, 64:]).view("<u4")  # (n, 8)
        sign_index = (aux[:, :, None] >> np.array([0, 7, 14, 21], np.uint32)) & 127  # (n, 8, 4)
        high = np.take(_KSIGN_NIBBLES_HIGH, sign_index).view(np.uint16).reshape(n, 8, 8)
        index = high | qs[:, :64].reshape(n, 8, 8)
        db = blocks["d"].astype(np.float32)[:, None] * _HALF_PLUS[aux >> 28] * np.float32(0.5)
        return _scaled(_IQ3XXS_SIGNED, index, db, self.weights_for(blocks, out))

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        n = blocks.shape[0]
        qs = _int32(self.byte_range(blocks, 2, 96))
        aux = _torch_words(qs[:, 64:])  # (n, 8)
        sign_index = torch.stack([(aux >> s) & 127 for s in (0, 7, 14, 21)], dim=-1)  # (n, 8, 4)
        high = torch.index_select(
            _torch_table(_KSIGN_NIBBLES_HIGH_INT32, blocks.device), 0, sign_index.reshape(-1)
        ).view(n, 8, 8)
        index = high | qs[:, :64].reshape(n, 8, 8)
        db = self.field(blocks, "d").float()[:, None] * (0.5 + (aux >> 28).float()) * 0.5
        return _scaled(_IQ3XXS_SIGNED, index, db, self.weights_for(blocks, out))


class IQ3_S(QuantFormat):
    """IQ3_S: 256 weights in 110 bytes (3.4375 bits per weight): 9-bit grid indices, free signs.

    bytes 0-1      d           fp16 super-block scale
    bytes 2-65     qs[64]      low 8 bits of the grid index of each 4 weights (iq3s_grid, 512 points)
    bytes 66-73    qh[8]       per 32 weights: bit k is bit 8 of the index of its point k (k = 0..7)
    bytes 74-105   signs[32]   per 8 weights one byte, bit j the sign of weight j
    bytes 106-109  scales[4]   per 64 weights: low nibble s of the first 32, high nibble of the next 32

    decode: x = d·(1 + 2s) · grid[j] · (-1 if the weight's sign bit is set else +1)
    (dequantize_row_iq3_s)
    """

    qtype = T.IQ3_S
    sub_block_size = 32
    block_dtype = struct(f16("d"), u8("qs", 64), u8("qh", 8), u8("signs", 32), u8("scales", 4))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        qs, qh, signs = block["qs"], block["qh"], block["signs"]
        y = np.empty(256, dtype=np.float32)
        for ib32 in range(8):
            s = (int(block["scales"][ib32 // 2]) >> 4 * (ib32 % 2)) & 0xF
            db = d * np.float32(1 + 2 * s)
            for k in range(8):  # 8 points of 4 weights
                index = int(qs[8 * ib32 + k]) | ((int(qh[ib32]) >> k) & 1) << 8
                sign = _signs(int(signs[4 * ib32 + k // 2]) >> 4 * (k % 2), 4)
                y[32 * ib32 + 4 * k : 32 * ib32 + 4 * k + 4] = db * _IQ3S[index] * sign
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        high = (self.field(blocks, "qh")[:, :, None] >> _BITS) & 1  # (n, 8, 8)
        signs = self.field(blocks, "signs")
        nibbles = np.stack([signs & 0xF, signs >> 4], axis=-1).reshape(n, 8, 8)
        index = (
            (nibbles.astype(np.uint16) << 9) | (high.astype(np.uint16) << 8) | self.field(blocks, "qs").reshape(n, 8, 8)
        )
        scales = blocks["scales"]
        s = np.stack([scales & 0xF, scales >> 4], axis=-1).reshape(n, 8)
        db = blocks["d"].astype(np.float32)[:, None] * _ODD[s]
        return _scaled(_IQ3S_SIGNED, index, db, self.weights_for(blocks, out))

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        n = blocks.shape[0]
        qh = _int32(self.byte_range(blocks, 66, 8))
        high = torch.stack([(qh >> k) & 1 for k in range(8)], dim=-1)  # (n, 8, 8)
        signs = _int32(self.byte_range(blocks, 74, 32))
        nibbles = torch.stack([signs & 0xF, signs >> 4], dim=-1).reshape(n, 8, 8)
        index = (nibbles << 9) | (high << 8) | _int32(self.byte_range(blocks, 2, 64)).reshape(n, 8, 8)
        scales = _int32(self.byte_range(blocks, 106, 4))
        s = torch.stack([scales & 0xF, scales >> 4], dim=-1).reshape(n, 8)
        db = self.field(blocks, "d").float()[:, None] * (1 + 2 * s).float()
        return _scaled(_IQ3S_SIGNED, index, db, self.weights_for(blocks, out))


# ---- IQ1 ---------------------------------------------------------------------------------------------
class IQ1_S(QuantFormat):
    """IQ1_S: 256 weights in 50 bytes (1.5625 bits per weight): 32 ternary points, shifted by ±1/8.

    bytes 0-1    d        fp16 super-block scale
    bytes 2-33   qs[32]   low 8 bits of the grid index of each 8 weights (iq1s_grid, 2048 points)
    bytes 34-49  qh[8]    uint16 per 32 weights: bits 3l..3l+2 = bits 8-10 of group l's index,
                          bits 12-14 = the 3-bit scale s, bit 15 = the sign of delta

    decode: x = d·(2s + 1) · (grid[j] + delta), delta = -0.125 if bit 15 else +0.125 (IQ1S_DELTA)
    (dequantize_row_iq1_s)
    """

    qtype = T.IQ1_S
    sub_block_size = 32
    block_dtype = struct(f16("d"), u8("qs", 32), ("qh", "<u2", (8,)))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        y = np.empty(256, dtype=np.float32)
        for ib in range(8):
            qh = int(block["qh"][ib])
            dl = d * np.float32(2 * ((qh >> 12) & 7) + 1)
            delta = -iq_grids.IQ1S_DELTA if qh & 0x8000 else iq_grids.IQ1S_DELTA
            for l in range(4):
                grid = _IQ1S[int(block["qs"][4 * ib + l]) | ((qh >> 3 * l) & 7) << 8]
                y[32 * ib + 8 * l : 32 * ib + 8 * l + 8] = dl * (grid + delta)
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        qh = self.field(blocks, "qh")  # (n, 8) uint16
        key = (qh & 0x0FFF) | ((qh >> 3) & 0x1000)  # index bits + delta bit
        high = np.take(_IQ1S_HIGH_BITS, key).view(np.uint16).reshape(n, 8, 4)
        index = high | self.field(blocks, "qs").reshape(n, 8, 4)
        dl = blocks["d"].astype(np.float32)[:, None] * _ODD[(qh >> 12) & 7]
        return _scaled(_IQ1_SHIFTED, index, dl, self.weights_for(blocks, out))

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        n = blocks.shape[0]
        b = _int32(self.byte_range(blocks, 34, 16)).view(n, 8, 2)
        qh = b[..., 0] | (b[..., 1] << 8)  # (n, 8)
        high = torch.stack([(qh >> s) & 7 for s in (0, 3, 6, 9)], dim=-1)
        index = ((qh[:, :, None] >> 15) << 11) | (high << 8) | _int32(self.byte_range(blocks, 2, 32)).view(n, 8, 4)
        dl = self.field(blocks, "d").float()[:, None] * (2 * ((qh >> 12) & 7) + 1).float()
        return _scaled(_IQ1_SHIFTED, index, dl, self.weights_for(blocks, out))


class IQ1_M(QuantFormat):
    """IQ1_M: 256 weights in 56 bytes (1.75 bits per weight): IQ1_S's grid, a scale per 16, no d field.

    bytes 0-31   qs[32]      low 8 bits of the grid index of each 8 weights (iq1s_grid)
    bytes 32-47  qh[16]      one nibble per 8 weights (low nibble first): bits 0-2 = bits 8-10 of the
                             grid index, bit 3 = the sign of that group's delta
    bytes 48-55  scales[8]   four uint16 sc[0..3]: bits 3t..3t+2 of sc[k] = the 3-bit scale s of
                             weights 64k + 16t .. +15 (t = 0..3); the top nibbles of sc[0], sc[1], sc[2],
                             sc[3] are bits 0-3, 4-7, 8-11, 12-15 of the fp16 d (iq1m_scale_t)

    decode: x = d·(2s + 1) · (grid[j] + delta), delta = -0.125 if bit 3 else +0.125
    (dequantize_row_iq1_m)
    """

    qtype = T.IQ1_M
    sub_block_size = 16
    block_dtype = struct(u8("qs", 32), u8("qh", 16), u8("scales", 8))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        sc = [int(v) for v in block["scales"].view("<u2")]
        d_bits = (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000)
        d = np.float32(np.uint16(d_bits).view(np.float16))
        y = np.empty(256, dtype=np.float32)
        for g in range(32):  # groups of 8 weights
            nibble = (int(block["qh"][g // 2]) >> 4 * (g % 2)) & 0xF
            grid = _IQ1S[int(block["qs"][g]) | (nibble & 7) << 8]
            delta = -iq_grids.IQ1M_DELTA if nibble & 8 else iq_grids.IQ1M_DELTA
            s = (sc[g // 8] >> 3 * (g // 2 % 4)) & 7  # 16 weights per scale
            y[8 * g : 8 * g + 8] = (d * np.float32(2 * s + 1)) * (grid + delta)
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        high = np.take(_IQ1M_HIGH_BITS, self.field(blocks, "qh")).view(np.uint16)  # (n, 32)
        index = high.reshape(n, 16, 2) | self.field(blocks, "qs").reshape(n, 16, 2)
        sc = self.field(blocks, "scales").view("<u2")  # (n, 4)
        d_bits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
        d = d_bits.view(np.float16).astype(np.float32)
        s = (sc[:, :, None] >> np.array([0, 3, 6, 9], np.uint16)) & 7  # (n, 4, 4): per 16 weights
        dl = d[:, None] * _ODD[s.reshape(n, 16)]
        return _scaled(_IQ1_SHIFTED, index, dl, self.weights_for(blocks, out))

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        n = blocks.shape[0]
        qh = _int32(self.byte_range(blocks, 32, 16))
        nibbles = torch.stack([qh & 0xF, qh >> 4], dim=-1).reshape(n, 16, 2)
        index = (nibbles << 8) | _int32(self.byte_range(blocks, 0, 32)).view(n, 16, 2)
        b = _int32(self.byte_range(blocks, 48, 8)).view(n, 4, 2)
        sc = b[..., 0] | (b[..., 1] << 8)  # (n, 4)
        d_bits = (sc[:, 0] >> 12) | ((sc[:, 1] >> 8) & 0x00F0) | ((sc[:, 2] >> 4) & 0x0F00) | (sc[:, 3] & 0xF000)
        d = torch.where(d_bits >= 0x8000, d_bits - 0x10000, d_bits).to(torch.int16).view(torch.float16).float()
        s = torch.stack([(sc >> t) & 7 for t in (0, 3, 6, 9)], dim=-1).reshape(n, 16)
        dl = d[:, None] * (2 * s + 1).float()
        return _scaled(_IQ1_SHIFTED, index, dl, self.weights_for(blocks, out))
