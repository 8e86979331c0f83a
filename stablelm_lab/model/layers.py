"""The pieces of a StableLM block, one small class per idea, in the order the data flows.

Weights are named as in the GGUF file: the module ``blk[3].attn.attn_q`` holds ``blk.3.attn_q.weight``.
How a matrix is held (a float tensor, or the file's quantized rows) is the loader's business: a Linear
only asks its ``weights`` for the product (weights.py).

Shapes: B batch, T new tokens, S all positions attended to (past + new), C = n_embd,
nh = n_head, nkv = n_head_kv, hs = head_dim.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cache import KVCache
from .config import StableLMConfig
from .hooks import NO_TAP, Tap
from .weights import Weights


# ---- the layers that hold the file's tensors ------------------------------------------------------
class Linear(nn.Module):
    """y = x Wᵀ + b, with W of shape (n_out, n_in): each row of W is one ggml row of the file."""

    def __init__(self, n_in: int, n_out: int, bias: bool = False) -> None:
        super().__init__()
        self.tensor_shapes = {"weight": (n_out, n_in)} | ({"bias": (n_out,)} if bias else {})  # as in the file
        self.weights: Weights | None = None  # W and b, held as the loader chooses

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, n_in) -> (B, T, n_out)
        return self.weights.matmul(x)

    @property
    def weight(self) -> torch.Tensor:
        """W as floats."""
        return self.weights.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.weights.bias


class Embedding(nn.Module):
    """Token id -> row of token_embd (ggml_get_rows)."""

    def __init__(self, n_vocab: int, n_embd: int) -> None:
        super().__init__()
        self.tensor_shapes = {"weight": (n_vocab, n_embd)}
        self.weights: Weights | None = None  # held as the loader chooses

    def forward(self, ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        return self.weights.rows(ids)

    @property
    def weight(self) -> torch.Tensor:
        """The (n_vocab, C) table as floats."""
        return self.weights.weight


class LayerNorm(nn.Module):
    """LayerNorm with bias: y = (x - mean) / sqrt(var + eps) * weight + bias, over the last dim.

    With a weight of shape (n_head, head_dim) and no bias it is StableLM 2's per-head q/k norm.
    """

    def __init__(self, shape: tuple[int, ...], eps: float, bias: bool = True) -> None:
        super().__init__()
        self.tensor_shapes = {"weight": shape} | ({"bias": shape} if bias else {})
        self.weight = nn.Parameter(torch.ones(shape))
        self.bias = nn.Parameter(torch.zeros(shape)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # torch's layer_norm: one kernel, the biased variance, and mean and variance in float32 even for
        # a bfloat16 x (its accumulate type)
        if self.weight.dim() == 1:
            return F.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)
        return F.layer_norm(x, self.weight.shape[-1:], eps=self.eps) * self.weight  # per head


# ---- position: rotary embedding on part of each head --------------------------------------------
Rope = tuple[torch.Tensor, torch.Tensor]  # cos and sin of every angle, (T, 1, n_rot/2) each


class Rotary(nn.Module):
    """The angles of the rotary embedding: the first ``n_rot`` dims of each head turn, the rest stay.

    NeoX pairing (llama.cpp's LLAMA_ROPE_TYPE_NEOX): dim i turns together with dim i + n_rot/2, by the
    angle pos * base^(-2i/n_rot). StableLM-3B-4E1T: head_dim 80, n_rot 20, so 10 pairs per head.
    The angles depend on the positions only: the model computes them once per forward, for every layer.
    """

    def __init__(self, n_rot: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, n_rot, 2, dtype=torch.float32) / n_rot))  # (n_rot/2,)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, pos: torch.Tensor, dtype: torch.dtype) -> Rope:  # pos (T,)
        angle = pos.float()[:, None] * self.inv_freq[None, :]  # (T, n_rot/2)
        return angle.cos()[:, None, :].to(dtype), angle.sin()[:, None, :].to(dtype)  # the same for every head


def rotate(x: torch.Tensor, rope: Rope) -> torch.Tensor:  # x (B, T, n, hs)
    """Turn each pair (x_i, x_{i + n_rot/2}) by its angle; dims past n_rot pass unchanged."""
    cos, sin = rope
    half = cos.shape[-1]
    x1, x2, rest = x[..., :half], x[..., half : 2 * half], x[..., 2 * half :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1)


# ---- attention -----------------------------------------------------------------------------------
class Attention(nn.Module):
    """Causal self-attention; n_head query heads share n_head_kv key/value heads (grouped-query)."""

    def __init__(self, config: StableLMConfig, layer: int) -> None:
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

    def forward(self, x: torch.Tensor, rope: Rope, cache: KVCache | None = None, tap: Tap = NO_TAP) -> torch.Tensor:
        B, T, C = x.shape
        q = self.attn_q(x).view(B, T, self.n_head, self.head_dim)  # (B, T, nh, hs)
        k = self.attn_k(x).view(B, T, self.n_head_kv, self.head_dim)  # (B, T, nkv, hs)
        v = self.attn_v(x).view(B, T, self.n_head_kv, self.head_dim)  # (B, T, nkv, hs)
        if hasattr(self, "attn_q_norm"):
            q, k = self.attn_q_norm(q), self.attn_k_norm(k)
        q = tap("Qcur", rotate(q, rope))
        k = tap("Kcur", rotate(k, rope))
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


def causal_mask(T: int, S: int, device: torch.device) -> torch.Tensor:
    """True where query t (the last T of S positions) may NOT look: at keys after its own position."""
    return torch.ones(T, S, dtype=torch.bool, device=device).triu(diagonal=S - T + 1)


# ---- feed-forward --------------------------------------------------------------------------------
class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: StableLMConfig) -> None:
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

    def __init__(self, config: StableLMConfig, layer: int) -> None:
        super().__init__()
        self.attn_norm = LayerNorm((config.n_embd,), config.norm_eps)
        self.attn = Attention(config, layer)
        if not config.parallel_residual:
            self.ffn_norm = LayerNorm((config.n_embd,), config.norm_eps)
        self.ffn = MLP(config)

    def forward(self, x: torch.Tensor, rope: Rope, cache: KVCache | None = None, tap: Tap = NO_TAP) -> torch.Tensor:
        h = tap("attn_norm", self.attn_norm(x))
        attn_out = tap("attn_out", self.attn(h, rope, cache, tap))
        ffn_inp = tap("ffn_inp", attn_out + x)
        if hasattr(self, "ffn_norm"):
            h = tap("ffn_norm", self.ffn_norm(ffn_inp))
        ffn_out = tap("ffn_out", self.ffn(h, tap))
        return tap("l_out", ffn_out + ffn_inp)
