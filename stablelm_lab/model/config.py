"""The shape of a StableLM model, read from a GGUF file's ``stablelm.*`` keys and its tensor table.

StableLM-3B-4E1T: 2560 wide, 32 blocks of 32 heads of 80 dims, rotary on the first 20 dims of each head,
6912-wide SwiGLU, LayerNorm with bias, sequential residual. StableLM 2 adds q/k/v biases (1.6B) or
per-head q/k norms and a parallel residual (12B); the same config and code serve them all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..container.gguf_file import GGUFError, GGUFFile, TensorInfo

ARCH = "stablelm"
ROPE_BASE_DEFAULT = 10000.0  # llama.cpp's default when rope.freq_base is absent


@dataclass(frozen=True)
class StableLMConfig:
    n_vocab: int  # rows of token_embd (the padded vocabulary: 50304 for 3B-4E1T)
    n_embd: int  # width of the residual stream
    n_layer: int
    n_head: int
    n_head_kv: int  # < n_head: grouped-query attention, each KV head serves n_head/n_head_kv heads
    n_ff: int  # width of the SwiGLU hidden layer
    n_ctx: int  # context length the model was trained for
    n_rot: int  # rotary embedding acts on the first n_rot dims of each head
    norm_eps: float = 1e-5
    rope_base: float = ROPE_BASE_DEFAULT
    parallel_residual: bool = False  # True: attention and MLP both read attn_norm(x) (no ffn_norm tensors)
    qkv_bias: bool = False
    qk_norm: bool = False  # per-head LayerNorm (weight only) on q and k, before rotary

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def partial_rotary_factor(self) -> float:
        return self.n_rot / self.head_dim

    @classmethod
    def from_gguf(cls, gguf_file: GGUFFile) -> StableLMConfig:
        """Read the config of a ``GGUFFile``; a GGUFError when it does not hold a StableLM model, or when
        the keys contradict each other or the tensor table (checked before any module is built from them)."""
        path, meta = gguf_file.path, gguf_file.metadata
        arch = meta.get("general.architecture")
        if arch != ARCH:
            raise GGUFError(f"{path} holds a {arch!r} model, not a StableLM (general.architecture must be {ARCH!r})")

        def key(name, default=None):
            value = meta.get(f"{ARCH}.{name}", default)
            if value is None:
                raise GGUFError(f"{path} lacks the metadata key {ARCH}.{name}")
            return value

        def count(name, default=None, minimum=1):
            return _checked_count(path, f"{ARCH}.{name}", key(name, default), minimum)

        def positive(name, default=None):
            return _checked_positive(path, f"{ARCH}.{name}", key(name, default))

        names = set(gguf_file.tensor_info)
        n_vocab, embd_width = _token_embd_shape(gguf_file)
        n_head = count("attention.head_count")
        n_embd = count("embedding_length")
        config = cls(
            n_vocab=n_vocab,
            n_embd=n_embd,
            n_layer=count("block_count"),
            n_head=n_head,
            n_head_kv=count("attention.head_count_kv", n_head),
            n_ff=count("feed_forward_length"),
            n_ctx=count("context_length"),
            n_rot=count("rope.dimension_count", n_embd // n_head, minimum=0),
            norm_eps=positive("attention.layer_norm_epsilon"),
            rope_base=positive("rope.freq_base", ROPE_BASE_DEFAULT),
            # the use_parallel_residual key is written as True by default by old converters: trust tensors
            parallel_residual="blk.0.ffn_norm.weight" not in names,
            qkv_bias="blk.0.attn_q.bias" in names,
            qk_norm="blk.0.attn_q_norm.weight" in names,
        )
        config.check(path, embd_width, _blocks_in(names))
        return config

    def check(self, path: str, embd_width: int, blocks: set[int]) -> None:
        """The keys agree with each other and with the tensor table (a GGUFError says which do not)."""
        problems = [
            (
                self.n_embd != embd_width,
                f"{ARCH}.embedding_length is {self.n_embd}, but token_embd.weight rows have {embd_width} weights",
            ),
            (
                self.n_embd % self.n_head != 0,
                f"{ARCH}.embedding_length {self.n_embd} is not a multiple of the head count {self.n_head}",
            ),
            (
                self.n_head % self.n_head_kv != 0,
                f"the head count {self.n_head} is not a multiple of the KV head count {self.n_head_kv}",
            ),
            (
                self.n_rot % 2 != 0 or self.n_rot > self.n_embd // self.n_head,
                f"{ARCH}.rope.dimension_count is {self.n_rot}: rotary needs an even count no larger than "
                f"the head size {self.n_embd // self.n_head}",
            ),
            (
                self.n_layer > len(blocks),  # so a corrupt count builds no more blocks than the file has
                f"{ARCH}.block_count is {self.n_layer}, but the tensor table only has {_ranges(blocks)}",
            ),
        ]
        for failed, problem in problems:
            if failed:
                raise GGUFError(f"{path}: {problem}")


def _checked_count(path: str, key: str, value: object, minimum: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    raise GGUFError(f"{path}: the metadata key {key} is {value!r:.60}, not an integer >= {minimum}")


def _checked_positive(path: str, key: str, value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf:
        return float(value)
    raise GGUFError(f"{path}: the metadata key {key} is {value!r:.60}, not a positive finite number")


def _token_embd_shape(gguf_file: GGUFFile) -> tuple[int, int]:
    """(n_vocab, n_embd) as token_embd.weight has them."""
    info = gguf_file.tensor_info.get("token_embd.weight")
    if info is None:
        raise GGUFError(f"{gguf_file.path} has no token_embd.weight tensor")
    if len(info.shape) != 2:
        raise GGUFError(f"{gguf_file.path}: token_embd.weight has shape {info.shape}, not (n_vocab, n_embd)")
    return info.shape


def _blocks_in(names: Iterable[str]) -> set[int]:
    """The N of every blk.N.* tensor."""
    return {int(n.split(".")[1]) for n in names if n.startswith("blk.") and n.split(".")[1].isdigit()}


def _ranges(numbers: set[int]) -> str:
    return f"blocks {min(numbers)} to {max(numbers)}" if numbers else "no blocks"


#: StableLM-3B-4E1T as released (stabilityai/stablelm-3b-4e1t's config.json, which transformers' StableLmConfig
#: takes as its defaults): the shape the workbook teaches, for when no 3B file is at hand.
STABLELM_3B_4E1T = StableLMConfig(
    n_vocab=50304,
    n_embd=2560,
    n_layer=32,
    n_head=32,
    n_head_kv=32,
    n_ff=6912,
    n_ctx=4096,
    n_rot=20,
    norm_eps=1e-5,
    rope_base=10000.0,
)


def tensor_table(
    config: StableLMConfig, matrix_type: GGMLQuantizationType | None = None, alignment: int = 32
) -> list[TensorInfo]:
    """The tensor table of a GGUF file holding a model of this shape, as llama.cpp's converter writes it:
    matrices in ``matrix_type`` (F16 unless told), 1-D tensors (norms, biases) in F32, data aligned.

        sum(t.n_elements for t in tensor_table(STABLELM_3B_4E1T))   # 2,795,443,200 weights
    """
    matrix_type = GGMLQuantizationType.F16 if matrix_type is None else matrix_type
    c, infos, offset = config, [], 0

    def add(name: str, *shape: int) -> None:
        nonlocal offset
        qtype = matrix_type if len(shape) == 2 and "_norm" not in name else GGMLQuantizationType.F32
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        nbytes = math.prod(shape) // block_size * type_size
        infos.append(TensorInfo(name, tuple(shape), qtype, nbytes, offset))
        offset += -(-nbytes // alignment) * alignment

    kv_width = c.n_head_kv * c.head_dim
    add("token_embd.weight", c.n_vocab, c.n_embd)
    for i in range(c.n_layer):
        blk = f"blk.{i}"
        add(f"{blk}.attn_norm.weight", c.n_embd)
        add(f"{blk}.attn_norm.bias", c.n_embd)
        for role, rows in (("attn_q", c.n_embd), ("attn_k", kv_width), ("attn_v", kv_width)):
            add(f"{blk}.{role}.weight", rows, c.n_embd)
            if c.qkv_bias:
                add(f"{blk}.{role}.bias", rows)
        if c.qk_norm:
            add(f"{blk}.attn_q_norm.weight", c.n_head, c.head_dim)
            add(f"{blk}.attn_k_norm.weight", c.n_head_kv, c.head_dim)
        add(f"{blk}.attn_output.weight", c.n_embd, c.n_embd)
        if not c.parallel_residual:
            add(f"{blk}.ffn_norm.weight", c.n_embd)
            add(f"{blk}.ffn_norm.bias", c.n_embd)
        add(f"{blk}.ffn_gate.weight", c.n_ff, c.n_embd)
        add(f"{blk}.ffn_up.weight", c.n_ff, c.n_embd)
        add(f"{blk}.ffn_down.weight", c.n_embd, c.n_ff)
    add("output_norm.weight", c.n_embd)
    add("output_norm.bias", c.n_embd)
    add("output.weight", c.n_vocab, c.n_embd)
    return infos
