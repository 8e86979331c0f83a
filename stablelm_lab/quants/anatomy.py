"""A block taken apart: which bytes are which field, and what each field holds.

    fields = block_fields(quants.get("Q4_K"), raw_block)   # [Field(name='d', offset=0, nbytes=2, ...), ...]
    byte_owner(quants.get("Q4_K"))                           # ['d', 'd', 'dmin', 'dmin', 'scales', ...]

Everything is read from the format's ``block_dtype``, the one description of the C struct.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .format import QuantFormat
from .legacy import Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
from .q2_k import Q2_K
from .q3_k import Q3_K
from .q4_k import Q4_K
from .q5_k import Q5_K
from .q6_k import Q6_K


@dataclass(frozen=True)
class Field:
    name: str
    offset: int  # first byte inside the block
    nbytes: int
    ctype: str  # the C type, e.g. "ggml_half" or "uint8_t[12]"
    value: np.ndarray  # the field's value(s), typed (fp16 scales as float32)

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


_CTYPES = {"<f2": "ggml_half", "<f4": "float", "|u1": "uint8_t", "|i1": "int8_t", "<u2": "uint16_t", "<i2": "int16_t"}


def block_fields(fmt: QuantFormat, raw_block: np.ndarray | bytes) -> list[Field]:
    """The fields of one block (``type_size`` bytes) in struct order, with their values."""
    raw_block = np.frombuffer(bytes(raw_block), dtype=np.uint8) if not isinstance(raw_block, np.ndarray) else raw_block
    if raw_block.size != fmt.type_size:
        raise ValueError(f"a {fmt.name} block is {fmt.type_size} bytes; got {raw_block.size}")
    block = np.ascontiguousarray(raw_block, dtype=np.uint8).view(fmt.block_dtype)[0]
    fields = []
    for name in fmt.block_dtype.names:
        dtype, offset = fmt.block_dtype.fields[name][:2]
        base, shape = dtype.subdtype or (dtype, ())
        ctype = _CTYPES.get(base.str, base.str) + (f"[{shape[0]}]" if shape else "")
        value = np.atleast_1d(np.asarray(block[name]))
        if base.kind == "f":
            value = value.astype(np.float32)
        fields.append(Field(name, offset, dtype.itemsize, ctype, value))
    return fields


def byte_owner(fmt: QuantFormat) -> list[str]:
    """For each byte of a block, the name of the field it belongs to."""
    owner = [""] * fmt.type_size
    for name in fmt.block_dtype.names:
        dtype, offset = fmt.block_dtype.fields[name][:2]
        owner[offset : offset + dtype.itemsize] = [name] * dtype.itemsize
    return owner


# ---- which bit of a block holds what ---------------------------------------------------------------------
@dataclass(frozen=True)
class BitMap:
    """What every bit of one block is for; arrays of shape (type_size, 8), bit 0 the least significant.

    group:  the sub-block the bit serves (K-quants: its scale, its min or one of its weights' levels);
            for the 32-weight formats the half of the block (0: weights 0-15, 1: weights 16-31);
            -1 for a field the whole block shares (d, dmin, m).
    role:   "d", "dmin", "m" (block-wide fp16 fields), "scale", "min" (a sub-block's), "level" (the low
            bits of a weight's level), "high" (a level's bits kept apart: hmask, qh).
    weight: the weight whose level the bit belongs to, -1 for scales and mins.
    """

    fmt_name: str
    group_size: int
    group: np.ndarray
    role: np.ndarray
    weight: np.ndarray


def bit_map(fmt: QuantFormat) -> BitMap:
    """The bit map of a legacy or K-quant block, from ggml-quants.c's dequantize_row_* index arithmetic
    (quoted in FACTS: get_scale_min_k4 for Q4_K/Q5_K, hmask/qs for Q3_K, ql/qh for Q6_K)."""
    try:
        fill = _BIT_FILLERS[type(fmt)]
    except KeyError:
        known = ", ".join(cls.qtype.name for cls in _BIT_FILLERS)
        raise ValueError(f"no bit map for {fmt.name}; known: {known}") from None
    # a block with one scale is drawn in halves: byte j holds weights j and j + 16
    group_size = fmt.sub_block_size if fmt.sub_block_size < fmt.block_size else fmt.block_size // 2
    n = fmt.type_size
    m = BitMap(fmt.name, group_size, np.full((n, 8), -1), np.full((n, 8), "", dtype=object), np.full((n, 8), -1))
    at = {name: fmt.block_dtype.fields[name][1] for name in fmt.block_dtype.names}
    for name in ("d", "dmin", "m"):
        if name in at:
            m.role[at[name] : at[name] + 2] = name
    fill(m, at)
    return m


def _mark(m: BitMap, byte: int, bits, group: int, role: str, weight: int = -1) -> None:
    for bit in bits:
        m.group[byte, bit], m.role[byte, bit], m.weight[byte, bit] = group, role, weight


def _legacy(m: BitMap, at: dict) -> None:
    for w in range(32):
        if "qs" in at and m.fmt_name == "Q8_0":
            _mark(m, at["qs"] + w, range(8), w // 16, "level", w)
            continue
        _mark(m, at["qs"] + w % 16, range(4) if w < 16 else range(4, 8), w // 16, "level", w)
        if "qh" in at:  # bit w of a little-endian uint32
            _mark(m, at["qh"] + w // 8, [w % 8], w // 16, "high", w)


def _two_bit_levels(m: BitMap, at: dict, group_size: int) -> None:
    """Q2_K's and Q3_K's qs: weight i = 128h + 32j + l has bits 2j, 2j+1 of qs[32h + l]."""
    for i in range(256):
        h, j, l = i // 128, (i % 128) // 32, i % 32
        _mark(m, at["qs"] + 32 * h + l, [2 * j, 2 * j + 1], i // group_size, "level", i)


def _q2_k(m: BitMap, at: dict) -> None:
    for s in range(16):
        _mark(m, at["scales"] + s, range(4), s, "scale")
        _mark(m, at["scales"] + s, range(4, 8), s, "min")
    _two_bit_levels(m, at, 16)


def _q3_k(m: BitMap, at: dict) -> None:
    for s in range(16):
        low = 4 * (s // 8)
        _mark(m, at["scales"] + s % 8, range(low, low + 4), s, "scale")
        high = 2 * (s // 4)
        _mark(m, at["scales"] + 8 + s % 4, [high, high + 1], s, "scale")
    _two_bit_levels(m, at, 16)
    for i in range(256):
        h, j, l = i // 128, (i % 128) // 32, i % 32
        _mark(m, at["hmask"] + l, [4 * h + j], i // 16, "high", i)


def _k4_scales(m: BitMap, at: dict) -> None:
    """get_scale_min_k4: eight 6-bit scales and mins in 12 bytes."""
    q = at["scales"]
    for j in range(8):
        if j < 4:
            _mark(m, q + j, range(6), j, "scale")
            _mark(m, q + j + 4, range(6), j, "min")
        else:
            _mark(m, q + j + 4, range(4), j, "scale")
            _mark(m, q + j - 4, [6, 7], j, "scale")
            _mark(m, q + j + 4, range(4, 8), j, "min")
            _mark(m, q + j, [6, 7], j, "min")


def _q4_k(m: BitMap, at: dict) -> None:
    _k4_scales(m, at)
    for i in range(256):
        c, r = i // 64, i % 64
        _mark(m, at["qs"] + 32 * c + r % 32, range(4) if r < 32 else range(4, 8), i // 32, "level", i)
    if "qh" in at:  # Q5_K: the fifth bit of weight i is bit i // 32 of qh[i % 32]
        for i in range(256):
            _mark(m, at["qh"] + i % 32, [i // 32], i // 32, "high", i)


def _q6_k(m: BitMap, at: dict) -> None:
    for s in range(16):
        _mark(m, at["scales"] + s, range(8), s, "scale")
    for i in range(256):
        h, k, l = i // 128, (i % 128) // 32, i % 32
        low = 4 * (k >> 1)
        _mark(m, at["ql"] + 64 * h + l + 32 * (k & 1), range(low, low + 4), i // 16, "level", i)
        _mark(m, at["qh"] + 32 * h + l, [2 * k, 2 * k + 1], i // 16, "high", i)


_BIT_FILLERS = {
    Q4_0: _legacy,
    Q4_1: _legacy,
    Q5_0: _legacy,
    Q5_1: _legacy,
    Q8_0: _legacy,
    Q2_K: _q2_k,
    Q3_K: _q3_k,
    Q4_K: _q4_k,
    Q5_K: _q4_k,
    Q6_K: _q6_k,
}
