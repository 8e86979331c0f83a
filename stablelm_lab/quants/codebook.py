"""4-bit codes looked up in a 16-value codebook (IQ4_NL, IQ4_XS, MXFP4): a non-linear grid of levels.

Each byte holds two codes, weight j in its low nibble and weight j+16 in its high one (as Q4_0). The
decoders look up both values of a byte at once in a (256, 2) table made from the codebook.
"""

from __future__ import annotations

import numpy as np
import torch

from .arrays import Array, is_torch
from .bits import lookup_rows


def nibble_pair_table(values: np.ndarray) -> np.ndarray:
    """The values (low nibble, high nibble) of every byte, float32 (256, 2), for a 16-value codebook."""
    codes = np.arange(256)
    return np.stack([values[codes & 0x0F], values[codes >> 4]], axis=1).astype(np.float32)


def decode_nibble_pairs(qs: Array, d: Array, table: np.ndarray, out: Array) -> Array:
    """(..., 16) bytes of nibble pairs and (...) float32 scales -> (..., 32) weights d · value into out,
    the low nibbles first (weights 0..15) and the high nibbles after (16..31); table from
    nibble_pair_table.

    torch fetches each pair of values as one int64 by index_select: indexing a (256, 2) float table is
    slower on the CPU.
    """
    if is_torch(qs):
        rows = torch.from_numpy(table).view(torch.int64).reshape(256).to(qs.device)
        pairs = torch.index_select(rows, 0, qs.reshape(-1).int()).view(torch.float32).view(*qs.shape, 2)
    else:
        pairs = lookup_rows(table, qs)  # (..., 16, low/high)
    pairs *= d[..., None, None]  # d·value, in cache
    out.reshape(*qs.shape[:-1], 2, 16)[...] = pairs.swapaxes(-1, -2)
    return out
