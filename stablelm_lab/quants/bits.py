"""Packed levels: nibbles and bit fields unpacked (and packed) fast, in numpy and in torch.

Every format stores its small integers several to a byte. These helpers take them apart without a loop
over bytes: on whole arrays, a few bytes at a time as one wide word where that pays. Each takes a numpy
array or a torch tensor and answers in kind (arrays.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .arrays import Array, is_torch

# ---- nibbles: two 4-bit values per byte ---------------------------------------------------------
LOW_NIBBLES = np.uint64(0x0F0F0F0F0F0F0F0F)


def nibbles(qs: Array, run: int = 16) -> Array:
    """(n, k·run) bytes -> (n, k, 2, run) levels: each run of bytes gives its low nibbles, then its high
    nibbles. run = 16 is the legacy layout (byte j holds weights j and j+16), run = 32 Q4_K's chunks.

    numpy cuts the nibbles from 64-bit words, eight bytes at a time (qs must be contiguous).
    """
    if is_torch(qs):
        return bit_fields(qs.unflatten(-1, (-1, run)), [0, 4], 0x0F)
    words = qs.view(np.uint64)
    low = (words & LOW_NIBBLES).view(np.uint8)
    high = ((words >> np.uint64(4)) & LOW_NIBBLES).view(np.uint8)
    return interleave_runs([low, high], run)


def nibbles_into(out: Array, qs: Array, run: int = 16) -> Array:
    """nibbles(qs, run) written as float32 straight into out (n, 2·k·run), each nibble plane into its
    place, with no interleaved uint8 copy in between (a faster torch decode of Q4_K). Returns out as
    (n, 2·k, run): the levels, which scale_levels then scales in place (its copy of the levels into out
    is a copy onto itself)."""
    runs = (qs.contiguous() if is_torch(qs) else qs).reshape(len(qs), -1, run)
    weights = out.reshape(len(out), -1, 2, run)
    weights[:, :, 0] = runs & 0x0F
    weights[:, :, 1] = runs >> 4
    return out.reshape(len(out), -1, run)


def join_nibbles(q: np.ndarray, run: int = 16) -> np.ndarray:
    """(..., k·2·run) values in 0..15 -> (..., k·run) bytes, the inverse of nibbles(qs, run): run j of
    each pair goes to the low nibbles, the next run to the high ones."""
    pairs = q.reshape(*q.shape[:-1], -1, 2, run)
    packed = (pairs[..., 0, :] | (pairs[..., 1, :] << 4)).astype(np.uint8)
    return packed.reshape(*q.shape[:-1], q.shape[-1] // 2)


# ---- bit fields ---------------------------------------------------------------------------------
def bit_fields(packed: Array, shifts: Sequence[int], mask: int, place: int = 0) -> Array:
    """(..., m) bytes -> (..., len(shifts), m) bytes: ``((packed[..., None, :] >> shift) & mask) << place``.

    numpy: the fast way to unpack bit fields (what ggml's C does with kmask1/kmask2): four bytes at a time as
    one uint32 with the mask repeated in every byte, so no bit crosses into a neighbour byte (the
    field must still fit its byte after ``<< place``), and the shift axis first, so numpy runs long
    inner loops; a final copy moves the shift axis into place. m must be a multiple of 4.
    """
    if is_torch(packed):
        return _bit_fields_torch(packed, shifts, mask, place)
    *lead, m = packed.shape
    packed = packed.reshape(-1, m)
    n = len(packed)
    words = np.ascontiguousarray(packed).view("<u4").reshape(1, -1)
    fields = (words >> np.asarray(shifts, dtype=np.uint32)[:, None]) & np.uint32(mask * 0x01010101)
    if place:
        fields <<= np.uint32(place)
    rows = fields.view(np.dtype((np.void, m))).reshape(len(shifts), n)  # one m-byte row per item
    return np.ascontiguousarray(rows.T).view(np.uint8).reshape(*lead, len(shifts), m)


def interleave_runs(parts: Sequence[np.ndarray], run: int) -> np.ndarray:
    """Parts (p arrays (n, k·run)) -> (n, k, p, run) bytes: run r of part j goes to [:, r, j], the order
    in which the formats lay out their bit planes.

    Copies each run as one numpy void item: one small memcpy per run instead of a loop over bytes.
    """
    n, k = parts[0].shape[0], parts[0].shape[1] // run
    out = np.empty((n, k, len(parts), run), dtype=np.uint8)
    runs = out.view(f"V{run}")[..., 0]  # (n, k, p)
    for j, part in enumerate(parts):
        runs[:, :, j] = np.ascontiguousarray(part).view(f"V{run}").reshape(n, k)
    return out


# ---- runs of bytes as items ------------------------------------------------------------------
def byte_runs(rows: np.ndarray, start: int, size: int) -> np.ndarray:
    """A view of bytes start..start+size-1 of every row of a C-contiguous uint8 array (..., L), as opaque
    items (numpy voids of that size), shape (...). Copying such items moves each run with one memcpy,
    where numpy would otherwise loop over the bytes of every row with a per-row overhead."""
    return np.ndarray(rows.shape[:-1], dtype=f"V{size}", buffer=rows, offset=start, strides=rows.strides[:-1])


# ---- lookup tables ------------------------------------------------------------------------------
def lookup_rows(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """table[index] for a (256, k) float32 table and uint8 indices: (..., k) float32.

    Each row is gathered as one opaque item by np.take: fancy indexing of floats is slower.
    (8-byte rows go as uint64: numpy's take is slow for float64 and 8-byte void items.)
    """
    k = table.shape[1]
    item = np.uint64 if k == 2 else np.dtype((np.void, 4 * k))
    rows = np.ascontiguousarray(table, dtype=np.float32).view(item).reshape(-1)
    return np.take(rows, index).view(np.float32).reshape(*index.shape, k)


def _bit_fields_torch(packed: torch.Tensor, shifts: Sequence[int], mask: int, place: int) -> torch.Tensor:
    """bit_fields for a torch uint8 tensor.

    Torch's CPU kernels are fast on contiguous operands only: the fields are cut from a contiguous copy,
    one shift count (a Python int) at a time into a contiguous plane each, and each plane is then copied
    into its place (docs/benchmarks.md: the other ways to write it are slower).
    """
    packed = packed.contiguous()
    planes = torch.empty((len(shifts), *packed.shape), dtype=torch.uint8, device=packed.device)
    for plane, shift in zip(planes, shifts):
        torch.bitwise_right_shift(packed, shift, out=plane)
    planes &= mask
    if place:
        planes <<= place
    out = torch.empty((*packed.shape[:-1], len(shifts), packed.shape[-1]), dtype=torch.uint8, device=packed.device)
    for i, plane in enumerate(planes):
        out[..., i, :].copy_(plane)
    return out
