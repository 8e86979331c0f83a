"""Every ggml tensor type a GGUF file can hold, as readable and fast code.

fmt = quants.get("Q4_K")        # or gguf.GGMLQuantizationType.Q4_K, or its id 12
fmt.block_dtype                 # one named field per C struct field, in ggml-common.h order
fmt.dequantize(raw)             # uint8 [..., n*type_size] -> float32 [..., n*block_size]
fmt.dequantize_reference(raw)   # the same, one readable block at a time
fmt.dequantize_torch(tensor)    # the same in torch, on the tensor's device
fmt.quantize(x)                 # llama.cpp's reference quantizer: float32 -> bytes
fmt.quantize(x, imatrix=v)      # the same weighted by an importance matrix (see weighted.py)
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from . import floats, iq4, iquants, legacy, mxfp4, q2_k, q3_k, q4_k, q5_k, q6_k, ternary
from .format import QuantFormat, RawBytes

_MODULES = [floats, legacy, q2_k, q3_k, q4_k, q5_k, q6_k, iquants, iq4, ternary, mxfp4]

#: Every supported type, in ggml's type-id order, keyed by gguf.GGMLQuantizationType.
FORMATS: dict[GGMLQuantizationType, QuantFormat] = dict(
    sorted(
        (
            (cls.qtype, cls())
            for module in _MODULES
            for cls in vars(module).values()
            if isinstance(cls, type) and issubclass(cls, QuantFormat) and "qtype" in vars(cls)
        ),
        key=lambda item: item[0].value,
    )
)


def get(name_or_type: str | GGMLQuantizationType | int) -> QuantFormat:
    """The format for a type name ("Q4_K", "q4_k"), a GGMLQuantizationType, or a ggml type id."""
    try:
        if isinstance(name_or_type, str):
            qtype = GGMLQuantizationType[name_or_type.upper()]
        else:
            qtype = GGMLQuantizationType(int(name_or_type))
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"unknown ggml type {name_or_type!r}; known: {', '.join(names())}") from None
    if qtype not in FORMATS:
        raise ValueError(f"ggml type {qtype.name} is not supported here; supported: {', '.join(names())}")
    return FORMATS[qtype]


def names() -> list[str]:
    return [qtype.name for qtype in FORMATS]


def dequantize(raw: RawBytes, qtype: str | GGMLQuantizationType | int) -> np.ndarray:
    """Shortcut for ``get(qtype).dequantize(raw)``."""
    return get(qtype).dequantize(raw)


def quantize(x: np.ndarray, qtype: str | GGMLQuantizationType | int, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Shortcut for ``get(qtype).quantize(x, imatrix)``."""
    return get(qtype).quantize(x, imatrix)


__all__ = ["FORMATS", "QuantFormat", "get", "names", "dequantize", "quantize"]
