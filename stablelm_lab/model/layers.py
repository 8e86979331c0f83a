"""The pieces of a StableLM block, one small class per idea, in the order the data flows.

Weights are named as in the GGUF file: the module ``blk[3].attn.attn_q`` holds ``blk.3.attn_q.weight``.
Each weight module remembers the ggml type its tensor had in the file (``.qtype``); in lean mode a matrix
keeps the file's quantized rows and decodes them inside forward.

Shapes: B batch, T new tokens, S all positions attended to (past + new), C = n_embd,
nh = n_head, nkv = n_head_kv, hs = head_dim.
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from torch import nn

from .. import quants
from .cache import KVCache
from .config import StableLMConfig
from .hooks import NO_TAP, Tap

FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
LEAN_CHUNK_ROWS = 4096  # rows decoded at once in lean mode and while loading


def decode_rows(raw: torch.Tensor, qtype: GGMLQuantizationType, dtype: torch.dtype) -> torch.Tensor:
    """uint8 rows of one tensor -> floats of ``dtype`` on the same device, decoded a band of rows at a
    time straight into the result (another dtype goes through one float32 band of scratch)."""
    fmt = quants.get(qtype)
    rows = raw.reshape(-1, raw.shape[-1])
    # torch's allocator, not numpy's huge pages: a whole model of fresh huge pages made the kernel stop to
    # compact memory (a 3B float32 load took 10-13 s instead of 7; tools/bench_3b.py)
    out = torch.empty((rows.shape[0], rows.shape[1] // fmt.type_size * fmt.block_size), dtype=dtype, device=raw.device)
    for start in range(0, rows.shape[0], LEAN_CHUNK_ROWS):
        band = rows[start : start + LEAN_CHUNK_ROWS]
        if dtype == torch.float32:
            fmt.dequantize_torch(band, out=out[start : start + LEAN_CHUNK_ROWS])
        else:
            out[start : start + LEAN_CHUNK_ROWS] = fmt.dequantize_torch(band, out=scratch(band, fmt))
    return out


_scratch = threading.local()  # per thread: two threads running lean models must not share a band


def scratch(band: torch.Tensor, fmt) -> torch.Tensor:
    """A float32 buffer for the weights of ``band``, one per device and thread, reused from call to call:
    decoding into warm memory skips the page faults of a fresh allocation (lean forward decodes every
    matrix)."""
    n_weights = band.shape[0] * band.shape[1] // fmt.type_size * fmt.block_size
    buffers = _scratch.__dict__.setdefault("by_device", {})
    buffer = buffers.get(band.device)
    if buffer is None or buffer.numel() < n_weights:
        buffer = buffers[band.device] = torch.empty(n_weights, device=band.device)
    return buffer[:n_weights].view(band.shape[0], -1)


# ---- weights as they come from the file --------------------------------------------------------
class GGUFWeights(nn.Module):
    """A module whose tensors come from a GGUF file: ``weight`` (and ``bias``) plus their ggml types."""

    def __init__(self, weight_shape: tuple[int, ...], bias: bool):
        super().__init__()
        self.weight_shape = weight_shape  # numpy order, as in the file
        self.has_bias = bias
        self.qtype = {}  # "weight"/"bias" -> GGMLQuantizationType in the file
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        self.register_buffer("raw", None)  # lean mode: the file's uint8 rows, decoded in forward

    def load(
        self,
        attr: str,
        raw: torch.Tensor,
        qtype: GGMLQuantizationType,
        dtype: torch.dtype,
        device="cpu",
        lean: bool = False,
    ) -> None:
        """Take one tensor's raw bytes (uint8 rows, possibly a view into the file): keep a copy of them on
        ``device`` (lean) or decode them there to ``dtype``."""
        self.qtype[attr] = qtype
        on_device = raw.to(device) if torch.device(device).type != "cpu" else raw
        if lean and attr == "weight" and qtype not in FLOAT_TYPES:
            self.raw = on_device.clone() if on_device is raw else on_device  # a uint8 buffer: .to(dtype) leaves it
            return
        value = decode_rows(on_device, qtype, dtype)
        setattr(self, attr, nn.Parameter(value.reshape(self._shape(attr)), requires_grad=False))

    def _shape(self, attr: str) -> tuple[int, ...]:
        return self.weight_shape if attr == "weight" else self.weight_shape[:1]


class Linear(GGUFWeights):
    """y = x Wᵀ + b, with W of shape (n_out, n_in): each row of W is one ggml row of the file."""

    def __init__(self, n_in: int, n_out: int, bias: bool = False):
        super().__init__((n_out, n_in), bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        y = torch.cat([F.linear(x, w) for w in self.decoded_bands(x)], dim=-1)  # a band: some outputs
        return y + self.bias if self.bias is not None else y

    def decoded_bands(self, x: torch.Tensor):
        """Lean mode: the weight decoded a band of rows at a time, so that a 50304-row output head
        never exists in float32 all at once. Each band is decoded into the same scratch buffer, used
        up by the caller before the next one; not when autograd would keep the band for backward."""
        fmt = quants.get(self.qtype["weight"])
        reuse = not (torch.is_grad_enabled() and x.requires_grad)
        for start in range(0, self.raw.shape[0], LEAN_CHUNK_ROWS):
            band = self.raw[start : start + LEAN_CHUNK_ROWS]
            yield fmt.dequantize_torch(band, out=scratch(band, fmt) if reuse else None).to(x.dtype)


class Embedding(GGUFWeights):
    """Token id -> row of token_embd; in lean mode only the rows asked for are decoded (ggml_get_rows)."""

    def __init__(self, n_vocab: int, n_embd: int, dtype: torch.dtype = torch.float32):
        super().__init__((n_vocab, n_embd), bias=False)
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        if self.weight is not None:
            return F.embedding(ids, self.weight)
        rows = self.raw[ids.reshape(-1)]
        return decode_rows(rows, self.qtype["weight"], self.dtype).view(*ids.shape, -1)


class LayerNorm(GGUFWeights):
    """LayerNorm with bias: y = (x - mean) / sqrt(var + eps) * weight + bias, over the last dim.

    With a weight of shape (n_head, head_dim) and no bias it is StableLM 2's per-head q/k norm.
    """

    def __init__(self, shape: tuple[int, ...], eps: float, bias: bool = True):
        super().__init__(shape, bias)
        self.eps = eps

    def _shape(self, attr: str) -> tuple[int, ...]:
        return self.weight_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's layer_norm: one kernel, the biased variance, and mean and variance in float32 even for
        # a bfloat16 x (its accumulate type)
        if self.weight.dim() == 1:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.weight.shape[-1:], eps=self.eps) * self.weight  # per head


# ---- position: rotary embedding on part of each head --------------------------------------------
class Rotary(nn.Module):
    """Rotate the first ``n_rot`` dims of each head by position-dependent angles; leave the rest alone.

    NeoX pairing (llama.cpp's LLAMA_ROPE_TYPE_NEOX): dim i turns together with dim i + n_rot/2, by the
    angle pos * base^(-2i/n_rot). StableLM-3B-4E1T: head_dim 80, n_rot 20, so 10 pairs per head.
    """

    def __init__(self, n_rot: int, base: float):
        super().__init__()
        self.n_rot = n_rot
        inv_freq = 1.0 / (base ** (torch.arange(0, n_rot, 2, dtype=torch.float32) / n_rot))  # (n_rot/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._last = (None, None, None, None)  # (pos, dtype, cos, sin) of the last call

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:  # x (B, T, n, hs), pos (T,)
        cos, sin = self.cos_sin(pos, x.dtype)
        half = self.n_rot // 2
        x1, x2, rest = x[..., :half], x[..., half : self.n_rot], x[..., self.n_rot :]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)

    def cos_sin(self, pos: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of every angle, (T, 1, n_rot/2): the same for every head. Computed once per
        positions tensor: the model shares one Rotary among its layers and hands all of them the same
        pos, so q and k of every layer reuse the first call's (a GPU then runs 2 kernels, not 256)."""
        last_pos, last_dtype, cos, sin = self._last  # one read: threads may share it
        if last_pos is not pos or last_dtype != dtype:
            angle = pos.float()[:, None] * self.inv_freq[None, :]  # (T, n_rot/2)
            cos, sin = angle.cos()[:, None, :].to(dtype), angle.sin()[:, None, :].to(dtype)
            self._last = (pos, dtype, cos, sin)
        return cos, sin


# ---- attention -----------------------------------------------------------------------------------
class Attention(nn.Module):
    """Causal self-attention; n_head query heads share n_head_kv key/value heads (grouped-query)."""

    def __init__(self, config: StableLMConfig, layer: int, rotary: Rotary | None = None):
        super().__init__()
        C, hs, nkv = config.n_embd, config.head_dim, config.n_head_kv
        self.layer, self.n_head, self.n_head_kv, self.head_dim = layer, config.n_head, nkv, hs
        self.attn_q = Linear(C, config.n_head * hs, bias=config.qkv_bias)
        self.attn_k = Linear(C, nkv * hs, bias=config.qkv_bias)
        self.attn_v = Linear(C, nkv * hs, bias=config.qkv_bias)
        self.attn_output = Linear(config.n_head * hs, C)
        if config.qk_norm:  # StableLM 2 12B: a LayerNorm per head, weight only
            self.attn_q_norm = LayerNorm((config.n_head, hs), config.norm_eps, bias=False)
            self.attn_k_norm = LayerNorm((nkv, hs), config.norm_eps, bias=False)
        self.rotary = rotary or Rotary(config.n_rot, config.rope_base)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache | None = None, tap: Tap = NO_TAP
    ) -> torch.Tensor:
        B, T, C = x.shape
        q = self.attn_q(x).view(B, T, self.n_head, self.head_dim)  # (B, T, nh, hs)
        k = self.attn_k(x).view(B, T, self.n_head_kv, self.head_dim)  # (B, T, nkv, hs)
        v = self.attn_v(x).view(B, T, self.n_head_kv, self.head_dim)  # (B, T, nkv, hs)
        if hasattr(self, "attn_q_norm"):
            q, k = self.attn_q_norm(q), self.attn_k_norm(k)
        q = tap("Qcur", self.rotary(q, pos))
        k = tap("Kcur", self.rotary(k, pos))
        v = tap("Vcur", v)
        if cache is not None:
            k, v = cache.append(self.layer, k, v)  # (B, S, nkv, hs)

        group = self.n_head // self.n_head_kv  # query heads per KV head
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T or S, hs)
        if group > 1:
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)  # (B, nh, S, hs)

        kq = tap("kq", q @ k.transpose(-2, -1))  # (B, nh, T, S)
        scores = kq * (1.0 / math.sqrt(self.head_dim))
        if T > 1:  # one new token (T = 1) may look at every key: nothing to mask
            scores = scores.masked_fill(causal_mask(T, k.shape[2], x.device), float("-inf"))
        probs = tap("kq_soft_max", F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype))
        out = probs @ v  # (B, nh, T, hs)
        out = tap("kqv_out", out.transpose(1, 2).reshape(B, T, -1))  # (B, T, nh*hs)
        return self.attn_output(out)


