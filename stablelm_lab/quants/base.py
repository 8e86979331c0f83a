"""What every ggml block format shares: turning rows of bytes into blocks and back.

A format only writes its block logic. This base class checks shapes, views the bytes as blocks of the
format's structured dtype, and offers the four public operations:

    fmt.dequantize_reference(raw)   readable: one block at a time, the way ggml's C reference reads
    fmt.dequantize(raw)             vectorized numpy over all blocks at once
    fmt.dequantize_torch(raw)       vectorized torch, on the tensor's device
    fmt.quantize(x)                 float32 rows -> bytes, the reference quantizer

Shapes follow gguf-py: uint8 ``[..., n_blocks * type_size]`` <-> float32 ``[..., n_blocks * block_size]``.
"""

from __future__ import annotations

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

#: Weights decoded per step of the vectorized numpy kernels: small enough that the temporaries stay in
#: cache and are reused instead of being fresh (page-faulting) memory at every step.
CHUNK_WEIGHTS = 1 << 16
#: The same for torch on the CPU, where each step costs more Python overhead. On a GPU: one step.
CHUNK_WEIGHTS_TORCH_CPU = 1 << 20


class QuantFormat:
    """One ggml tensor type: its block layout and the four conversions between bytes and weights."""

    qtype: GGMLQuantizationType
    block_dtype: np.dtype

    def __init__(self) -> None:
        self.block_size, self.type_size = GGML_QUANT_SIZES[self.qtype]
        if self.block_dtype.itemsize != self.type_size:
            raise AssertionError(f"{self.name}: block_dtype is {self.block_dtype.itemsize} bytes, "
                                 f"ggml says {self.type_size}")

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block_size

    def __repr__(self) -> str:
        return (f"<{self.name}: {self.block_size} weights in {self.type_size} bytes, "
                f"{self.bits_per_weight:g} bits per weight>")

    # ---- what a format implements ------------------------------------------------------------
    def dequantize_block(self, block: np.void) -> np.ndarray:
        """Readable decode of one block (a structured scalar of ``block_dtype``) -> float32[block_size]."""
        raise NotImplementedError

    def dequantize_blocks(self, blocks: np.ndarray) -> np.ndarray:
        """Vectorized decode: structured array (n,) of ``block_dtype`` -> float32 (n, block_size)."""
        raise NotImplementedError

    def dequantize_blocks_torch(self, blocks):
        """Vectorized torch decode: uint8 tensor (n, type_size) -> float32 tensor (n, block_size)."""
        raise NotImplementedError

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        """Reference encode: float32 (n, block_size) -> structured array (n,) of ``block_dtype``."""
        raise NotImplementedError(f"{self.name} has no reference quantizer in ggml")

    @property
    def can_quantize(self) -> bool:
        return type(self).quantize_blocks is not QuantFormat.quantize_blocks

    # ---- the public operations ---------------------------------------------------------------
    def dequantize_reference(self, raw) -> np.ndarray:
        raw = self._check_raw(raw)
        blocks = self._as_blocks(raw)
        out = np.empty((len(blocks), self.block_size), dtype=np.float32)
        with np.errstate(all="ignore"):  # inf/NaN scales decode to inf/NaN, as in ggml
            for i, block in enumerate(blocks):
                out[i] = self.dequantize_block(block)
        return out.reshape(self._weights_shape(raw.shape))

    def dequantize(self, raw) -> np.ndarray:
        raw = self._check_raw(raw)
        blocks = self._as_blocks(raw)
        out = np.empty((len(blocks), self.block_size), dtype=np.float32)
        step = max(1, CHUNK_WEIGHTS // self.block_size)
        with np.errstate(all="ignore"):
            for start in range(0, len(blocks), step):
                out[start:start + step] = self.dequantize_blocks(blocks[start:start + step])
        return out.reshape(self._weights_shape(raw.shape))

    def dequantize_torch(self, raw):
        import torch

        if not isinstance(raw, torch.Tensor):
            raw = torch.from_numpy(np.ascontiguousarray(self._check_raw(raw)))
        if raw.dtype != torch.uint8:
            raise ValueError(f"{self.name} data must be uint8 bytes, got a {raw.dtype} tensor")
        self._check_row_bytes(tuple(raw.shape))
        blocks = raw.reshape(-1, self.type_size)
        if raw.device.type != "cpu":
            out = self.dequantize_blocks_torch(blocks)
        else:
            out = torch.empty((len(blocks), self.block_size), dtype=torch.float32)
            step = max(1, CHUNK_WEIGHTS_TORCH_CPU // self.block_size)
            for start in range(0, len(blocks), step):
                out[start:start + step] = self.dequantize_blocks_torch(blocks[start:start + step])
        return out.reshape(self._weights_shape(tuple(raw.shape)))

    def quantize(self, x) -> np.ndarray:
        if not self.can_quantize:
            raise NotImplementedError(f"{self.name} has no reference quantizer in ggml")
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] % self.block_size != 0:
            raise ValueError(f"{self.name} quantizes rows whose length is a multiple of {self.block_size}; "
                             f"got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        with np.errstate(all="ignore"):
            blocks = self.quantize_blocks(x.reshape(-1, self.block_size))
        return blocks.view(np.uint8).reshape(*x.shape[:-1], x.shape[-1] // self.block_size * self.type_size)

    # ---- shapes ------------------------------------------------------------------------------
    def _check_raw(self, raw) -> np.ndarray:
        if isinstance(raw, (bytes, bytearray, memoryview)):
            raw = np.frombuffer(raw, dtype=np.uint8)
        raw = np.asarray(raw)
        if raw.dtype != np.uint8:
            raise ValueError(f"{self.name} data must be uint8 bytes, got dtype {raw.dtype}")
        self._check_row_bytes(raw.shape)
        return raw

    def _check_row_bytes(self, shape: tuple) -> None:
        if len(shape) == 0 or shape[-1] % self.type_size != 0:
            raise ValueError(f"{self.name} rows must be a whole number of {self.type_size}-byte blocks; "
                             f"got shape {shape}")

    def _as_blocks(self, raw: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(raw).reshape(-1, self.type_size).view(self.block_dtype).reshape(-1)

    def _weights_shape(self, byte_shape: tuple) -> tuple:
        return (*byte_shape[:-1], byte_shape[-1] // self.type_size * self.block_size)

    # ---- torch helpers shared by the formats -------------------------------------------------
    def torch_field(self, blocks, name: str):
        """The bytes of one struct field in every block, typed: (n,) for a scalar, (n, k) for an array."""
        import torch

        sub, offset = self.block_dtype.fields[name][:2]
        base, shape = (sub.subdtype or (sub, ()))
        count = int(np.prod(shape)) if shape else 1
        data = blocks[:, offset:offset + count * base.itemsize]
        if base.itemsize > 1:
            data = data.contiguous().view(_TORCH_DTYPES[base.str])
        elif base.kind == "i":
            data = data.view(torch.int8)
        return data[:, 0] if not shape else data


def _torch_dtypes() -> dict:
    try:
        import torch
    except ImportError:  # torch is only needed for dequantize_torch
        return {}
    return {"<f2": torch.float16, "<f4": torch.float32, "<i2": torch.int16, "<u2": torch.uint16}


_TORCH_DTYPES = _torch_dtypes()


def f16(name: str, count: int | None = None):
    """A struct field of ggml_half (IEEE half, little-endian)."""
    return (name, "<f2") if count is None else (name, "<f2", (count,))


def u8(name: str, count: int | None = None):
    return (name, "u1") if count is None else (name, "u1", (count,))


def i8(name: str, count: int):
    return (name, "i1", (count,))


def struct(*fields) -> np.dtype:
    """A packed C struct (ggml blocks have no padding: every static_assert says so)."""
    return np.dtype(list(fields))
