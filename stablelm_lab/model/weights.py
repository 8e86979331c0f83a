"""How a layer's weights are held: the one thing about storage the model's math (layers.py) depends on.

A ``Linear`` asks its weights for ``matmul(x)`` (x Wᵀ + b), an ``Embedding`` for ``rows(ids)`` (W[ids]);
which ``Weights`` answers is the loader's choice (loading.py), made once per layer:

    FloatWeights   W decoded once, at load, to a float tensor (float32, bfloat16...) on its device
    LeanWeights    W kept as the file's quantized rows (uint8, on its device), decoded in every call a
                   band of rows at a time, so a 50304-row output head never exists in float32 all at once

Both hold b (the bias, always a float tensor) beside W, and show W as floats through ``.weight``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from torch import nn

from .. import quants

FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
LEAN_CHUNK_ROWS = 4096  # rows decoded at once in lean mode and while loading


class Weights(nn.Module):
    """A layer's W (n_out, n_in) and optional b (n_out,), answering the two questions layers ask."""

    weight: torch.Tensor  # W as floats
    bias: torch.Tensor | None

    def matmul(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, n_in) -> (B, T, n_out)
        """x Wᵀ + b."""
        raise NotImplementedError

    def rows(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, n_in)
        """W[ids]: one row of W per id (ggml_get_rows)."""
        raise NotImplementedError


class FloatWeights(Weights):
    """W and b as float tensors: one matmul, one lookup."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, trainable: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=trainable)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=trainable)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class LeanWeights(Weights):
    """W as the file's quantized rows, decoded in each call; rows() decodes only the rows asked for."""

    def __init__(
        self, raw: torch.Tensor, qtype: GGMLQuantizationType, dtype: torch.dtype, bias: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("raw", raw)  # uint8 (n_out, bytes per row): model.to(dtype) leaves it as it is
        self.format = quants.get(qtype)
        self.dtype = dtype  # of the decoded rows(): ids carry no float type to follow
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        """W decoded, all of it: a fresh float tensor at every access."""
        return decode_rows(self.raw, self.format, self.dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.linear(x, band) for band in self.decoded_bands(x)], dim=-1)  # a band: some outputs
        return y if self.bias is None else y + self.bias

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return decode_rows(self.raw[ids.reshape(-1)], self.format, self.dtype).view(*ids.shape, -1)

    def decoded_bands(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """W decoded a band of rows at a time, each into the same scratch buffer, used up by the caller
        before the next one; not when autograd would keep the band for backward."""
        reuse = not (torch.is_grad_enabled() and x.requires_grad)
        for start in range(0, self.raw.shape[0], LEAN_CHUNK_ROWS):
            band = self.raw[start : start + LEAN_CHUNK_ROWS]
            yield self.format.dequantize_torch(band, out=_scratch(band, self.format) if reuse else None).to(x.dtype)


def decode_rows(raw: torch.Tensor, fmt: quants.QuantFormat, dtype: torch.dtype) -> torch.Tensor:
    """uint8 rows of one tensor -> floats of ``dtype`` on the same device, decoded a band of rows at a
    time straight into the result (another dtype goes through one float32 band of scratch)."""
    rows = raw.reshape(-1, raw.shape[-1])
    # torch's allocator, not numpy's: a whole model of fresh huge pages stalls the kernel (docs/benchmarks.md)
    out = torch.empty((rows.shape[0], rows.shape[1] // fmt.type_size * fmt.block_size), dtype=dtype, device=raw.device)
    for start in range(0, rows.shape[0], LEAN_CHUNK_ROWS):
        band = rows[start : start + LEAN_CHUNK_ROWS]
        if dtype == torch.float32:
            fmt.dequantize_torch(band, out=out[start : start + LEAN_CHUNK_ROWS])
        else:
            out[start : start + LEAN_CHUNK_ROWS] = fmt.dequantize_torch(band, out=_scratch(band, fmt))
    return out


_buffers = threading.local()  # per thread: two threads running lean models must not share a band


def _scratch(band: torch.Tensor, fmt: quants.QuantFormat) -> torch.Tensor:
    """A float32 buffer for the weights of ``band``, one per device and thread, reused from call to call:
    decoding into warm memory skips the page faults of a fresh allocation (lean decodes every matrix)."""
    n_weights = band.shape[0] * band.shape[1] // fmt.type_size * fmt.block_size
    by_device = _buffers.__dict__.setdefault("by_device", {})
    buffer = by_device.get(band.device)
    if buffer is None or buffer.numel() < n_weights:
        buffer = by_device[band.device] = torch.empty(n_weights, device=band.device)
    return buffer[:n_weights].view(band.shape[0], -1)