def causal_mask(T: int, S: int, device) -> torch.Tensor:
    """True where query t (the last T of S positions) may NOT look: at keys after its own position."""
    return torch.ones(T, S, dtype=torch.bool, device=device).triu(diagonal=S - T + 1)


# ---- feed-forward --------------------------------------------------------------------------------
class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: StableLMConfig):
        super().__init__()
        self.ffn_gate = Linear(config.n_embd, config.n_ff)
        self.ffn_up = Linear(config.n_embd, config.n_ff)
        self.ffn_down = Linear(config.n_ff, config.n_embd)

    def forward(self, x: torch.Tensor, tap: Tap = NO_TAP) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        swiglu = tap("ffn_swiglu", F.silu(self.ffn_gate(x)) * self.ffn_up(x))  # (B, T, n_ff): ffn_down's input
        return self.ffn_down(swiglu)


# ---- the block -----------------------------------------------------------------------------------
class Block(nn.Module):
    """One transformer layer, pre-norm.

    sequential (3B-4E1T):  h = x + attn(attn_norm(x));  out = h + mlp(ffn_norm(h))
    parallel (2-12B):      h = x + attn(attn_norm(x));  out = h + mlp(attn_norm(x))
    """

    def __init__(self, config: StableLMConfig, layer: int, rotary: Rotary | None = None):
        super().__init__()
        self.attn_norm = LayerNorm((config.n_embd,), config.norm_eps)
        self.attn = Attention(config, layer, rotary)
        if not config.parallel_residual:
            self.ffn_norm = LayerNorm((config.n_embd,), config.norm_eps)
        self.ffn = MLP(config)

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, cache: KVCache | None = None, tap: Tap = NO_TAP
    ) -> torch.Tensor:
        h = tap("attn_norm", self.attn_norm(x))
        attn_out = tap("attn_out", self.attn(h, pos, cache, tap))
        ffn_inp = tap("ffn_inp", attn_out + x)
        if hasattr(self, "ffn_norm"):
            h = tap("ffn_norm", self.ffn_norm(ffn_inp))
        ffn_out = tap("ffn_out", self.ffn(h, tap))
        return tap("l_out", ffn_out + ffn_inp)
