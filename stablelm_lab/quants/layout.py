"""Block layouts: ggml's C structs as numpy structured dtypes, one named field per struct field."""

from __future__ import annotations

import numpy as np

#: Weights in a K-quant (and IQ4_XS, TQ*) super-block: ggml's QK_K.
QK_K = 256

#: One struct field as numpy takes it: (name, dtype) or (name, dtype, (count,)).
StructField = tuple


def f16(name: str, count: int | None = None) -> StructField:
    """A struct field of ggml_half (IEEE half, little-endian)."""
    return (name, "<f2") if count is None else (name, "<f2", (count,))


def u8(name: str, count: int | None = None) -> StructField:
    """A struct field of uint8_t."""
    return (name, "u1") if count is None else (name, "u1", (count,))


def i8(name: str, count: int) -> StructField:
    """A struct field of int8_t[count]."""
    return (name, "i1", (count,))


def struct(*fields: StructField) -> np.dtype:
    """A packed C struct (ggml blocks have no padding: every static_assert says so)."""
    return np.dtype(list(fields))
