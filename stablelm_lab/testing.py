"""Synthetic StableLM GGUF files of any shape, for tests, tools and trying the notebooks on a big file (as
numpy.testing and torch.testing serve their packages' tests).

The files are written with gguf-py's GGUFWriter the way llama.cpp's converter (convert_hf_to_gguf.py,
conversion/stablelm.py) writes them: the hyper-parameter keys and the tokenizer keys through the very
functions the package's own writer uses (train/export.py), the converter's tensor names and shapes,
random weights in any ggml type. And the independent reference the tests compare against: transformers'
StableLmForCausalLM holding the weights gguf-py decodes from the file.

    spec = TinySpec(n_rot=16, parallel_residual=True)
    path = write_gguf(tmp_path / "m.gguf", spec, types=q4_k_m_mix)
    hf = transformers_model(path, spec)     # weights read back with gguf.GGUFReader + gguf.quants.dequantize

transformers is not a dependency of the package: only ``transformers_model`` needs it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGUFReader, GGUFWriter, TokenType
from gguf import GGMLQuantizationType as T
from gguf import quants as gguf_quants
from tokenizers import Tokenizer

from .model.config import StableLMConfig
from .train.corpus import WHITESPACE_RUNS, Document, train_tokenizer
from .train.export import ARCH, add_hyperparameters, add_tokenizer, converter_type

WEIGHT_STD = 0.05
#: A tensor's name and shape (numpy order) -> the ggml type it is stored in.
TypeChooser = Callable[[str, tuple[int, ...]], T]


@dataclass(frozen=True)
class TinySpec:
    n_vocab: int = 512
    n_embd: int = 256  # a multiple of 256, so K-quants apply to every matrix
    n_layer: int = 2
    n_head: int = 4  # head_dim 64
    n_head_kv: int = 2
    n_ff: int = 512
    n_ctx: int = 256
    n_rot: int = 16  # 0.25 of head_dim, as in StableLM-3B-4E1T
    norm_eps: float = 1e-5
    rope_base: float | None = None  # None: key absent (llama.cpp then uses 10000)
    parallel_residual: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    seed: int = 0

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


# ---- weights ---------------------------------------------------------------------------------
def random_weights(spec: TinySpec) -> dict[str, np.ndarray]:
    """float32 weights named and shaped as in a llama.cpp StableLM GGUF (numpy order: rows, cols)."""
    return dict(random_weight_stream(spec))


def weight_shapes(spec: TinySpec) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, in the order the converter writes them."""
    d, hd, kv = spec.n_embd, spec.head_dim, spec.n_head_kv * spec.head_dim
    shapes = {
        "token_embd.weight": (spec.n_vocab, d),
        "output_norm.weight": (d,),
        "output_norm.bias": (d,),
        "output.weight": (spec.n_vocab, d),
    }
    for i in range(spec.n_layer):
        p = f"blk.{i}."
        shapes |= {
            p + "attn_norm.weight": (d,),
            p + "attn_norm.bias": (d,),
            p + "attn_q.weight": (d, d),
            p + "attn_k.weight": (kv, d),
            p + "attn_v.weight": (kv, d),
        }
        if spec.qkv_bias:
            shapes |= {p + "attn_q.bias": (d,), p + "attn_k.bias": (kv,), p + "attn_v.bias": (kv,)}
        if spec.qk_norm:  # the converter stacks the per-head norms: (n_head, head_dim)
            shapes |= {p + "attn_q_norm.weight": (spec.n_head, hd), p + "attn_k_norm.weight": (spec.n_head_kv, hd)}
        shapes[p + "attn_output.weight"] = (d, d)
        if not spec.parallel_residual:
            shapes |= {p + "ffn_norm.weight": (d,), p + "ffn_norm.bias": (d,)}
        shapes |= {
            p + "ffn_gate.weight": (spec.n_ff, d),
            p + "ffn_up.weight": (spec.n_ff, d),
            p + "ffn_down.weight": (d, spec.n_ff),
        }
    return shapes


