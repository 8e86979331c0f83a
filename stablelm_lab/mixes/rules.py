"""llama.cpp's quantization mixes for StableLM: which ggml type each tensor gets, and why.

"Q4_K_M" is not a type but a recipe. llama-quantize starts every matrix at the mix's base type (Q4_K)
and then ``llama_tensor_get_type`` (llama.cpp src/llama-quant.cpp) moves a few tensors to other types:
the output head to Q6_K, attn_v and ffn_down to more bits in some layers, ... This module is that
function for StableLM, one small rule per tensor role. llama-quant.cpp states almost no reasons for its
rules (its comments explain only the 70B attn_v bump and the Q4_0/Q5_0 ffn_down guard); where a docstring
here gives one, it says that the reading is ours.

    for c in explain_mix("model.F16.gguf", "Q4_K_M"):
        print(c.name, c.qtype.name, c.rule)        # blk.0.attn_v.weight Q6_K attn_v: use_more_bits(...)

The rules here are those of llama.cpp as vendored by llama-cpp-python 0.3.36 (the golden files in
tests/golden/mixes/ come from it). Files made by older llama.cpp versions followed older rules: the
type a tensor really has is in the file (``GGUFFile.tensors``), not in this module.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as T

from ..container.gguf_file import GGUFFile, PathLike, TensorInfo
from ..model.config import StableLMConfig


@dataclass(frozen=True)
class Mix:
    name: str  # as llama-quantize spells it: "Q4_K_M"
    file_type: LlamaFileType  # what the output's general.file_type says
    base: T  # the type every matrix starts from


MIXES: dict[str, Mix] = {
    m.name: m
    for m in [
        Mix("Q4_0", LlamaFileType.MOSTLY_Q4_0, T.Q4_0),
        Mix("Q4_1", LlamaFileType.MOSTLY_Q4_1, T.Q4_1),
        Mix("Q5_0", LlamaFileType.MOSTLY_Q5_0, T.Q5_0),
        Mix("Q5_1", LlamaFileType.MOSTLY_Q5_1, T.Q5_1),
        Mix("Q8_0", LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
        Mix("Q2_K", LlamaFileType.MOSTLY_Q2_K, T.Q2_K),
        Mix("Q3_K_S", LlamaFileType.MOSTLY_Q3_K_S, T.Q3_K),
        Mix("Q3_K_M", LlamaFileType.MOSTLY_Q3_K_M, T.Q3_K),
        Mix("Q3_K_L", LlamaFileType.MOSTLY_Q3_K_L, T.Q3_K),
        Mix("Q4_K_S", LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K),
        Mix("Q4_K_M", LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K),
        Mix("Q5_K_S", LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K),
        Mix("Q5_K_M", LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K),
        Mix("Q6_K", LlamaFileType.MOSTLY_Q6_K, T.Q6_K),
    ]
}


def get_mix(mix: str | Mix) -> Mix:
    if isinstance(mix, Mix):
        return mix
    try:
        return MIXES[mix.upper()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown mix {mix!r}; known: {', '.join(MIXES)}") from None


@dataclass(frozen=True)
class ModelShape:
    """What the rules read about the model besides the tensor itself."""

    n_layer: int
    n_gqa: int  # query heads per KV head (1 for StableLM-3B-4E1T; 4 for StableLM 2 12B)
    has_imatrix: bool = False  # quantized with an importance matrix (llama.cpp's qs.has_imatrix)

    @classmethod
    def of(cls, g: GGUFFile, has_imatrix: bool = False) -> ModelShape:
        config = StableLMConfig.from_gguf(g)
        return cls(n_layer=config.n_layer, n_gqa=config.n_head // config.n_head_kv, has_imatrix=has_imatrix)


@dataclass(frozen=True)
class TensorChoice:
    """One tensor's fate under a mix: the type it gets and the rule that chose it."""

    name: str
    shape: tuple[int, ...]  # numpy order (rows, cols)
    source_type: T
    qtype: T
    rule: str

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        block_size, type_size = GGML_QUANT_SIZES[self.qtype]
        return self.n_elements // block_size * type_size


def explain_mix(source: PathLike | GGUFFile, mix: str | Mix, has_imatrix: bool = False) -> list[TensorChoice]:
    """The type and the deciding rule for every tensor of a StableLM GGUF file (a path or a GGUFFile),
    quantized with an importance matrix or without."""
    g = source if isinstance(source, GGUFFile) else GGUFFile(os.fspath(source))
    mix, model = get_mix(mix), ModelShape.of(g, has_imatrix)
    return [choose_type(t, mix, model) for t in g.tensors]


