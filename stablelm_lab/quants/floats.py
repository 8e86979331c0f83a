"""The unquantized types: F32, F16 and BF16, one weight per "block".

They sit in the registry beside the block formats so that every tensor of a GGUF file, whatever its
type, goes through the same four calls.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .format import QuantFormat
from .layout import struct


class F32(QuantFormat):
    """F32: IEEE binary32, one weight in 4 bytes.

    bytes 0-3   value   sign 1 | exponent 8 | mantissa 23 bits, little-endian
    decode: the bytes are the value.
    """

    qtype = T.F32
    block_dtype = struct(("value", "<f4"))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        return np.array([block["value"]], dtype=np.float32)

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = self.weights_for(blocks, out)
        out[:, 0] = blocks["value"]
        return out

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.weights_for(blocks, out).copy_(blocks.contiguous().view(torch.float32))

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        return x[:, 0].astype("<f4").view(self.block_dtype)


class F16(QuantFormat):
    """F16: IEEE binary16, one weight in 2 bytes.

    bytes 0-1   value   sign 1 | exponent 5 | mantissa 10 bits, little-endian
    decode: exact widening to float32. encode: round to nearest even; beyond 65504 becomes inf.
    """

    qtype = T.F16
    block_dtype = struct(("value", "<f2"))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        return np.array([block["value"]], dtype=np.float32)

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = self.weights_for(blocks, out)
        out[:, 0] = blocks["value"]  # exact widening
        return out

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.weights_for(blocks, out).copy_(blocks.contiguous().view(torch.float16))

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        return x[:, 0].astype("<f2").view(self.block_dtype)


class BF16(QuantFormat):
    """BF16: bfloat16, the top 16 bits of a float32, one weight in 2 bytes.

    bytes 0-1   bits    sign 1 | exponent 8 | mantissa 7 bits, little-endian

    Decode: shift the 16 bits up to a float32. Encode (ggml_compute_fp32_to_bf16): round to nearest
    even by adding 0x7fff plus the lowest kept bit; a NaN keeps its top bits and is forced quiet (| 64).
    """

    qtype = T.BF16
    block_dtype = struct(("bits", "<u2"))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        return np.array([int(block["bits"]) << 16], dtype=np.uint32).view(np.float32)

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        out = self.weights_for(blocks, out)
        np.left_shift(blocks["bits"], 16, out=out.view(np.uint32)[:, 0], dtype=np.uint32)
        return out

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.weights_for(blocks, out).copy_(blocks.contiguous().view(torch.bfloat16))

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        u = x[:, 0].view(np.uint32).astype(np.uint64)
        is_nan = (u & 0x7FFFFFFF) > 0x7F800000
        rounded = (u + (0x7FFF + ((u >> 16) & 1))) >> 16
        quiet_nan = (u >> 16) | 64
        return np.where(is_nan, quiet_nan, rounded).astype("<u2").view(self.block_dtype)
