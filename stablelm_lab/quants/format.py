"""The format interface: what every ggml block format shares, turning rows of bytes into blocks and back.

A format only writes its block logic and its facts (``qtype``, ``block_dtype``, ``sub_block_size``). This
base class checks shapes, views the bytes as blocks of the format's structured dtype, and offers the
public operations:

    fmt.dequantize_reference(raw)   readable: one block at a time, the way ggml's C reference reads
    fmt.dequantize(raw)             vectorized numpy over all blocks at once
    fmt.dequantize_torch(raw)       vectorized torch, on the tensor's device
    fmt.quantize(x)                 float32 rows -> bytes, the reference quantizer
    fmt.quantize(x, imatrix)        the same, weighted by an importance matrix (weighted.py)

Shapes follow gguf-py: uint8 ``[..., n_blocks * type_size]`` <-> float32 ``[..., n_blocks * block_size]``.

The vectorized decoders run a step of blocks at a time (tuning.py: temporaries that fit a core's cache)
and write each step straight into its slice of the output; numpy's steps are split over threads
(threads.py). Every one of them gives the same float32 bits as ggml's C, inf and NaN included
(tests/test_quants.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from . import threads, tuning
from .arrays import Array, is_torch
from .bits import byte_runs

#: Raw bytes of a tensor as the public operations take them.
RawBytes = np.ndarray | bytes | bytearray | memoryview

_TORCH_DTYPES = {"<f2": torch.float16, "<f4": torch.float32, "<i2": torch.int16, "<u2": torch.uint16}


class QuantFormat:
    """One ggml tensor type: its block layout and the four conversions between bytes and weights."""

    qtype: GGMLQuantizationType
    block_dtype: np.dtype
    #: Weights that share one scale (and min) inside a block: the unit the error plots group by. A format
    #: whose block has one scale leaves it unset: the whole block.
    sub_block_size: int

    def __init__(self) -> None:
        self.block_size, self.type_size = GGML_QUANT_SIZES[self.qtype]
        if not hasattr(self, "sub_block_size"):
            self.sub_block_size = self.block_size
        if self.block_dtype.itemsize != self.type_size:
            raise AssertionError(
                f"{self.name}: block_dtype is {self.block_dtype.itemsize} bytes, ggml says {self.type_size}"
            )

    @property
    def name(self) -> str:
        return self.qtype.name

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block_size

    def __repr__(self) -> str:
        return (
            f"<{self.name}: {self.block_size} weights in {self.type_size} bytes, "
            f"{self.bits_per_weight:g} bits per weight>"
        )

    # ---- what a format implements ------------------------------------------------------------
    def dequantize_block(self, block: np.void) -> np.ndarray:
        """Readable decode of one block (a structured scalar of ``block_dtype``) -> float32[block_size]."""
        raise NotImplementedError

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Vectorized decode: structured array (n,) of ``block_dtype`` -> float32 (n, block_size),
        written into ``out`` when given."""
        raise NotImplementedError

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Vectorized torch decode: uint8 tensor (n, type_size) -> float32 tensor (n, block_size),
        written into ``out`` when given."""
        raise NotImplementedError

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        """Reference encode: float32 (n, block_size) -> structured array (n,) of ``block_dtype``."""
        raise NotImplementedError(f"{self.name} has no reference quantizer in ggml")

    @property
    def can_quantize(self) -> bool:
        return type(self).quantize_blocks is not QuantFormat.quantize_blocks

    # ---- the public operations ---------------------------------------------------------------
    def dequantize_reference(self, raw: RawBytes) -> np.ndarray:
        raw = self._check_raw(raw)
        blocks = self._as_blocks(raw)
        out = np.empty((len(blocks), self.block_size), dtype=np.float32)
        with np.errstate(all="ignore"):  # inf/NaN scales decode to inf/NaN, as in ggml
            for i, block in enumerate(blocks):
                out[i] = self.dequantize_block(block)
        return out.reshape(self._weights_shape(raw.shape))

    def dequantize(self, raw: RawBytes) -> np.ndarray:
        raw = self._check_raw(raw)
        blocks = self._as_blocks(raw)
        out = np.empty((len(blocks), self.block_size), dtype=np.float32)
        chunk = tuning.CHUNK_WEIGHTS if threads.THREADS == 1 else tuning.CHUNK_WEIGHTS_THREADED
        step = max(1, chunk // self.block_size)

        def decode(start: int, stop: int) -> None:
            with np.errstate(all="ignore"):  # inf/NaN scales decode to inf/NaN, as in ggml
                for i in range(start, stop, step):
                    self.dequantize_blocks(blocks[i : min(i + step, stop)], out[i : min(i + step, stop)])

        threads.in_threads(decode, len(blocks), step)
        return out.reshape(self._weights_shape(raw.shape))

    def dequantize_torch(self, raw: RawBytes | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``raw`` decoded on its device; into ``out`` (a contiguous float32 tensor of the weights' shape,
        on that device) when given: a loader decodes straight into a model's parameter that way, and a
        decoder run again and again reuses one buffer instead of faulting in fresh pages each time."""
        if not isinstance(raw, torch.Tensor):
            raw = torch.from_numpy(np.ascontiguousarray(self._check_raw(raw)))
        if raw.dtype != torch.uint8:
            raise ValueError(f"{self.name} data must be uint8 bytes, got a {raw.dtype} tensor")
        self._check_row_bytes(tuple(raw.shape))
        shape = self._weights_shape(tuple(raw.shape))
        blocks = raw.reshape(-1, self.type_size)
        if out is None and raw.device.type == "cpu":
            # numpy asks the kernel for huge pages for a large array, torch's CPU allocator does not:
            # first-touch page faults of a fresh 4 KiB-paged output would cost more than the decode.
            out = torch.from_numpy(np.empty(shape, dtype=np.float32))
        elif out is None:
            out = torch.empty(shape, device=raw.device)
        else:
            self._check_torch_out(out, shape, raw.device)
        weights = out.view(-1, self.block_size)
        step = len(blocks) if raw.device.type != "cpu" else max(1, tuning.CHUNK_WEIGHTS_TORCH_CPU // self.block_size)
        for start in range(0, len(blocks), step):
            self.dequantize_blocks_torch(blocks[start : start + step], weights[start : start + step])
        return out

    def _check_torch_out(self, out: torch.Tensor, shape: tuple, device: torch.device) -> None:
        if tuple(out.shape) != shape or out.dtype != torch.float32 or out.device != device or not out.is_contiguous():
            raise ValueError(
                f"{self.name}: out must be a contiguous float32 tensor of shape {shape} on "
                f"{device}; got {out.dtype} {tuple(out.shape)} on {out.device}"
                f"{'' if out.is_contiguous() else ', not contiguous'}"
            )

    def quantize_rows_weighted(self, rows: np.ndarray, importance: np.ndarray) -> np.ndarray:
        """Encode with an importance matrix: float32 rows (m, n_per_row) and importance (n_per_row,)
        -> structured array (m · n_per_row / block_size,). ggml's quantize_<type> with quant_weights.

        The formats whose ggml quantizer reads quant_weights override this (see weighted.py); the
        others (Q8_0, TQ1_0, TQ2_0, MXFP4, the floats) ignore the importance, as ggml does."""
        return self.quantize_blocks(rows.reshape(-1, self.block_size))

    def quantize(self, x: np.ndarray, imatrix: np.ndarray | None = None) -> np.ndarray:
        """float32 rows (..., n_per_row) -> bytes, as ggml's quantize_<type>(src, dst, nrows, n_per_row,
        imatrix) writes them (ggml_quantize_chunk, what llama-quantize calls).

        imatrix: None, or the importance of each column, float32 (n_per_row,): the mean squared
        activation that meets it (llama-quantize's in_sum2 / counts). With it the scale searches
        minimize the error weighted by it (see weighted.py)."""
        if not self.can_quantize:
            raise NotImplementedError(f"{self.name} has no reference quantizer in ggml")
        x = np.asarray(x)
        if x.ndim == 0 or x.shape[-1] % self.block_size != 0:
            raise ValueError(
                f"{self.name} quantizes rows whose length is a multiple of {self.block_size}; got shape {x.shape}"
            )
        x = np.ascontiguousarray(x, dtype=np.float32)
        if imatrix is not None:
            imatrix = check_importance(imatrix, x.shape[-1], self.name)
        with np.errstate(all="ignore"):
            if imatrix is None:
                blocks = self.quantize_blocks(x.reshape(-1, self.block_size))
            else:
                blocks = self.quantize_rows_weighted(x.reshape(-1, x.shape[-1]), imatrix)
        return blocks.view(np.uint8).reshape(*x.shape[:-1], x.shape[-1] // self.block_size * self.type_size)

    def quantize_in_chunks(
        self, x: np.ndarray, encode: Callable[..., np.ndarray], blocks_per_step: int, *aligned: np.ndarray
    ) -> np.ndarray:
        """``encode`` (float32 (k, block_size) -> structured (k,)) over x, a step of blocks at a time,
        so that the temporaries of a quantizer's searches stay small. ``aligned``: arrays with one row
        per block of x (the weights of an importance matrix), cut into the same steps."""
        out = np.empty(len(x), self.block_dtype)
        for start in range(0, len(x), blocks_per_step):
            step = slice(start, start + blocks_per_step)
            out[step] = encode(x[step], *(a[step] for a in aligned))
        return out

    # ---- shapes ------------------------------------------------------------------------------
    def _check_raw(self, raw: RawBytes) -> np.ndarray:
        if isinstance(raw, (bytes, bytearray, memoryview)):
            raw = np.frombuffer(raw, dtype=np.uint8)
        raw = np.asarray(raw)
        if raw.dtype != np.uint8:
            raise ValueError(f"{self.name} data must be uint8 bytes, got dtype {raw.dtype}")
        self._check_row_bytes(raw.shape)
        return raw

    def _check_row_bytes(self, shape: tuple) -> None:
        if len(shape) == 0 or shape[-1] % self.type_size != 0:
            raise ValueError(
                f"{self.name} rows must be a whole number of {self.type_size}-byte blocks; got shape {shape}"
            )

    def _as_blocks(self, raw: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(raw).reshape(-1, self.type_size).view(self.block_dtype).reshape(-1)

    def _weights_shape(self, byte_shape: tuple) -> tuple:
        return (*byte_shape[:-1], byte_shape[-1] // self.type_size * self.block_size)

    # ---- helpers shared by the formats' kernels ----------------------------------------------
    def weights_for(self, blocks: Array, out: Array | None) -> Array:
        """``out``, or a new float32 (n, block_size) array for the decoded weights of n blocks (a tensor on
        the blocks' device for torch blocks)."""
        if out is not None:
            return out
        if is_torch(blocks):
            return torch.empty((blocks.shape[0], self.block_size), dtype=torch.float32, device=blocks.device)
        return np.empty((len(blocks), self.block_size), dtype=np.float32)

    def field(self, blocks: Array, name: str) -> Array:
        """The values of one struct field of every block, typed as the struct declares them: (n,) for a
        scalar, (n, k) for an array. numpy blocks (structured, (n,)) give a contiguous copy; torch blocks
        (uint8, (n, type_size)) a typed view in place where the bytes allow it."""
        sub, offset = self.block_dtype.fields[name][:2]
        base, shape = sub.subdtype or (sub, ())
        data = self.byte_range(blocks, offset, sub.itemsize)
        if is_torch(blocks):
            data = _typed_torch(data, base)
        else:
            data = data.view(base)
        return data[:, 0] if not shape else data

    def byte_range(self, blocks: Array, start: int, size: int) -> Array:
        """Bytes start..start+size-1 of every block: uint8 (n, size). numpy: a contiguous copy, each
        block's bytes copied as one opaque item (see bits.byte_runs), one small memcpy per block instead
        of numpy's loop over the bytes of every row. torch: a view."""
        if is_torch(blocks):
            return blocks[:, start : start + size]
        rows = np.ascontiguousarray(blocks).view(np.uint8).reshape(len(blocks), self.type_size)
        return np.ascontiguousarray(byte_runs(rows, start, size)).view(np.uint8).reshape(len(blocks), size)


def _typed_torch(data: torch.Tensor, base: np.dtype) -> torch.Tensor:
    """uint8 (n, k·itemsize) -> (n, k) of the field's type."""
    if base.itemsize > 1:
        aligned = data.storage_offset() % base.itemsize == 0 and data.stride(0) % base.itemsize == 0
        # a typed view in place where the bytes allow it: a copy of rows of 2 bytes costs more
        return (data if aligned else data.contiguous()).view(_TORCH_DTYPES[base.str])
    if base.kind == "i":
        return data.view(torch.int8)
    return data


def check_importance(importance: np.ndarray, n_per_row: int, name: str) -> np.ndarray:
    """The importance vector as float32 (n_per_row,), or one clear error."""
    importance = np.asarray(importance)
    if importance.shape != (n_per_row,):
        raise ValueError(
            f"{name}: the importance vector must have one value per column of the rows, "
            f"shape ({n_per_row},); got shape {importance.shape}"
        )
    importance = importance.astype(np.float32)
    if not np.isfinite(importance).all():
        bad = int(np.flatnonzero(~np.isfinite(importance))[0])
        raise ValueError(
            f"{name}: the importance vector holds a non-finite value at column {bad} "
            f"({importance[bad]}); llama.cpp refuses such an imatrix too"
        )
    return importance