def mix_size(choices: list[TensorChoice]) -> tuple[int, float]:
    """Total tensor bytes and bits per weight (over every tensor, norms included, as llama-quantize reports)."""
    n_bytes = sum(c.nbytes for c in choices)
    return n_bytes, 8 * n_bytes / sum(c.n_elements for c in choices)


# ---- the rules, in the order llama_tensor_get_type applies them -----------------------------------------
def choose_type(tensor: TensorInfo, mix: Mix, model: ModelShape) -> TensorChoice:
    name, shape = tensor.name, tensor.shape
    if not is_quantizable(name, shape):
        return TensorChoice(name, shape, tensor.qtype, tensor.qtype, f"kept as is: {why_kept(name, shape)}")
    qtype, rule = role_rule(name, shape[-1], mix, model)
    qtype, rule = fallback(qtype, rule, shape[-1])
    return TensorChoice(name, shape, tensor.qtype, qtype, rule)


def is_quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """llama.cpp quantizes only matrices whose name ends in 'weight', and never a norm (not even a 2-D one,
    like StableLM 2's per-head attn_q_norm)."""
    return len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name


def why_kept(name: str, shape: tuple[int, ...]) -> str:
    if len(shape) < 2:
        return "1-D (biases, norms)"
    return "norms are never quantized" if "_norm.weight" in name else "only weights are quantized"


def role_rule(name: str, n_cols: int, mix: Mix, model: ModelShape) -> tuple[T, str]:
    role, layer = tensor_role(name)
    if role == "output":  # (a model without one would use token_embd as the head; StableLM always has one)
        return output_rule(mix, n_cols)
    rule = {"attn_v": attn_v_rule, "ffn_down": ffn_down_rule, "attn_output": attn_output_rule}.get(role)
    decided = rule(mix, layer, model) if rule else None
    if decided is not None:
        qtype, why = decided
        return qtype, f"{role} in {mix.name}: {why}"
    return mix.base, f"the mix's base type {mix.base.name}"


def tensor_role(name: str) -> tuple[str, int | None]:
    """("attn_v", 3) for blk.3.attn_v.weight; ("output", None) for output.weight."""
    match = re.match(r"blk\.(\d+)\.(\w+?)\.", name)
    if match:
        return match.group(2), int(match.group(1))
    return name.split(".")[0], None


def use_more_bits(layer: int, n_layer: int) -> bool:
    """llama.cpp's choice of layers that get more bits: the first and last eighth, and every third layer
    between (the lambda in llama_tensor_get_type_impl, without a comment). Our reading, not llama.cpp's:
    the errors of the first layers travel through the whole model, and the last ones write straight into
    the logits."""
    return layer < n_layer // 8 or layer >= 7 * n_layer // 8 or (layer - n_layer // 8) % 3 == 2


def more_bits_reason(layer: int, n_layer: int) -> str:
    if layer < n_layer // 8:
        return f"use_more_bits: layer {layer} is in the first eighth (< {n_layer // 8})"
    if layer >= 7 * n_layer // 8:
        return f"use_more_bits: layer {layer} is in the last eighth (>= {7 * n_layer // 8})"
    return f"use_more_bits: layer {layer} is every third layer between ({layer} - {n_layer // 8}) % 3 == 2"


def output_rule(mix: Mix, n_cols: int) -> tuple[T, str]:
    """The output head gets Q6_K in every K-quant and legacy mix (Q8_0 stays Q8_0; Q8_0 too when its rows
    do not fit the base type's blocks). llama.cpp gives no reason; ours: every logit passes through it."""
    if n_cols % GGML_QUANT_SIZES[mix.base][0] != 0:
        return T.Q8_0, f"output head: rows of {n_cols} do not fit {mix.base.name} blocks, so Q8_0"
    if mix.base == T.Q8_0:
        return T.Q8_0, "output head: Q8_0 stays Q8_0 (already more bits than Q6_K)"
    return T.Q6_K, "output head: Q6_K (our reading: every logit depends on it)"