def random_weight_stream(spec: TinySpec) -> Iterator[tuple[str, np.ndarray]]:
    """(name, float32 weights) one tensor at a time, drawn lazily: a 3B-shaped model never sits in memory
    whole. Norm weights near 1 and biases near 0 (a swapped weight and bias would show); the embedding
    has unit variance, every other matrix WEIGHT_STD."""
    rng = np.random.default_rng(spec.seed)
    for name, shape in weight_shapes(spec).items():
        if "_norm.weight" in name:
            w = 1 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(".bias"):
            w = 0.1 * rng.standard_normal(shape)
        else:
            w = rng.standard_normal(shape) * (1 if name == "token_embd.weight" else WEIGHT_STD)
        yield name, w.astype(np.float32)


# ---- tensor types: which ggml type each tensor is stored in ----------------------------------
def all_f32(name: str, shape: tuple[int, ...]) -> T:
    return T.F32


def converter_f16(name: str, shape: tuple[int, ...]) -> T:
    """convert_hf_to_gguf --outtype f16, by the package's own rule (train/export.py's converter_type)."""
    return T.F16 if converter_type(name, shape) is np.float16 else T.F32


def uniform(qtype: T) -> TypeChooser:
    """Every matrix in qtype, 1-D tensors and norms in F32 (as llama-quantize does)."""

    def choose(name: str, shape: tuple[int, ...]) -> T:
        return qtype if len(shape) == 2 and "_norm" not in name else T.F32

    return choose


def q4_k_m_mix(name: str, shape: tuple[int, ...]) -> T:
    """A Q4_K_M-like mix: Q4_K, with attn_v/ffn_down in Q6_K, output in Q6_K, token_embd in Q4_K."""
    if len(shape) < 2 or "_norm" in name:
        return T.F32
    if name == "output.weight" or "attn_v" in name or "ffn_down" in name:
        return T.Q6_K
    return T.Q4_K


def every_type_mix(types: Sequence[T]) -> TypeChooser:
    """Matrices cycle through the given types, so one file holds a mix of all of them."""
    counter = iter(range(10**6))

    def choose(name: str, shape: tuple[int, ...]) -> T:
        if len(shape) < 2 or "_norm" in name:
            return T.F32
        return types[next(counter) % len(types)]

    return choose


# Where each block of a type without a numpy quantizer in gguf-py keeps its float16 scales
# (byte offsets from the C structs in ggml-common.h). Random bytes with these scales set to
# finite values make valid blocks; gguf-py decodes them for the reference.
F16_SCALE_OFFSETS = {
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
    T.IQ4_NL: (0,),
    T.IQ4_XS: (0,),
    T.TQ1_0: (52,),
    T.TQ2_0: (64,),
}


def encode(w: np.ndarray, qtype: T, rng: np.random.Generator) -> np.ndarray:
    """The bytes of ``w`` stored as ``qtype``: gguf-py's quantizer where it has one, else random blocks."""
    if qtype == T.F32:
        return w
    if qtype == T.F16:
        return w.astype(np.float16)
    try:
        return gguf_quants.quantize(w, qtype)
    except NotImplementedError:
        return random_blocks(w.shape, qtype, rng)


