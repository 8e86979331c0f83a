"""The shape of a StableLM model, read from a GGUF file's ``stablelm.*`` keys and its tensor table.

StableLM-3B-4E1T: 2560 wide, 32 blocks of 32 heads of 80 dims, rotary on the first 20 dims of each head,
6912-wide SwiGLU, LayerNorm with bias, sequential residual. StableLM 2 adds q/k/v biases (1.6B) or
per-head q/k norms and a parallel residual (12B); the same config and code serve them all.
"""

from __future__ import annotations

from dataclasses import dataclass

ARCH = "stablelm"
ROPE_BASE_DEFAULT = 10000.0  # llama.cpp's default when rope.freq_base is absent


@dataclass(frozen=True)
class StableLMConfig:
    n_vocab: int                # rows of token_embd (the padded vocabulary: 50304 for 3B-4E1T)
    n_embd: int                 # width of the residual stream
    n_layer: int
    n_head: int
    n_head_kv: int              # < n_head: grouped-query attention, each KV head serves n_head/n_head_kv heads
    n_ff: int                   # width of the SwiGLU hidden layer
    n_ctx: int                  # context length the model was trained for
    n_rot: int                  # rotary embedding acts on the first n_rot dims of each head
    norm_eps: float = 1e-5
    rope_base: float = ROPE_BASE_DEFAULT
    parallel_residual: bool = False  # True: attention and MLP both read attn_norm(x) (no ffn_norm tensors)
    qkv_bias: bool = False
    qk_norm: bool = False       # per-head LayerNorm (weight only) on q and k, before rotary

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def partial_rotary_factor(self) -> float:
        return self.n_rot / self.head_dim

    @classmethod
    def from_gguf(cls, gguf_file) -> "StableLMConfig":
        """Read the config of a ``GGUFFile``; a GGUFError when it does not hold a StableLM model."""
        from .gguf_file import GGUFError

        meta = gguf_file.metadata
        arch = meta.get("general.architecture")
        if arch != ARCH:
            raise GGUFError(f"{gguf_file.path} holds a {arch!r} model, not a StableLM "
                            f"(general.architecture must be {ARCH!r})")

        def key(name, default=None):
            value = meta.get(f"{ARCH}.{name}", default)
            if value is None:
                raise GGUFError(f"{gguf_file.path} lacks the metadata key {ARCH}.{name}")
            return value

        names = set(gguf_file.tensor_info)
        if "token_embd.weight" not in names:
            raise GGUFError(f"{gguf_file.path} has no token_embd.weight tensor")
        n_head = int(key("attention.head_count"))
        n_embd = int(key("embedding_length"))
        return cls(
            n_vocab=gguf_file.tensor_info["token_embd.weight"].shape[0],
            n_embd=n_embd,
            n_layer=int(key("block_count")),
            n_head=n_head,
            n_head_kv=int(key("attention.head_count_kv", n_head)),
            n_ff=int(key("feed_forward_length")),
            n_ctx=int(key("context_length")),
            n_rot=int(key("rope.dimension_count", n_embd // n_head)),
            norm_eps=float(key("attention.layer_norm_epsilon")),
            rope_base=float(key("rope.freq_base", ROPE_BASE_DEFAULT)),
            # the use_parallel_residual key is written as True by default by old converters: trust tensors
            parallel_residual="blk.0.ffn_norm.weight" not in names,
            qkv_bias="blk.0.attn_q.bias" in names,
            qk_norm="blk.0.attn_q_norm.weight" in names,
        )
