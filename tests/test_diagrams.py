"""The teaching diagrams and the facts they draw: bit maps against gguf-py's decoders (flip a bit, see which
weights move), the 3B tensor table against transformers' StableLM, the block diagram against the model's
recorded activations, and every figure readable (text >= 10 px, axis titles)."""

from __future__ import annotations

import math

import gguf
import numpy as np
import pytest
import torch

from stablelm_lab import StableLM, default_gguf, quants
from stablelm_lab.lab import diagrams
from stablelm_lab.mixes.rules import ModelShape, choose_type, get_mix, mix_size
from stablelm_lab.model.config import STABLELM_3B_4E1T, tensor_table
from stablelm_lab.quants.anatomy import bit_map

BIT_MAPPED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
#: bits of each weight's level, from ggml-common.h's block layouts
LEVEL_BITS = {
    "Q4_0": 4,
    "Q4_1": 4,
    "Q5_0": 5,
    "Q5_1": 5,
    "Q8_0": 8,
    "Q2_K": 2,
    "Q3_K": 3,
    "Q4_K": 4,
    "Q5_K": 5,
    "Q6_K": 6,
}


def random_block(fmt, seed: int) -> np.ndarray:
    """Random bytes with every fp16 field set to 1.0, so that every other bit changes some weight."""
    raw = np.random.default_rng(seed).integers(0, 256, fmt.type_size, dtype=np.uint8)
    for name in ("d", "dmin", "m"):
        if name in fmt.block_dtype.names:
            offset = fmt.block_dtype.fields[name][1]
            raw[offset : offset + 2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    return raw


def changed_weights(fmt, raw, byte, bit) -> set[int]:
    flipped = raw.copy()
    flipped[byte] ^= np.uint8(1 << bit)
    before = gguf.quants.dequantize(raw, fmt.qtype)
    after = gguf.quants.dequantize(flipped, fmt.qtype)
    return set(np.flatnonzero(before != after).tolist())


@pytest.mark.parametrize("name", BIT_MAPPED)
def test_bit_map_says_which_weights_a_bit_moves(name):
    """gguf-py decodes; a level bit may move only its weight, a scale or min bit only its sub-block. (A
    bit may move nothing, when the random sub-block scale is 0; most bits must move something.)"""
    fmt = quants.get(name)
    m = bit_map(fmt)
    moved_any = checked = 0
    for seed in range(2):
        raw = random_block(fmt, seed)
        for byte in range(fmt.type_size):
            for bit in range(8):
                role, group, weight = m.role[byte, bit], m.group[byte, bit], m.weight[byte, bit]
                if role in ("d", "dmin", "m"):
                    continue
                moved = changed_weights(fmt, raw, byte, bit)
                where = f"{name} byte {byte} bit {bit} ({role}, group {group}, weight {weight})"
                if role in ("level", "high"):
                    assert moved <= {weight}, where
                else:
                    assert moved <= set(range(group * m.group_size, (group + 1) * m.group_size)), where
                checked += 1
                moved_any += bool(moved)
    assert moved_any >= 0.8 * checked


@pytest.mark.parametrize("name", BIT_MAPPED)
def test_bit_map_accounts_for_every_bit(name):
    fmt = quants.get(name)
    m = bit_map(fmt)
    assert (m.role != "").all(), f"{name}: bits with no role"
    level_bits = np.bincount(m.weight[m.weight >= 0], minlength=fmt.block_size)
    assert (level_bits == LEVEL_BITS[name]).all()
    fp16_fields = sum(2 for f in ("d", "dmin", "m") if f in fmt.block_dtype.names)
    assert (m.role == "d").sum() + (m.role == "dmin").sum() + (m.role == "m").sum() == 8 * fp16_fields


def test_bit_map_refuses_a_format_without_one():
    with pytest.raises(ValueError, match="no bit map for IQ4_NL"):
        bit_map(quants.get("IQ4_NL"))


def test_3b_config_is_transformers_stablelm_default():
    """transformers' StableLmConfig defaults are stabilityai/stablelm-3b-4e1t's config."""
    from transformers import StableLmConfig

    hf = StableLmConfig()
    c = STABLELM_3B_4E1T
    assert (c.n_vocab, c.n_embd, c.n_layer, c.n_head, c.n_head_kv, c.n_ff, c.n_ctx) == (
        hf.vocab_size,
        hf.hidden_size,
        hf.num_hidden_layers,
        hf.num_attention_heads,
        hf.num_key_value_heads,
        hf.intermediate_size,
        hf.max_position_embeddings,
    )
    rope = hf.rope_parameters
    assert c.n_rot == int(rope["partial_rotary_factor"] * c.head_dim) and c.rope_base == rope["rope_theta"]
    assert c.norm_eps == hf.layer_norm_eps and not (hf.use_parallel_residual or hf.use_qkv_bias or hf.qk_layernorm)
    assert (c.parallel_residual, c.qkv_bias, c.qk_norm) == (False, False, False)


def test_3b_tensor_table_matches_transformers_parameters():
    from transformers import StableLmConfig, StableLmForCausalLM

    with torch.device("meta"):
        hf = StableLmForCausalLM(StableLmConfig())
    hf_shapes = sorted(tuple(p.shape) for p in hf.parameters())
    ours = tensor_table(STABLELM_3B_4E1T)
    assert sorted(t.shape for t in ours) == hf_shapes
    assert sum(t.n_elements for t in ours) == sum(p.numel() for p in hf.parameters()) == 2_795_443_200


def test_3b_q4_k_m_size_by_hand():
    """llama-quant.cpp at 32 layers: use_more_bits picks layers 0-3, 28-31 and 6, 9, ..., 27 (16 layers);
    attn_v and ffn_down there are Q6_K, the output Q6_K, every other matrix Q4_K, norms F32."""
    q4k, q6k = 144 / 256, 210 / 256
    d, ff, vocab = 2560, 6912, 50304
    layers = [i for i in range(32) if i < 4 or i >= 28 or (i - 4) % 3 == 2]
    assert len(layers) == 16
    by_hand = (
        vocab * d * q4k
        + vocab * d * q6k
        + 32 * (3 * d * d + 2 * d * ff) * q4k
        + 16 * (d * d + d * ff) * (q4k + q6k)
        + (32 * 4 + 2) * d * 4
    )
    choices = [choose_type(t, get_mix("Q4_K_M"), ModelShape(32, 1)) for t in tensor_table(STABLELM_3B_4E1T)]
    assert mix_size(choices)[0] == by_hand
    assert round(mix_size(choices)[1], 1) == 4.9


def test_tensor_table_follows_the_config_switches():
    import dataclasses

    c = dataclasses.replace(STABLELM_3B_4E1T, n_layer=2, parallel_residual=True, qkv_bias=True, qk_norm=True)
    names = {t.name for t in tensor_table(c)}
    assert "blk.1.ffn_norm.weight" not in names and "blk.1.attn_v.bias" in names
    norm = next(t for t in tensor_table(c) if t.name == "blk.0.attn_q_norm.weight")
    assert norm.shape == (32, 80) and norm.qtype == gguf.GGMLQuantizationType.F32


# ---- figures -------------------------------------------------------------------------------------------------
def font_sizes(fig) -> list[float]:
    sizes = [fig.layout.font.size]
    sizes += [a.font.size for a in fig.layout.annotations if a.font.size is not None]
    for trace in fig.data:
        textfont = getattr(trace, "textfont", None)
        if textfont is not None and textfont.size is not None:
            sizes.append(textfont.size)
    return sizes


def assert_readable(fig):
    assert min(font_sizes(fig)) >= 10
    assert fig.layout.title.text


def figures():
    fmt = quants.get("Q4_K")
    yield "layout", diagrams.file_layout_figure([("header", 0, 24), ("key/values", 24, 900), ("data", 900, 5000)], 5000)
    yield "bit map", diagrams.bit_map_figure(fmt, fmt.quantize(np.linspace(-1, 1, 256, dtype=np.float32)))
    yield "dataflow", diagrams.block_dataflow_figure(STABLELM_3B_4E1T)
    yield "grid", diagrams.mix_grid_figure({"Q4_K_M": [["Q4_K", "Q6_K"], ["Q4_K", "Q4_K"]]}, ["attn_v", "attn_q"])
    yield "codebook", diagrams.codebook_figure({"Q4_0": np.arange(-8, 8), "ternary": [-1, 0, 1]})
    yield "steps", diagrams.steps_figure(["a", "b"], [21.3, 22.9], [4.5, 4.5], "steps")
    yield "budget", diagrams.bit_budget_figure({"x": {"output": 1.0, "other": 3.9}}, "budget")


@pytest.mark.parametrize("name,fig", list(figures()), ids=[n for n, _ in figures()])
def test_figures_are_readable(name, fig):
    assert_readable(fig)


def test_figures_with_axes_have_axis_titles():
    for name, fig in figures():
        if name in ("dataflow", "layout", "bit map", "grid"):
            continue
        assert fig.layout.xaxis.title.text and fig.layout.yaxis.title.text, name


def test_layout_figure_draws_every_section_to_scale():
    sections = [("header", 0, 24), ("key/values", 24, 900), ("padding", 900, 928), ("data", 928, 5000)]
    fig = diagrams.file_layout_figure(sections, 5000)
    to_scale = [t for t in fig.data if t.name]
    assert [(t.name, t.base[0], t.x[0]) for t in to_scale] == [(n, s, e - s) for n, s, e in sections]


def test_bit_map_figure_colours_each_sub_block():
    fmt = quants.get("Q4_K")
    fig = diagrams.bit_map_figure(fmt)
    z = np.array(fig.data[0].z, dtype=float)
    m = bit_map(fmt)
    # row r, column 8c + (7 - bit) is byte 4r + c
    assert z[0, 7 - 0] == m.group[0, 0] + 1 and z[1, 8 * 0 + 7] == m.group[4, 0] + 1
    assert sorted(set(z.ravel().tolist())) == list(range(9))  # shared + 8 sub-blocks


def test_dataflow_boxes_cover_every_recorded_activation():
    model = StableLM.from_gguf(default_gguf())
    fig = diagrams.block_dataflow_figure(model.config)
    labels = " ".join(a.text for a in fig.layout.annotations)
    recorded = {n.split(".", 2)[2] for n in model.activation_names() if n.startswith("blk.0.")}
    missing = [n for n in recorded if n not in labels]
    assert not missing
    assert f"rope on {model.config.n_rot} of {model.config.head_dim} dims" in labels


def test_dataflow_of_a_parallel_block_has_no_ffn_norm():
    import dataclasses

    fig = diagrams.block_dataflow_figure(dataclasses.replace(STABLELM_3B_4E1T, parallel_residual=True))
    labels = " ".join(a.text for a in fig.layout.annotations)
    assert "ffn_norm" not in labels and "parallel" in fig.layout.title.text


def test_mix_grid_colours_by_type():
    fig = diagrams.mix_grid_figure({"m": [["Q4_K", "Q6_K"]]}, ["attn_v"])
    z = fig.data[0].z
    assert z[0][0] == diagrams.TYPE_ORDER.index("Q4_K") and z[0][1] == diagrams.TYPE_ORDER.index("Q6_K")
    assert {t.name for t in fig.data[1:]} == {"Q4_K", "Q6_K"}


def test_bit_budget_segments_add_up():
    fig = diagrams.bit_budget_figure({"a": {"x": 1.25, "y": 3.5}}, "t")
    assert math.isclose(sum(t.x[0] for t in fig.data), 4.75)