def random_blocks(shape: tuple[int, int], qtype: T, rng: np.random.Generator) -> np.ndarray:
    """Random blocks of ``qtype`` whose decoded weights have a standard deviation near WEIGHT_STD."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rows, cols = shape
    blocks = rng.integers(0, 256, size=(rows * cols // block_size, type_size), dtype=np.uint8)
    scales = [blocks[:, o : o + 2].view(np.float16) for o in F16_SCALE_OFFSETS[qtype]]
    for s in scales:
        s[:] = rng.uniform(0.5, 1.0, size=s.shape).astype(np.float16)
    raw = blocks.reshape(rows, -1)
    std = gguf_quants.dequantize(raw[:64], qtype).std()  # a sample of rows is enough
    for s in scales:
        s[:] = (s.astype(np.float32) * (WEIGHT_STD / std)).astype(np.float16)
    return raw


# ---- writing a file --------------------------------------------------------------------------
def write_gguf(
    path: str | Path,
    spec: TinySpec = TinySpec(),
    types: TypeChooser = all_f32,
    weights: dict[str, np.ndarray] | None = None,
    tokenizer: Tokenizer | str | None = None,
    tokenizer_pre: str | None = "olmo",
    architecture: str = ARCH,
) -> Path:
    """Write a StableLM GGUF as llama.cpp's converter does; ``types(name, shape)`` picks each tensor's type.

    ``tokenizer``: a ``tokenizers.Tokenizer`` (written as the converter writes it), "placeholder" (numbered
    tokens, enough for llama.cpp to load), or None (no tokenizer keys)."""
    weights = random_weights(spec) if weights is None else weights
    rng = np.random.default_rng(spec.seed + 1)
    writer = GGUFWriter(str(path), architecture)
    add_metadata(writer, spec, tokenizer, tokenizer_pre)
    for name, w in weights.items():
        qtype = types(name, w.shape)
        data = encode(w, qtype, rng)
        writer.add_tensor(name, data, raw_dtype=qtype if data.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(path)


def add_metadata(
    writer: GGUFWriter, spec: TinySpec, tokenizer: Tokenizer | str | None = None, tokenizer_pre: str | None = "olmo"
) -> None:
    """The stablelm.* keys and the tokenizer, as the converter writes them. use_parallel_residual is True
    whatever the spec's tensors say, as the converter writes it when config.json lacks the key: the tests
    make that key lie."""
    writer.add_name("tiny-stablelm-test")
    add_hyperparameters(writer, spec, parallel_residual=True, rope_base=spec.rope_base)
    if tokenizer == "placeholder":
        add_placeholder_vocab(writer, spec.n_vocab)
    elif tokenizer is not None:
        add_tokenizer(writer, tokenizer, spec.n_vocab, tokenizer_pre)


def add_placeholder_vocab(writer: GGUFWriter, n_vocab: int) -> None:
    """Just enough tokenizer for llama.cpp to load the file (the golden runs feed token ids)."""
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("olmo")
    writer.add_token_list([f"<t{i}>" for i in range(n_vocab)])
    writer.add_token_types([TokenType.NORMAL] * n_vocab)
    writer.add_token_merges(["<t1> <t2>"])  # llama.cpp wants at least one merge


# ---- a tokenizer: GPT-NeoX-style byte-level BPE, trained as the embedded default's (train/corpus.py) -------
TRAINING_TEXT = (
    """\
The quick brown fox jumps over the lazy dog. It's 2024, and we'll see what they've done.
def forward(self, x):\n    return self.proj(x) + 1234 * 5678\n\tif x is None:\n\t\tpass
Café, naïve, résumé, Zürich, São Paulo, Ångström, crème brûlée. Ünïcödé everywhere!
日本語のテキストと中文文本, 한국어 텍스트, русский текст, ελληνικά, עברית, العربية.
Emoji 😀🚀🎉 and math ∑ ∫ √ ≤ ≥ ≠ ∞. Numbers: 3.14159, 2,718, 1e-5, 0x1F, 100%.
"""
    * 3
)


def train_neox_tokenizer(vocab_size: int = 400) -> Tokenizer:
    """A small tokenizer shaped like GPT-NeoX-20B's (StableLM-3B-4E1T's): NFC, byte-level BPE,
    <|endoftext|> and <|padding|> as ids 0 and 1, whitespace runs as added (non-special) tokens after
    ``vocab_size`` BPE tokens. The recipe of the embedded default's tokenizer, on TRAINING_TEXT."""
    lines = [Document(f"line {i}", line, english=True) for i, line in enumerate(TRAINING_TEXT.splitlines())]
    return train_tokenizer(lines, vocab_size + len(WHITESPACE_RUNS))


# ---- the golden sources: the files llama.cpp quantized for tests/golden/mixes/ and quantize_imatrix/ --------
@dataclass(frozen=True)
class GoldenSource:
    spec: TinySpec
    source_type: T  # every matrix in it (F16 like a converted release, or F32)


