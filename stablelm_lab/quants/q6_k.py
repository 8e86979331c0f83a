"""Q6_K: 256 weights in 210 bytes (6.5625 bits per weight), 16 sub-blocks of 16 with int8 scales.

Also home of ``make_qx_quants``, the symmetric scale search Q6_K's reference quantizer runs on every
sub-block, and of small helpers Q3_K shares: ``c_nearest_int`` (ggml's ``nearest_int``, out-of-range
inputs included), ``signed_absmax`` (the ``if (ax > amax) { amax = ax; max = x[i]; }`` loop) and
``bit_fields`` (fast unpacking of bit fields in numpy).
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType as T

from .base import QuantFormat, f16, i8, struct, u8
from .ksearch import sequential_sum

QK_K = 256
#: ggml's GROUP_MAX_EPS: a group whose largest magnitude is below it counts as all zero.
GROUP_MAX_EPS = np.float32(1e-15)
#: Blocks quantized per step: the searches' temporaries are (16, 16 * this) float32 arrays.
QUANTIZE_CHUNK_BLOCKS = 1024


# ---- float32 arithmetic the way ggml's C quantizers do it ---------------------------------------
def c_nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's ``nearest_int``: add 1.5·2^23 in float32 and read the low 23 bits of the sum.

    For |v| <= 2^22 that is round half to even (``rounding.nearest_int``, i.e. np.rint). ggml only
    asserts the bound, and release builds drop the assert, so the K-quant searches do meet inf and NaN
    (a scale that overflowed): NaN reads as 0 and ±inf as -2^22 here, as in the C.
    """
    biased = np.asarray(v, dtype=np.float32) + np.float32(12582912)
    return (biased.view(np.int32) & 0x007FFFFF) - 0x00400000


def signed_absmax(x: np.ndarray) -> np.ndarray:
    """Over the first axis: the value of largest magnitude, with its sign.

    As the C loop starting from ``amax = 0`` with a strict ``>``: the first one wins ties, NaN never
    wins, and a group with nothing above zero gives 0.
    """
    magnitude = np.abs(x)
    magnitude = np.where(magnitude > 0, magnitude, np.float32(0))  # NaN > 0 is False
    first = magnitude.argmax(axis=0)
    picked = np.take_along_axis(x, first[None], axis=0)[0]
    return np.where(magnitude.max(axis=0) > 0, picked, np.float32(0))


def bit_fields(packed: np.ndarray, shifts, mask: int, place: int = 0) -> np.ndarray:
    """(n, m) bytes -> (n, len(shifts), m) bytes: ``((packed[:, None, :] >> shift) & mask) << place``.

    The fast way to unpack bit fields (what ggml's C does with kmask1/kmask2): four bytes at a time as
    one uint32 with the mask repeated in every byte, so no bit crosses into a neighbour byte (the
    field must still fit its byte after ``<< place``), and the shift axis first, so numpy runs long
    inner loops; a final copy moves the shift axis into place. m must be a multiple of 4.
    """
    n, m = packed.shape
    words = np.ascontiguousarray(packed).view("<u4").reshape(1, -1)
    fields = (words >> np.asarray(shifts, dtype=np.uint32)[:, None]) & np.uint32(mask * 0x01010101)
    if place:
        fields <<= np.uint32(place)
    rows = fields.view(np.dtype((np.void, m))).reshape(len(shifts), n)    # one m-byte row per item
    return np.ascontiguousarray(rows.T).view(np.uint8).reshape(n, len(shifts), m)


def torch_shifts(shifts, device):
    """A (len(shifts), 1) uint8 tensor: ``packed[..., None, :] >> torch_shifts(...)`` unpacks each field."""
    import torch
    return torch.tensor(list(shifts), dtype=torch.uint8, device=device)[:, None]


