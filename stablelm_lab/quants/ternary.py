"""The ternary formats of BitNet b1.58 and TriLMs: every weight is -1, 0 or +1 times one fp16 scale.

    TQ1_0  54 bytes  qs[48] | qh[4] | d    x = (t - 1)·d    t in 0..2, five trits per byte (3^5 = 243 < 256)
    TQ2_0  66 bytes  qs[64] | d           x = (t - 1)·d    t in 0..2, stored in 2 bits (3 decodes to +2)

Both hold 256 weights and the same scale: d = the block's largest magnitude, t = roundf(x/d) + 1.

TQ1_0 packs the trits as a base-3 fixed-point fraction: five trits t0..t4 make the integer
q = t0·81 + t1·27 + t2·9 + t3·3 + t4 (0..242), stored as the byte ceil(q·256/243), which reads as
q/243 in units of 1/256. Multiplying that byte by 3 (mod 256) moves the fraction one trit to the left,
and the trit that crosses the binary point is (byte·3) >> 8. So trit n of a byte is
((byte·3^n mod 256)·3) >> 8: no division anywhere in the decoder.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from .bits import bit_fields, byte_runs
from .cfloat import inverse
from .format import QuantFormat
from .layout import f16, struct, u8
from .rounding import round_away_from_zero
from .scaling import scale_levels

_POW3 = [1, 3, 9, 27, 81, 243]


def trit(byte: int | np.ndarray, n: int) -> int | np.ndarray:
    """Trit n (0 = most significant) of a TQ1_0 byte: the multiply-by-3 trick, in uint8 as C does it."""
    shifted = (byte * _POW3[n]) & 0xFF  # C: uint8_t q = byte * pow3[n]
    return (shifted * 3) >> 8


def trit_plane(packed: np.ndarray, n: int) -> np.ndarray:
    """trit(byte, n) of every byte of a uint8 array, as uint8 0..2, in uint8 arithmetic.

    ``byte·3^n`` wraps in uint8 as in C; then ``(q·3) >> 8`` is 1 from q = 86 and 2 from q = 171 on,
    two comparisons (faster in numpy than widening to uint16 for the product).
    """
    shifted = packed * np.uint8(_POW3[n])
    return (shifted > 85).view(np.uint8) + (shifted > 170).view(np.uint8)


#: The five trits of every byte value, and three zero bytes: eight bytes that torch fetches as one int64.
_TRITS_OF_BYTE = np.zeros((256, 8), dtype=np.uint8)
_TRITS_OF_BYTE[:, :5] = np.stack([trit_plane(np.arange(256, dtype=np.uint8), t) for t in range(5)], axis=1)


def _pack_trits(trits: np.ndarray) -> np.ndarray:
    """(n, k, bytes) trits -> (n, bytes) base-3 numbers, trits[:, 0] the most significant (uint8, as C)."""
    q = np.zeros((trits.shape[0], trits.shape[2]), dtype=np.uint8)
    for n in range(trits.shape[1]):
        q = q * np.uint8(3) + trits[:, n]
    return q


def _as_fixed_point(q: np.ndarray) -> np.ndarray:
    """q/243 as a byte in units of 1/256, rounded up: ceil(q·256/243)."""
    return ((q.astype(np.uint16) * 256 + (243 - 1)) // 243).astype(np.uint8)


def _ternary_scale(x: np.ndarray):
    """The shared encode step: d = the block's largest magnitude, t = roundf(x/d) + 1 in 0..2."""
    d = np.abs(x).max(axis=1)
    trits = (round_away_from_zero(x * inverse(d)[:, None]) + 1).astype(np.uint8)
    return d, trits