GOLDEN_SOURCES = {
    # StableLM-3B-4E1T's design in small: 16 layers, so every layer rule of the mixes shows (first/last
    # eighth, every third layer, first sixteenth), no grouped KV heads
    "stablelm16": GoldenSource(
        TinySpec(n_vocab=256, n_embd=256, n_layer=16, n_head=4, n_head_kv=4, n_ff=256, n_ctx=128, seed=16), T.F16
    ),
    # 12 layers (n/16 = 0), 4 query heads per KV head, and ffn_down rows of 288 that do not fit 256-weight
    # blocks (the fallbacks)
    "gqa12": GoldenSource(
        TinySpec(n_vocab=64, n_embd=256, n_layer=12, n_head=4, n_head_kv=1, n_ff=288, n_ctx=128, seed=12), T.F32
    ),
}


def write_golden_source(path: str | Path, model: str) -> Path:
    """The golden model's source file, the same bytes on every run (numpy's PCG64 stream and gguf-py):
    the tests check its sha256 against the one llama.cpp quantized."""
    source = GOLDEN_SOURCES[model]
    return write_gguf(path, source.spec, types=uniform(source.source_type), tokenizer="placeholder")


def sha256(data: np.ndarray | bytes) -> str:
    """The sha256 of an array's bytes (a file read with np.fromfile, a tensor's blocks), as golden records
    hold it."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(data)).cast("B")).hexdigest()


# ---- the independent reference: transformers on the weights gguf-py reads back ----------------
def read_back(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the file as float32, read with gguf.GGUFReader and decoded by gguf.quants."""
    out = {}
    for t in GGUFReader(str(path)).tensors:
        shape = tuple(int(n) for n in reversed(t.shape.tolist()))
        out[t.name] = gguf_quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(shape)
    return out


def hf_name(name: str) -> str:
    """A GGUF tensor's name in transformers' StableLmForCausalLM ("blk.0.attn_q.weight" ->
    "model.layers.0.self_attn.q_proj.weight")."""
    parts = name.split(".")
    top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
    if parts[0] in top:
        return f"{top[parts[0]]}.{parts[1]}"
    layer = {
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    return f"model.layers.{parts[1]}.{layer[parts[2]]}.{parts[3]}"


def transformers_model(path: str | Path, spec: TinySpec | StableLMConfig) -> torch.nn.Module:
    """transformers' StableLmForCausalLM (float32, eager attention) holding the file's decoded weights;
    its shape from the spec the file was written with, or from the config our reader read (a file made
    elsewhere)."""
    try:  # not a dependency of the package: the tests' extra (pip install -e '.[test]') has it
        from transformers import StableLmConfig, StableLmForCausalLM
    except ImportError as e:
        raise ImportError("transformers_model needs transformers: pip install 'stablelm-lab[test]'") from e

    config = StableLmConfig(
        vocab_size=spec.n_vocab,
        hidden_size=spec.n_embd,
        intermediate_size=spec.n_ff,
        num_hidden_layers=spec.n_layer,
        num_attention_heads=spec.n_head,
        num_key_value_heads=spec.n_head_kv,
        max_position_embeddings=spec.n_ctx,
        layer_norm_eps=spec.norm_eps,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": spec.rope_base or 10000.0,
            "partial_rotary_factor": spec.n_rot / spec.head_dim,
        },
        use_parallel_residual=spec.parallel_residual,
        use_qkv_bias=spec.qkv_bias,
        qk_layernorm=spec.qk_norm,
        tie_word_embeddings=False,
        attn_implementation="eager",
        bos_token_id=None,
        eos_token_id=None,
    )
    model = StableLmForCausalLM(config).eval()
    state = {}
    for name, w in read_back(path).items():
        if name.endswith(("attn_q_norm.weight", "attn_k_norm.weight")):  # unstack the per-head norms
            which = "q_layernorm" if "attn_q_norm" in name else "k_layernorm"
            for h, row in enumerate(w):
                state[f"model.layers.{name.split('.')[1]}.self_attn.{which}.norms.{h}.weight"] = torch.from_numpy(row)
        else:
            state[hf_name(name)] = torch.from_numpy(w)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if "rotary_emb" not in m]
    assert not missing and not unexpected, (missing, unexpected)
    return model
