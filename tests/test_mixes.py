"""The mixes against outside truth: the per-tensor types llama.cpp's own llama_model_quantize chose
(tests/golden/mixes/, made by tools/make_golden_mixes.py), and the rules read off llama-quant.cpp by
hand for StableLM-3B-4E1T's 32 layers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as T

from stablelm_lab import GGUFError, GGUFFile
from stablelm_lab.container.gguf_file import TensorInfo
from stablelm_lab.mixes.rules import MIXES, ModelShape, choose_type, explain_mix, get_mix, mix_size, use_more_bits
from stablelm_lab.testing import write_gguf, write_golden_source

GOLDEN = json.loads((Path(__file__).parent / "golden" / "mixes" / "mixes.json").read_text())


def golden_types(model: str, mix: str) -> dict[str, str]:
    return {name: record.split()[0] for name, record in GOLDEN["models"][model]["mixes"][mix]["tensors"].items()}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mix_sources")
    return {model: GGUFFile(write_golden_source(tmp / f"{model}.gguf", model)) for model in GOLDEN["models"]}


def test_the_golden_files_cover_every_mix():
    assert GOLDEN["mixes"] == list(MIXES)


@pytest.mark.parametrize("mix", list(MIXES))
@pytest.mark.parametrize("model", list(GOLDEN["models"]))
def test_every_tensor_gets_the_type_llama_cpp_chose(sources, model, mix):
    ours = {c.name: c.qtype.name for c in explain_mix(sources[model], mix)}
    truth = golden_types(model, mix)
    wrong = {name: (ours.get(name), truth[name]) for name in truth if ours.get(name) != truth[name]}
    assert not wrong and set(ours) == set(truth), f"{model} {mix}: (ours, llama.cpp) {wrong}"


def test_sizes_and_bits_per_weight_follow_the_types(sources):
    choices = explain_mix(sources["stablelm16"], "Q4_K_M")
    golden = GOLDEN["models"]["stablelm16"]["mixes"]["Q4_K_M"]["tensors"]
    assert {c.name: c.nbytes for c in choices} == {n: int(r.split()[1]) for n, r in golden.items()}
    n_bytes, bpw = mix_size(choices)
    assert n_bytes == sum(int(r.split()[1]) for r in golden.values())
    assert 4.5 < bpw < 6.5625


# ---- StableLM-3B-4E1T by hand: 32 layers, no grouped KV heads, 2560-wide rows ---------------------------
def stablelm_3b_types(mix: str, role: str) -> dict[int, str]:
    model = ModelShape(n_layer=32, n_gqa=1)
    return {
        layer: choose_type(
            TensorInfo(f"blk.{layer}.{role}.weight", (2560, 2560), T.F16, 0, 0), get_mix(mix), model
        ).qtype.name
        for layer in range(32)
    }


def layers_with(types: dict[int, str], qtype: str) -> list[int]:
    return [layer for layer, t in types.items() if t == qtype]


# use_more_bits for 32 layers: i < 4, i >= 28, or (i - 4) % 3 == 2, worked out on paper
MORE_BITS_32 = [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]


def test_use_more_bits_for_32_layers():
    assert [i for i in range(32) if use_more_bits(i, 32)] == MORE_BITS_32


@pytest.mark.parametrize("mix", ["Q4_K_M", "Q5_K_M"])
@pytest.mark.parametrize("role", ["attn_v", "ffn_down"])
def test_k_m_mixes_give_q6_k_where_use_more_bits(mix, role):
    types = stablelm_3b_types(mix, role)
    assert layers_with(types, "Q6_K") == MORE_BITS_32
    assert set(types.values()) == {"Q6_K", get_mix(mix).base.name}


def test_q3_k_m_per_role():
    assert layers_with(stablelm_3b_types("Q3_K_M", "attn_v"), "Q5_K") == [0, 1]  # then Q4_K
    assert layers_with(stablelm_3b_types("Q3_K_M", "ffn_down"), "Q5_K") == [0, 1]  # n/16 = 2
    assert set(stablelm_3b_types("Q3_K_M", "attn_output").values()) == {"Q4_K"}
    assert set(stablelm_3b_types("Q3_K_M", "attn_q").values()) == {"Q3_K"}


def test_q4_k_s_per_role():
    assert layers_with(stablelm_3b_types("Q4_K_S", "attn_v"), "Q5_K") == [0, 1, 2, 3]  # i < 4
    assert layers_with(stablelm_3b_types("Q4_K_S", "ffn_down"), "Q5_K") == [0, 1, 2, 3]  # i < n/8


@pytest.mark.parametrize(
    "mix, attn_v, ffn_down, attn_output",
    [
        ("Q2_K", "Q3_K", "Q3_K", "Q3_K"),
        ("Q3_K_S", "Q3_K", "Q3_K", "Q3_K"),
        ("Q3_K_L", "Q5_K", "Q5_K", "Q5_K"),
        ("Q5_K_S", "Q5_K", "Q5_K", "Q5_K"),
        ("Q6_K", "Q6_K", "Q6_K", "Q6_K"),
        ("Q4_0", "Q4_0", "Q4_0", "Q4_0"),
    ],
)
def test_mixes_that_treat_every_layer_alike(mix, attn_v, ffn_down, attn_output):
    for role, qtype in [("attn_v", attn_v), ("ffn_down", ffn_down), ("attn_output", attn_output)]:
        assert set(stablelm_3b_types(mix, role).values()) == {qtype}, role


@pytest.mark.parametrize("mix, qtype", [("Q4_0", "Q6_K"), ("Q2_K", "Q6_K"), ("Q6_K", "Q6_K"), ("Q8_0", "Q8_0")])
def test_output_head(mix, qtype):
    output = TensorInfo("output.weight", (50304, 2560), T.F16, 0, 0)
    choice = choose_type(output, get_mix(mix), ModelShape(32, 1))
    assert choice.qtype.name == qtype and "output head" in choice.rule


def test_norms_and_biases_keep_their_type_token_embd_gets_the_base():
    model, mix = ModelShape(32, 1), get_mix("Q4_K_M")
    for name, shape in [
        ("blk.0.attn_norm.weight", (2560,)),
        ("blk.0.attn_q.bias", (2560,)),
        ("blk.0.attn_q_norm.weight", (32, 80)),
    ]:  # StableLM 2's per-head norm is 2-D
        choice = choose_type(TensorInfo(name, shape, T.F32, 0, 0), mix, model)
        assert choice.qtype == T.F32 and "kept" in choice.rule, name
    embd = choose_type(TensorInfo("token_embd.weight", (50304, 2560), T.F16, 0, 0), mix, model)
    assert embd.qtype == T.Q4_K and "base" in embd.rule


def test_grouped_kv_heads_give_q2_k_attn_v_q4_k():
    attn_v = TensorInfo("blk.3.attn_v.weight", (1280, 5120), T.F16, 0, 0)  # StableLM 2 12B: 32 heads, 8 KV
    assert choose_type(attn_v, get_mix("Q2_K"), ModelShape(40, 4)).qtype == T.Q4_K
    assert choose_type(attn_v, get_mix("Q2_K"), ModelShape(40, 2)).qtype == T.Q3_K


@pytest.mark.parametrize(
    "chosen, n_cols, fallback",
    [
        ("Q2_K", 288, "Q4_0"),
        ("Q3_K", 288, "Q4_0"),
        ("Q4_K", 288, "Q5_0"),
        ("Q5_K", 288, "Q5_1"),
        ("Q6_K", 288, "Q8_0"),
        ("Q4_K", 100, "F16"),
        ("Q4_K", 512, "Q4_K"),
    ],
)
def test_rows_that_do_not_fit_fall_back(chosen, n_cols, fallback):
    mix = next(m for m in MIXES.values() if m.base.name == chosen)
    choice = choose_type(TensorInfo("blk.5.attn_q.weight", (256, n_cols), T.F32, 0, 0), mix, ModelShape(32, 1))
    assert choice.qtype.name == fallback
    assert ("falls back" in choice.rule) == (fallback != chosen)


def test_every_rule_is_named(sources):
    rules = {c.rule for mix in MIXES for c in explain_mix(sources["stablelm16"], mix)}
    assert any("use_more_bits" in r and "first eighth" in r for r in rules)
    assert any("every third layer" in r for r in rules)
    assert any("first sixteenth" in r for r in rules)
    assert all(r for r in rules)


def test_bad_mix_and_bad_model(tmp_path):
    with pytest.raises(ValueError, match="unknown mix 'Q4_K_X'.*Q4_K_M"):
        get_mix("Q4_K_X")
    llama = write_gguf(tmp_path / "llama.gguf", architecture="llama")
    with pytest.raises(GGUFError, match="not a StableLM"):
        explain_mix(llama, "Q4_K_M")