# ---- the scale search ---------------------------------------------------------------------------
def make_qx_quants(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's ``make_qx_quants(n, nmax, x, L, rmse_type=1, qw=NULL)`` for many groups at once.

    x: float32 (n, groups), element i of every group in row i (so ``x[i]`` reads as in the C).
    Returns (scale (groups,), L (n, groups) in 0..2·nmax-1) with x ≈ scale · (L - nmax).

    The search: start from iscale = -nmax/max (max = the signed value of largest magnitude), then try
    the 18 scales -(nmax + 0.1·is)/max for is = -9..9, is != 0, keeping a candidate when it lowers the
    error weighted by w = x² -- i.e. raises sumlx²/suml2, where sumlx = Σ w·x·l and suml2 = Σ w·l².
    """
    max_value = signed_absmax(x)
    all_zero = np.abs(max_value) < GROUP_MAX_EPS
    w = x * x
    wx = w * x

    def quants(iscale):
        return np.clip(c_nearest_int(iscale * x), -nmax, nmax - 1)

    def sums(l):
        lf = l.astype(np.float32)
        return sequential_sum(wx * lf), sequential_sum(w * lf * lf)

    l = quants(np.float32(-nmax) / max_value)
    sumlx, suml2 = sums(l)
    scale = np.where(suml2 != 0, sumlx / suml2, np.float32(0))  # C: suml2 ? ... (NaN is true)
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(np.float32(nmax) + np.float32(0.1) * np.float32(step)) / max_value
        trial = quants(iscale)
        sumlx, suml2 = sums(trial)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        l = np.where(better, trial, l)
        scale = np.where(better, sumlx / suml2, scale)
        best = np.where(better, scale * sumlx, best)
    scale = np.where(all_zero, np.float32(0), scale)
    return scale, np.where(all_zero, 0, l + nmax)


class Q6_K(QuantFormat):
    """Q6_K: 256 weights in 210 bytes (6.5625 bits per weight), 16 sub-blocks of 16 weights.

    bytes   0-127  ql[128]     low 4 bits of each weight, two per byte
    bytes 128-191  qh[64]      high 2 bits of each weight, four per byte
    bytes 192-207  scales[16]  int8 scale of each 16-weight sub-block
    bytes 208-209  d           fp16 super-block scale

    Weight i of the block, with h = i//128, k = (i%128)//32, l = i%32:
        low4  = (ql[64h + l + 32·(k&1)] >> 4·(k>>1)) & 0xF
        high2 = (qh[32h + l] >> 2k) & 3
        q     = low4 | high2 << 4                      (0..63)
    decode: x = d · scales[i//16] · (q - 32)

    encode: make_qx_quants finds a scale and 6-bit quants for every sub-block (weighted by x²); the
    16 scales are then quantized to int8 against the one of largest magnitude (which maps to -128),
    d = max_scale / -128, and the weights are re-rounded against their final d · scale.
    """

    qtype = T.Q6_K
    block_dtype = struct(u8("ql", QK_K // 2), u8("qh", QK_K // 4), i8("scales", QK_K // 16), f16("d"))

    def dequantize_block(self, block):
        d = np.float32(block["d"])
        y = np.empty(QK_K, dtype=np.float32)
        l = np.arange(32)
        is_ = l // 16
        for n in range(0, QK_K, 128):  # each half: ql += 64, qh += 32, sc += 8
            ql = block["ql"][n // 2:n // 2 + 64].astype(np.int32)
            qh = block["qh"][n // 4:n // 4 + 32].astype(np.int32)
            sc = block["scales"][n // 16:n // 16 + 8].astype(np.float32)
            q1 = ((ql[l + 0] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32
            q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32
            q3 = ((ql[l + 0] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32
            q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32
            y[n + l + 0] = d * sc[is_ + 0] * q1.astype(np.float32)
            y[n + l + 32] = d * sc[is_ + 2] * q2.astype(np.float32)
            y[n + l + 64] = d * sc[is_ + 4] * q3.astype(np.float32)
            y[n + l + 96] = d * sc[is_ + 6] * q4.astype(np.float32)
        return y

    def dequantize_blocks(self, blocks):
        n = len(blocks)
        low4 = bit_fields(blocks["ql"].reshape(2 * n, 64), [0, 4], 0x0F)     # (2n, k>>1, 32·(k&1) + l)
        high2 = bit_fields(blocks["qh"].reshape(2 * n, 32), [0, 2, 4, 6], 3, place=4)  # (2n, k, l)
        q = (low4.reshape(n, QK_K) | high2.reshape(n, QK_K)) - np.uint8(32)
        dl = blocks["d"].astype(np.float32)[:, None] * blocks["scales"].astype(np.float32)
        return np.repeat(dl, 16, axis=1) * q.view(np.int8).astype(np.float32)

    def dequantize_blocks_torch(self, blocks):
        import torch
        n, device = len(blocks), blocks.device
        ql = self.torch_field(blocks, "ql").reshape(n, 2, 1, 64)
        qh = self.torch_field(blocks, "qh").reshape(n, 2, 1, 32)
        low4 = (ql >> torch_shifts([0, 4], device)) & 0x0F                  # (n, h, k>>1, 32·(k&1) + l)
        high2 = (qh >> torch_shifts([0, 2, 4, 6], device)) & 3              # (n, h, k, l)
        q = (low4.reshape(n, 16, 16) | (high2.reshape(n, 16, 16) << 4)).view(torch.int8) - 32
        dl = self.torch_field(blocks, "d").float()[:, None] * self.torch_field(blocks, "scales").float()
        return (dl[:, :, None] * q.float()).reshape(n, QK_K)

    def quantize_blocks(self, x):
        out = np.empty(len(x), self.block_dtype)
        for start in range(0, len(x), QUANTIZE_CHUNK_BLOCKS):
            stop = start + QUANTIZE_CHUNK_BLOCKS
            out[start:stop] = self._quantize_chunk(x[start:stop])
        return out

    def _quantize_chunk(self, x):
        n = len(x)
        groups = np.ascontiguousarray(x.reshape(n * 16, 16).T)   # (16, n·16): element i of each sub-block
        sub_scales, L = make_qx_quants(groups, nmax=32)
        sub_scales, L = sub_scales.reshape(n, 16), L.T.reshape(n, 16, 16)

        max_scale = signed_absmax(sub_scales.T)
        zero_block = np.abs(max_scale) < GROUP_MAX_EPS
        iscale = np.float32(-128) / max_scale
        d = (np.float32(1) / iscale).astype(np.float16)
        scales = np.minimum(127, c_nearest_int(iscale[:, None] * sub_scales)).astype(np.int8)

        # Re-round each weight against its final scale; a sub-block whose scale came out 0 keeps its L.
        dl = d.astype(np.float32)[:, None] * scales.astype(np.float32)
        requant = np.clip(c_nearest_int(x.reshape(n, 16, 16) / dl[:, :, None]), -32, 31) + 32
        L = np.where((dl != 0)[:, :, None], requant, L).astype(np.uint8).reshape(n, QK_K)

        out = np.empty(n, self.block_dtype)
        out["ql"], out["qh"] = pack_6bit_quants(L)
        out["scales"], out["d"] = scales, d
        out[zero_block] = np.zeros(1, self.block_dtype)
        return out


def pack_6bit_quants(L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 256) values in 0..63 -> ql (n, 128), qh (n, 64): the inverse of the index map above."""
    n = len(L)
    q = L.reshape(n, 2, 4, 32)                                # (n, h, k, l)
    low4, high2 = q & 0x0F, q >> 4
    ql = np.concatenate([low4[:, :, 0] | (low4[:, :, 2] << 4),
                         low4[:, :, 1] | (low4[:, :, 3] << 4)], axis=-1)      # (n, h, 64)
    qh = high2[:, :, 0] | (high2[:, :, 1] << 2) | (high2[:, :, 2] << 4) | (high2[:, :, 3] << 6)
    return ql.reshape(n, 128), qh.reshape(n, 64)
