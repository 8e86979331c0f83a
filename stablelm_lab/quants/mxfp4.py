"""MXFP4, the OCP microscaling format: 32 FP4 (E2M1) values sharing one power-of-two scale (E8M0).

    MXFP4  17 bytes  e | qs[16]      x = kvalues_mxfp4[q] · 2^(e - 128)      q in 0..15

E2M1 is a 4-bit float: sign 1 | exponent 2 | mantissa 1, whose 16 codes mean 0, 0.5, 1, 1.5, 2, 3, 4, 6
and their negatives. ggml stores them doubled as small integers (kvalues_mxfp4) and halves the scale
instead: GGML_E8M0_TO_FP32_HALF(e) = 2^(e - 127) / 2. Every decoded weight is exact: a small integer
times a power of two.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .bits import join_nibbles
from .codebook import decode_nibble_pairs, nibble_pair_table
from .format import QuantFormat
from .layout import struct, u8

#: The E2M1 values doubled, indexed by the 4-bit code (bit 3 is the sign): ggml-common.h's kvalues_mxfp4.
KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.int8)


def e8m0_to_fp32_half(e: np.ndarray) -> np.ndarray:
    """GGML_E8M0_TO_FP32_HALF: the float32 2^(e - 128) for a uint8 exponent e, built from its bits.

    e >= 2 is a normal float with exponent field e - 1; e = 0 and 1 are the subnormals 2^-128 and 2^-127.
    (e = 255 is the OCP NaN; ggml does not special-case it and decodes 2^127.)
    """
    e = np.asarray(e, dtype=np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(np.float32)


#: The half scale of every exponent byte, and the values (low nibble, high nibble) of every qs byte.
_SCALE_OF_E = e8m0_to_fp32_half(np.arange(256))
_NIBBLE_VALUES = nibble_pair_table(KVALUES_MXFP4)


class MXFP4(QuantFormat):
    """MXFP4: 32 weights in 17 bytes (4.25 bits per weight), FP4 values with a shared E8M0 exponent.

    byte 0      e       E8M0 exponent: the block's scale is 2^(e - 127); ggml uses d = 2^(e - 128)
    bytes 1-16  qs[16]  byte j = code of weight j (low nibble) | code of weight j+16 (high nibble)

    decode: x = kvalues_mxfp4[q] · d, with kvalues_mxfp4 = 2·E2M1 = 0, ±1, ±2, ±3, ±4, ±6, ±8, ±12
    encode: e = floor(log2(amax)) - 2 + 127, so that amax/2d, the largest weight in E2M1 units, lies
            in [4, 8), where the top codes are 4 and 6 (weights above 6 saturate); each weight then takes
            the code whose kvalues_mxfp4[q]·d is nearest (the first one on ties).
    """

    qtype = T.MXFP4
    block_dtype = struct(u8("e"), u8("qs", 16))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = e8m0_to_fp32_half(block["e"])[()]
        qs = block["qs"]
        y = np.empty(32, dtype=np.float32)
        for j in range(16):
            y[j] = np.float32(KVALUES_MXFP4[qs[j] & 0x0F]) * d
            y[j + 16] = np.float32(KVALUES_MXFP4[qs[j] >> 4]) * d
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        d = np.take(_SCALE_OF_E, blocks["e"])
        qs = self.field(blocks, "qs")
        return decode_nibble_pairs(qs, d, _NIBBLE_VALUES, self.weights_for(blocks, out))

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        d = torch.from_numpy(_SCALE_OF_E).to(blocks.device)[self.field(blocks, "e").long()]
        return decode_nibble_pairs(self.field(blocks, "qs"), d, _NIBBLE_VALUES, self.weights_for(blocks, out))

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        amax = np.fmax.reduce(np.abs(x), axis=1)  # C's `if (amax < fabsf(v))` passes over NaNs
        with np.errstate(all="ignore"):
            exponent = np.floor(np.log2(amax)) - np.float32(2) + np.float32(127)
        # C's (uint8_t) of a float: x86 truncates to int32 and keeps the low byte
        e = np.where(amax > 0, exponent, 0).astype(np.int32).astype(np.uint8)
        d = e8m0_to_fp32_half(e)
        out = np.empty(len(x), self.block_dtype)
        out["e"] = e
        out["qs"] = join_nibbles(_best_index_mxfp4(x, d[:, None]))
        return out


def _best_index_mxfp4(x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """ggml's best_index_mxfp4: the code q minimizing |kvalues_mxfp4[q]·d - x|, the first one on ties."""
    best_index = np.zeros(x.shape, dtype=np.uint8)
    best_err = np.abs(np.float32(KVALUES_MXFP4[0]) * d - x)
    for i in range(1, 16):
        err = np.abs(np.float32(KVALUES_MXFP4[i]) * d - x)
        better = err < best_err
        best_index[better] = i
        best_err = np.where(better, err, best_err)
    return best_index