class TQ1_0(QuantFormat):
    """TQ1_0: 256 ternary weights in 54 bytes (1.6875 bits per weight).

    bytes 0-31   qs[0:32]   weights 0..159: byte m holds m, m+32, m+64, m+96, m+128 (m in the top trit)
    bytes 32-47  qs[32:48]  weights 160..239: byte 32+m holds 160+m, +16, +32, +48, +64
    bytes 48-51  qh[4]      weights 240..255: byte j holds 240+j, +4, +8, +12 in its top four trits
    bytes 52-53  d          fp16 scale

    decode: trit n of a byte = ((byte·3^n mod 256)·3) >> 8, x = (trit - 1)·d
    encode: d = amax, t = roundf(x/d) + 1; q = Σ t_n·3^(4-n) (qh: four trits, then ·3);
            byte = ceil(q·256/243)
    """

    qtype = T.TQ1_0
    block_dtype = struct(u8("qs", 48), u8("qh", 4), f16("d"))

    # qs and qh are adjacent, so the decoder reads them as one run of 52 bytes, in three groups:
    # (first byte, bytes in the group, trits per byte). Group by group, trit by trit, byte by byte.
    _GROUPS = [(0, 32, 5), (32, 16, 5), (48, 4, 4)]

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        packed = np.concatenate([block["qs"], block["qh"]])
        y = []
        for first, width, n_trits in self._GROUPS:
            for n in range(n_trits):
                for m in range(width):
                    xi = trit(int(packed[first + m]), n)
                    y.append(np.float32(xi - 1) * d)
        return np.array(y, dtype=np.float32)

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        packed = self.byte_range(blocks, 0, 52)  # qs and qh
        planes = np.stack([trit_plane(packed, t) for t in range(5)])  # (trit, n, 52)
        q = np.empty((n, 256), dtype=np.uint8)
        i = 0
        for first, width, n_trits in self._GROUPS:  # runs of `width` bytes
            runs = q.view(f"V{width}")[:, i // width : i // width + n_trits]  # (n, trit)
            runs[...] = byte_runs(planes[:n_trits], first, width).T
            i += n_trits * width
        q -= np.uint8(1)  # t - 1, wrapping: read as int8
        return scale_levels(
            self.weights_for(blocks, out), q.view(np.int8).reshape(n, 1, 256), blocks["d"].astype(np.float32)[:, None]
        )

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        table = torch.from_numpy(_TRITS_OF_BYTE).view(torch.int64).reshape(256).to(blocks.device)
        index = self.byte_range(blocks, 0, 52).reshape(-1).int()  # qs and qh
        trits = torch.index_select(table, 0, index).view(torch.uint8).view(-1, 52, 8)  # (n, byte, trit)
        q = torch.cat(
            [
                trits[:, first : first + width, :n_trits].transpose(1, 2).flatten(1)
                for first, width, n_trits in self._GROUPS
            ],
            dim=1,
        )
        q -= 1  # t - 1, wrapping: read as int8
        return scale_levels(self.weights_for(blocks, out), q.view(torch.int8), self.field(blocks, "d").float())

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        d, trits = _ternary_scale(x)
        out = np.empty(n, self.block_dtype)
        out["d"] = d
        out["qs"][:, :32] = _as_fixed_point(_pack_trits(trits[:, :160].reshape(n, 5, 32)))
        out["qs"][:, 32:] = _as_fixed_point(_pack_trits(trits[:, 160:240].reshape(n, 5, 16)))
        # four trits, then one more ·3 so that the first lands in the most significant place
        out["qh"] = _as_fixed_point(_pack_trits(trits[:, 240:].reshape(n, 4, 4)) * np.uint8(3))
        return out


class TQ2_0(QuantFormat):
    """TQ2_0: 256 ternary weights in 66 bytes (2.0625 bits per weight), two bits per weight.

    bytes 0-63   qs[64]  byte 32c+m holds weights 128c+m+32l in bits 2l..2l+1 (l = 0..3), c = 0, 1
    bytes 64-65  d       fp16 scale

    decode: x = (((qs >> 2l) & 3) - 1)·d   (the unused code 3 decodes to +2·d)
    encode: d = amax, t = roundf(x/d) + 1 in 0..2.
    """

    qtype = T.TQ2_0
    block_dtype = struct(u8("qs", 64), f16("d"))

    def dequantize_block(self, block: np.void) -> np.ndarray:
        d = np.float32(block["d"])
        y = np.empty(256, dtype=np.float32)
        i = 0
        for j in range(0, 64, 32):
            for l in range(4):
                for m in range(32):
                    q = (int(block["qs"][j + m]) >> (l * 2)) & 3
                    y[i] = np.float32(q - 1) * d
                    i += 1
        return y

    def dequantize_blocks(self, blocks: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        n = len(blocks)
        q = bit_fields(self.field(blocks, "qs").reshape(2 * n, 32), [0, 2, 4, 6], 3)  # (2n, l, m)
        q -= np.uint8(1)  # wrapping: read as int8
        return scale_levels(
            self.weights_for(blocks, out), q.view(np.int8).reshape(n, 1, 256), blocks["d"].astype(np.float32)[:, None]
        )

    def dequantize_blocks_torch(self, blocks: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        qs = self.field(blocks, "qs").unflatten(1, (2, 32))
        q = bit_fields(qs, [0, 2, 4, 6], 3)  # (n, c, l, m)
        q -= 1  # wrapping: read as int8
        return scale_levels(
            self.weights_for(blocks, out), q.view(torch.int8).view(-1, 256), self.field(blocks, "d").float()
        )

    def quantize_blocks(self, x: np.ndarray) -> np.ndarray:
        d, trits = _ternary_scale(x)
        trits = trits.reshape(-1, 2, 4, 32)  # (n, c, l, m)
        qs = np.zeros((len(x), 2, 32), dtype=np.uint8)
        for l in range(4):
            qs += (trits[:, :, l] & 3) << np.uint8(2 * l)
        out = np.empty(len(x), self.block_dtype)
        out["d"] = d
        out["qs"] = qs.reshape(-1, 64)
        return out
