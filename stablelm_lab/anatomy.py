"""A block taken apart: which bytes are which field, and what each field holds.

    fields = block_fields(quants.get("Q4_K"), raw_block)   # [Field(name='d', offset=0, nbytes=2, ...), ...]
    byte_owner(quants.get("Q4_K"))                           # ['d', 'd', 'dmin', 'dmin', 'scales', ...]

Everything is read from the format's ``block_dtype``, the one description of the C struct.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .quants import QuantFormat

#: Weights that share one scale (and min) inside a block: the unit the error plots group by.
SUB_BLOCK_SIZE = {"Q2_K": 16, "Q3_K": 16, "Q6_K": 16, "Q4_K": 32, "Q5_K": 32, "IQ4_XS": 32,
                  "IQ2_XXS": 32, "IQ2_XS": 16, "IQ2_S": 16, "IQ3_XXS": 32, "IQ3_S": 32, "IQ1_S": 32, "IQ1_M": 16}


@dataclass(frozen=True)
class Field:
    name: str
    offset: int           # first byte inside the block
    nbytes: int
    ctype: str            # the C type, e.g. "ggml_half" or "uint8_t[12]"
    value: np.ndarray     # the field's value(s), typed (fp16 scales as float32)

    @property
    def end(self) -> int:
        return self.offset + self.nbytes


_CTYPES = {"<f2": "ggml_half", "<f4": "float", "|u1": "uint8_t", "|i1": "int8_t", "<u2": "uint16_t",
           "<i2": "int16_t"}


def block_fields(fmt: QuantFormat, raw_block) -> list[Field]:
    """The fields of one block (``type_size`` bytes) in struct order, with their values."""
    raw_block = np.frombuffer(bytes(raw_block), dtype=np.uint8) if not isinstance(raw_block, np.ndarray) \
        else raw_block
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
        owner[offset:offset + dtype.itemsize] = [name] * dtype.itemsize
    return owner


def sub_block_size(fmt: QuantFormat) -> int:
    return SUB_BLOCK_SIZE.get(fmt.name, fmt.block_size)
