"""quantize_gguf against llama-quantize itself: for two small StableLM files and the mixes in CASES, our
output file is byte for byte the file llama.cpp's llama_model_quantize wrote (its sha256 is in
tests/golden/mixes/mixes.json, made by tools/make_golden_mixes.py; the golden file holds all 28).

The FMA caveat. The golden files come from llama.cpp built without FMA contraction, where every float
operation rounds on its own, as numpy's do; against them we demand identical bytes. A native x86 or
any ARM build fuses a*b+c into one rounding, so in the scale searches an FMA build picks a different
but equally good block now and then. tools/make_golden_mixes.py --fma-bound measured it on the
stablelm16 matrices (recorded in mixes.json, and checked below): at most 1.5% of the blocks differ
(Q6_K; Q4_K 1.2%, the others below 0.2%), a differing block's squared error moves by at most 8%, and a
whole tensor's squared error by at most 1e-5 of itself. So against an FMA build's file, expect the same
types, sizes and metadata, and blocks that differ within that bound.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from golden_files import fail_unless_same_file, sha256

from stablelm_lab import GGUFError, GGUFFile, quants
from stablelm_lab.mixes.quantize_file import llama_order, quantize_gguf
from stablelm_lab.mixes.rules import MIXES
from stablelm_lab.testing import write_golden_source

GOLDEN_DIR = Path(__file__).parent / "golden" / "mixes"
GOLDEN = json.loads((GOLDEN_DIR / "mixes.json").read_text())
#: Every mix of stablelm16; of gqa12 (whose types test_mixes.py checks in every mix) the ones whose bytes
#: take another path: the F32 source, and each fallback type (Q4_0, Q5_0, Q5_1, Q8_0) of its 288-wide rows.
CASES = [("stablelm16", mix) for mix in MIXES] + [
    ("gqa12", mix) for mix in ["Q4_0", "Q2_K", "Q4_K_S", "Q4_K_M", "Q5_K_S"]
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quantize_sources")
    return {model: write_golden_source(tmp / f"{model}.gguf", model) for model in GOLDEN["models"]}


@pytest.fixture(scope="module")
def quantized(sources, tmp_path_factory):
    """Every model in every mix, quantized once by quantize_gguf: (model, mix) -> (path, choices)."""
    tmp = tmp_path_factory.mktemp("quantized")
    out = {}
    for model, mix in CASES:
        path = tmp / f"{model}.{mix}.gguf"
        out[model, mix] = path, quantize_gguf(sources[model], path, mix, progress=False)
    return out


@pytest.fixture(scope="module")
def outputs(quantized):
    return {key: path for key, (path, _) in quantized.items()}


@pytest.mark.parametrize("model", list(GOLDEN["models"]))
def test_sources_are_the_ones_llama_cpp_quantized(sources, model):
    assert sha256(np.fromfile(sources[model], np.uint8)) == GOLDEN["models"][model]["source_sha256"], (
        "the rebuilt source differs from the golden one: numpy's random stream or gguf-py's writer changed"
    )


@pytest.mark.parametrize("model, mix", CASES)
def test_output_is_llama_quantizes_file_byte_for_byte(outputs, model, mix):
    path, golden = outputs[model, mix], GOLDEN["models"][model]["mixes"][mix]
    fail_unless_same_file(path, golden, f"{model} {mix}")


def test_whole_tensors_block_by_block(outputs):
    """The tensors kept whole in the golden files: which blocks differ, if any."""
    with np.load(GOLDEN_DIR / "tensors.npz") as npz:
        for key in npz.files:
            model, mix, name = key.split("/")
            g = GGUFFile(outputs[model, mix])
            ours, truth = np.asarray(g.raw(name)).reshape(-1), npz[key]
            type_size = quants.get(g.tensor_info[name].qtype).type_size
            bad = np.flatnonzero((ours.reshape(-1, type_size) != truth.reshape(-1, type_size)).any(axis=1))
            assert bad.size == 0, f"{key}: {bad.size} blocks differ, first at block {bad[0]}"


def test_metadata_copied_then_file_type_and_quantization_version(sources, outputs):
    src = GGUFFile(sources["stablelm16"])
    out = GGUFFile(outputs["stablelm16", "Q4_K_M"])
    keys = [k for k in src.metadata if k != "general.file_type"]
    assert list(out.metadata) == keys + ["general.quantization_version", "general.file_type"]
    assert all(out.metadata[k] == src.metadata[k] for k in keys)
    assert out.metadata["general.file_type"] == 15 and out.metadata["general.quantization_version"] == 2


def test_tensors_in_llama_cpp_order(outputs):
    names = [t.name for t in GGUFFile(outputs["stablelm16", "Q8_0"]).tensors]
    assert names[:4] == ["output.weight", "output_norm.bias", "output_norm.weight", "token_embd.weight"]
    assert names == sorted(names, key=llama_order)
    assert names.index("blk.2.attn_k.weight") < names.index("blk.10.attn_k.weight")


def test_returns_what_each_tensor_got_and_why(quantized):
    path, choices = quantized["stablelm16", "Q4_K_M"]
    written = GGUFFile(path)
    assert [(c.name, c.qtype) for c in choices] == [(t.name, t.qtype) for t in written.tensors]
    assert next(c for c in choices if c.name == "blk.0.attn_v.weight").rule.startswith("attn_v in Q4_K_M")


def test_requantizing_is_refused_unless_allowed(outputs, tmp_path):
    q8 = outputs["stablelm16", "Q8_0"]
    with pytest.raises(GGUFError, match="already Q8_0: requantizing"):
        quantize_gguf(q8, tmp_path / "q4.gguf", "Q4_K_M", progress=False)
    assert not (tmp_path / "q4.gguf").exists() and not list(tmp_path.iterdir())
    choices = quantize_gguf(q8, tmp_path / "q4.gguf", "Q4_0", allow_requantize=True, progress=False)
    assert {c.qtype for c in choices} == {T.Q4_0, T.Q6_K, T.F32}
    GGUFFile(tmp_path / "q4.gguf").dequantize("blk.3.ffn_up.weight")


def test_refuses_to_overwrite_its_input_or_read_a_bad_file(sources, tmp_path):
    with pytest.raises(ValueError, match="overwrite the input"):
        quantize_gguf(sources["gqa12"], sources["gqa12"], "Q4_0")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML not a gguf")
    with pytest.raises(GGUFError):
        quantize_gguf(bad, tmp_path / "out.gguf", "Q4_0")
    with pytest.raises(ValueError, match="unknown mix"):
        quantize_gguf(sources["gqa12"], tmp_path / "out.gguf", "Q3_K_XL")
    assert not (tmp_path / "out.gguf").exists()


def test_progress_bar(sources, tmp_path, capsys):
    quantize_gguf(sources["gqa12"], tmp_path / "q.gguf", "Q8_0", progress=True)
    assert "quantizing to Q8_0" in capsys.readouterr().err


def test_fma_bound_as_measured():
    """The numbers the module docstring states, as tools/make_golden_mixes.py --fma-bound measured them."""
    bound = GOLDEN["fma_bound"]
    assert set(bound) == {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
    for qtype, m in bound.items():
        assert m["blocks_differing"] / m["blocks"] < 0.015, qtype
        assert m["max_block_squared_error_change"] < 0.08, qtype
        assert abs(m["squared_error_ratio"] - 1) < 1e-5, qtype