def attn_v_rule(mix: Mix, layer: int, model: ModelShape) -> tuple[T, str] | None:
    """attn_v's exceptions. llama.cpp's only stated reason is in its 70B branch: with 8 query heads per KV
    head, attn_v is 8x smaller than attn_q, so more bits cost almost nothing. Our reading for the rest:
    every head's output is a weighted sum of V's rows, and the softmax weights sum to 1, so V's rounding
    errors pass into the residual stream without being averaged away the way a single dot product's
    errors in q or k are. (llama.cpp counts attn_v tensors in layer order; in a StableLM file the count
    is the layer.)"""
    n = model.n_layer
    if mix.name == "Q2_K":
        if model.n_gqa >= 4:
            return T.Q4_K, f"Q4_K, since {model.n_gqa} query heads share each KV head (n_gqa >= 4)"
        return T.Q3_K, "Q3_K, one step above the base (n_gqa < 4)"
    if mix.name == "Q3_K_M":
        return (T.Q5_K, "Q5_K in the first two layers") if layer < 2 else (T.Q4_K, "Q4_K after layer 1")
    if mix.name == "Q3_K_L":
        return T.Q5_K, "Q5_K in every layer (two steps above the base)"
    if mix.name in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n):
        return T.Q6_K, f"Q6_K, {more_bits_reason(layer, n)}"
    if mix.name == "Q4_K_S" and layer < 4:  # four layers, whatever the depth (ffn_down's rule is n/8)
        return T.Q5_K, "Q5_K in the first four layers"
    return None


def ffn_down_rule(mix: Mix, layer: int, model: ModelShape) -> tuple[T, str] | None:
    """ffn_down's exceptions. Only Q4_K_M and Q5_K_M pick the same layers as for attn_v (use_more_bits).
    Q4_K_S takes the first eighth of the layers for ffn_down but the first four for attn_v (the same layers
    at 32 layers only; at 4 layers attn_v gets Q5_K in all four, ffn_down in none); Q3_K_M takes the first
    sixteenth for ffn_down but the first two for attn_v. Our reading of why ffn_down at all (llama.cpp gives
    none): it writes the MLP's result straight back into the residual stream, and its rows are the longest
    (n_ff), so each output sums the most rounding errors."""
    n = model.n_layer
    if mix.name == "Q2_K":
        return T.Q3_K, "Q3_K in every layer"
    if mix.name == "Q3_K_M":
        if layer < n // 16:
            return T.Q5_K, f"Q5_K in the first sixteenth of the layers (< {n // 16})"
        return T.Q4_K, "Q4_K elsewhere"
    if mix.name == "Q3_K_L":
        return T.Q5_K, "Q5_K in every layer (two steps above the base)"
    if mix.name in ("Q4_K_M", "Q5_K_M") and use_more_bits(layer, n):
        return T.Q6_K, f"Q6_K, {more_bits_reason(layer, n)}"
    if mix.name == "Q4_K_S" and layer < n // 8:
        return T.Q5_K, f"Q5_K in the first eighth of the layers (< {n // 8})"
    if mix.name in ("Q4_0", "Q5_0") and model.has_imatrix and layer < n // 8:
        # llama.cpp: "Guard against craziness in the first few ffn_down layers", only with an imatrix
        with_min = T.Q4_1 if mix.name == "Q4_0" else T.Q5_1
        return with_min, f"{with_min.name} in the first eighth of the layers (< {n // 8}), with an imatrix"
    return None


def attn_output_rule(mix: Mix, layer: int, model: ModelShape) -> tuple[T, str] | None:
    """The attention output projection: one step up in Q2_K and Q3_K_M, two (Q3_K -> Q5_K) in Q3_K_L."""
    step_up = {"Q2_K": T.Q3_K, "Q3_K_M": T.Q4_K, "Q3_K_L": T.Q5_K}
    if mix.name in step_up:
        return step_up[mix.name], f"{step_up[mix.name].name} in every layer"
    return None


#: A 256-weight type that does not fit a row falls back to a 32-weight type (tensor_type_fallback): never
#: fewer bits, often more (Q2_K's 2.625 and Q3_K's 3.4375 bits per weight both fall back to Q4_0's 4.5).
FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def fallback(qtype: T, rule: str, n_cols: int) -> tuple[T, str]:
    """A row is a whole number of blocks; when the chosen type's blocks do not fit, take a smaller one,
    and F16 when not even 32 divides the row."""
    block_size = GGML_QUANT_SIZES[qtype][0]
    if n_cols % block_size == 0:
        return qtype, rule
    smaller = FALLBACK.get(qtype, qtype)
    if n_cols % GGML_QUANT_SIZES[smaller][0] != 0:
        smaller = T.F16
    return smaller, (
        f"{rule}; rows of {n_cols} are not whole {block_size}-weight blocks, "
        f"so {qtype.name} falls back to {smaller.name}"
    )
