"""llama.cpp's own quantize/dequantize row functions, called through ctypes.

A tool for making golden files, never a runtime dependency: it needs llama-cpp-python built from
source (see RECIPES in the README), whose libggml-base exports ggml's reference row functions
(quantize_row_*_ref, dequantize_row_*). Built without -march=native, so the C compiler emits no FMA and
float32 arithmetic rounds operation by operation, as numpy does.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

_ROW_NAME = {t: t.name.lower() for t in GGMLQuantizationType}
_ROW_NAME.update(
    {
        GGMLQuantizationType.Q2_K: "q2_K",
        GGMLQuantizationType.Q3_K: "q3_K",
        GGMLQuantizationType.Q4_K: "q4_K",
        GGMLQuantizationType.Q5_K: "q5_K",
        GGMLQuantizationType.Q6_K: "q6_K",
        GGMLQuantizationType.Q8_K: "q8_K",
    }
)


@lru_cache(maxsize=1)
def libggml_base() -> ctypes.CDLL:
    """$GGML_BASE_LIB (a libggml-base.so, e.g. /work/llama/build/bin/libggml-base.so) when set, else the
    one of the installed llama-cpp-python."""
    if os.environ.get("GGML_BASE_LIB"):
        return ctypes.CDLL(os.environ["GGML_BASE_LIB"])
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "llama-cpp-python is not installed: pip install --no-binary llama-cpp-python "
            "llama-cpp-python (with CMAKE_ARGS='-DGGML_NATIVE=OFF -DLLAMA_CURL=OFF')"
        )
    # LLAMA_CPP_LIB_PATH: where llama-cpp-python itself looks for a libllama built apart from the package
    lib_dir = Path(os.environ.get("LLAMA_CPP_LIB_PATH") or Path(spec.origin).parent / "lib")
    candidates = sorted(lib_dir.glob("libggml-base.*"))
    if not candidates:
        raise RuntimeError(f"no libggml-base in {lib_dir}")
    return ctypes.CDLL(str(candidates[0]))


def _fn(name: str):
    f = getattr(libggml_base(), name)
    f.restype = None
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return f


def quantize_row(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """ggml's quantize_row_<type>_ref over every row of x: float32 (..., k) -> uint8 (..., bytes)."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = x.size
    out = np.zeros(n // block_size * type_size, dtype=np.uint8)
    _fn(f"quantize_row_{_ROW_NAME[qtype]}_ref")(x.ctypes.data, out.ctypes.data, n)
    return out.reshape(*x.shape[:-1], x.shape[-1] // block_size * type_size)


def quantize_rows(x: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """ggml's quantize_<type>(src, dst, nrows, n_per_row, imatrix=NULL): what llama-quantize calls.

    For every type but IQ4_NL this is quantize_row_<type>_ref; IQ4_NL's row ref is a cheaper encoder
    (no scale search) that llama-quantize never uses.
    """
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    out = np.zeros(x.size // block_size * type_size, dtype=np.uint8)
    f = getattr(libggml_base(), f"quantize_{_ROW_NAME[qtype]}")
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    f(x.ctypes.data, out.ctypes.data, x.shape[0], x.shape[1], None)
    return out.reshape(x.shape[0], -1)


def dequantize_row(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    """ggml's dequantize_row_<type>: uint8 (..., bytes) -> float32 (..., k)."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    n = raw.size // type_size * block_size
    out = np.zeros(n, dtype=np.float32)
    _fn(f"dequantize_row_{_ROW_NAME[qtype]}")(raw.ctypes.data, out.ctypes.data, n)
    return out.reshape(*raw.shape[:-1], raw.shape[-1] // type_size * block_size)


def quantize_chunk(x: np.ndarray, qtype: GGMLQuantizationType, imatrix: np.ndarray | None = None) -> np.ndarray:
    """ggml_quantize_chunk(type, src, dst, 0, nrows, n_per_row, imatrix): what llama-quantize calls, with
    an importance vector (float32 [n_per_row]) or none. Calls ggml_quantize_init(type) first, which the
    i-quants need for their grids. float32 (nrows, n_per_row) -> uint8 (nrows, row bytes)."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
    out = np.zeros(x.size // block_size * type_size, dtype=np.uint8)
    lib = libggml_base()
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init(qtype.value)
    f = lib.ggml_quantize_chunk
    f.restype = ctypes.c_size_t
    f.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    weights = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    written = f(
        qtype.value,
        x.ctypes.data,
        out.ctypes.data,
        0,
        x.shape[0],
        x.shape[1],
        None if weights is None else weights.ctypes.data,
    )
    if written != out.size:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, expected {out.size}")
    return out.reshape(x.shape[0], -1)
