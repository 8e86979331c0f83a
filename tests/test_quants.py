"""Every quant format against outside truth: gguf-py, and llama.cpp's own C code (golden files).

The golden files in tests/golden/ were written by tools/make_golden_quants.py with llama-cpp-python
(built without FMA contraction); these tests only read them.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from stablelm_lab import quants

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
            "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"]
ALL = list(quants.FORMATS.values())  # test_registry_holds_every_format checks that none is missing
BLOCK_FORMATS = [f for f in ALL if f.block_size > 1]
RANDOM_BLOCKS = 10_000


@pytest.fixture(scope="module")
def golden_rows():
    with np.load(GOLDEN / "quant_rows.npz") as npz:
        return dict(npz)


def ids(formats):
    return [f.name for f in formats]


def assert_same_bits(ours: np.ndarray, truth: np.ndarray, block_size: int, what: str) -> None:
    """Identical float32 bits, except that any NaN matches any NaN. Reports the blocks that differ."""
    assert ours.dtype == np.float32 and truth.dtype == np.float32, what
    assert ours.shape == truth.shape, f"{what}: shape {ours.shape} != {truth.shape}"
    same = (ours.view(np.uint32) == truth.view(np.uint32)) | (np.isnan(ours) & np.isnan(truth))
    bad_blocks = np.flatnonzero(~same.reshape(-1, block_size).all(axis=1))
    assert bad_blocks.size == 0, (f"{what}: {bad_blocks.size} of {same.size // block_size} blocks differ, "
                                  f"first at block {bad_blocks[0]}")


def assert_same_bytes(ours: np.ndarray, truth: np.ndarray, type_size: int, what: str) -> None:
    assert ours.dtype == np.uint8 and ours.shape == truth.shape, f"{what}: {ours.shape} vs {truth.shape}"
    bad_blocks = np.flatnonzero((ours.reshape(-1, type_size) != truth.reshape(-1, type_size)).any(axis=1))
    assert bad_blocks.size == 0, (f"{what}: {bad_blocks.size} of {ours.size // type_size} blocks differ, "
                                  f"first at block {bad_blocks[0]}")


def random_bytes(fmt, n_blocks: int, seed: int) -> np.ndarray:
    """Random blocks, as rows of 8 blocks: every bit pattern of every field, NaN/inf/subnormal scales too."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n_blocks // 8, 8 * fmt.type_size), dtype=np.uint8)


def gguf_py_dequantize(raw: np.ndarray, fmt) -> np.ndarray:
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(raw, fmt.qtype).astype(np.float32, copy=False)


def gguf_py_quantizes(fmt) -> bool:
    try:
        gguf.quants.quantize(np.zeros((1, fmt.block_size), np.float32), fmt.qtype)
    except NotImplementedError:
        return False
    return True


# ---- the registry ----------------------------------------------------------------------------------
def test_registry_holds_every_format_in_type_id_order():
    assert quants.names() == sorted(EXPECTED, key=lambda name: T[name].value)
    assert all(isinstance(key, T) for key in quants.FORMATS)


@pytest.mark.parametrize("fmt", ALL, ids=ids(ALL))
def test_sizes_match_ggml(fmt):
    assert (fmt.block_size, fmt.type_size) == GGML_QUANT_SIZES[fmt.qtype]
    assert fmt.block_dtype.itemsize == fmt.type_size
    assert fmt.block_dtype.names, "one named field per C struct field"


@pytest.mark.parametrize("fmt", ALL, ids=ids(ALL))
def test_every_format_documents_its_byte_map(fmt):
    doc = type(fmt).__doc__ or ""
    assert str(fmt.type_size) in doc and all(field in doc for field in fmt.block_dtype.names)


def test_get_accepts_names_types_and_ids():
    assert quants.get("Q4_K") is quants.get("q4_k") is quants.get(T.Q4_K) is quants.get(12)


def test_sizes_quoted_by_the_workbook_are_ggml_static_asserts():
    # ggml-common.h: sizeof(block_q2_K) == 2*2 + 256/16 + 256/4, etc. (hand-derived)
    assert quants.get("Q2_K").type_size == 84 and quants.get("Q2_K").bits_per_weight == 2.625
    assert quants.get("Q3_K").type_size == 2 + 256 // 4 + 256 // 8 + 12 == 110
    assert quants.get("Q6_K").type_size == 2 + 256 // 16 + 3 * 256 // 4 == 210
    assert quants.get("Q4_0").type_size == 2 + 32 // 2 == 18


# ---- decoding: three decoders, two outside truths ---------------------------------------------------
@pytest.mark.parametrize("fmt", ALL, ids=ids(ALL))
def test_numpy_and_torch_decoders_equal_gguf_py_on_random_bytes(fmt):
    raw = random_bytes(fmt, RANDOM_BLOCKS, seed=fmt.qtype.value)
    truth = gguf_py_dequantize(raw, fmt)
    assert_same_bits(fmt.dequantize(raw), truth, fmt.block_size, f"{fmt.name} numpy")
    ours_torch = fmt.dequantize_torch(torch.from_numpy(raw))
    assert ours_torch.dtype == torch.float32
    assert_same_bits(ours_torch.numpy(), truth, fmt.block_size, f"{fmt.name} torch")


@pytest.mark.parametrize("fmt", ALL, ids=ids(ALL))
def test_reference_decoder_equals_gguf_py_on_random_bytes(fmt):
    raw = random_bytes(fmt, RANDOM_BLOCKS, seed=fmt.qtype.value)
    assert_same_bits(fmt.dequantize_reference(raw), gguf_py_dequantize(raw, fmt), fmt.block_size,
                     f"{fmt.name} reference")


@pytest.mark.parametrize("fmt", BLOCK_FORMATS, ids=ids(BLOCK_FORMATS))
def test_decoders_equal_llama_cpp(fmt, golden_rows):
    """llama.cpp's dequantize_row_* on random bytes and on blocks its quantizer wrote."""
    cases = [(golden_rows[f"random_bytes/{fmt.name}"], golden_rows[f"random_decoded/{fmt.name}"])]
    cases += [(golden_rows[key], golden_rows[key.replace("quantized/", "dequantized/", 1)])
              for key in golden_rows if key.startswith(f"quantized/{fmt.name}/")]
    for raw, truth in cases:
        assert_same_bits(fmt.dequantize(raw), truth, fmt.block_size, f"{fmt.name} numpy")
        assert_same_bits(fmt.dequantize_torch(torch.from_numpy(raw)).numpy(), truth, fmt.block_size,
                         f"{fmt.name} torch")
        assert_same_bits(fmt.dequantize_reference(raw), truth, fmt.block_size, f"{fmt.name} reference")


@pytest.mark.parametrize("fmt", ALL, ids=ids(ALL))
def test_decoders_keep_leading_dimensions(fmt):
    raw = random_bytes(fmt, 48, seed=1).reshape(2, 3, -1)
    expected_shape = (2, 3, raw.shape[-1] // fmt.type_size * fmt.block_size)
    assert fmt.dequantize(raw).shape == expected_shape
    assert fmt.dequantize_reference(raw).shape == expected_shape
    assert tuple(fmt.dequantize_torch(torch.from_numpy(raw)).shape) == expected_shape


# ---- encoding -----------------------------------------------------------------------------------------
QUANTIZERS = [f for f in BLOCK_FORMATS if f.can_quantize]


def test_every_type_with_a_ggml_reference_quantizer_can_quantize():
    assert {f.name for f in QUANTIZERS} == {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K",
                                            "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "TQ1_0", "TQ2_0", "MXFP4"}


@pytest.mark.parametrize("fmt", QUANTIZERS, ids=ids(QUANTIZERS))
def test_quantize_equals_llama_cpp_on_every_row_character(fmt, golden_rows):
    characters = [key.split("/", 1)[1] for key in golden_rows if key.startswith("rows/")]
    assert len(characters) >= 8
    for character in characters:
        ours = fmt.quantize(golden_rows[f"rows/{character}"])
        assert_same_bytes(ours, golden_rows[f"quantized/{fmt.name}/{character}"], fmt.type_size,
                          f"{fmt.name} on {character} rows")


GGUF_PY_QUANTIZERS = [f for f in ALL if f.can_quantize and gguf_py_quantizes(f)]


@pytest.mark.parametrize("fmt", GGUF_PY_QUANTIZERS, ids=ids(GGUF_PY_QUANTIZERS))
def test_quantize_equals_gguf_py(fmt, golden_rows):
    rng = np.random.default_rng(7)
    rows = [rng.standard_normal((64, 256)).astype(np.float32) * 0.02]
    rows += [golden_rows[key][:, :256] for key in golden_rows if key.startswith("rows/")]
    for x in rows:
        with np.errstate(all="ignore"):
            truth = gguf.quants.quantize(x, fmt.qtype)
        truth = truth.view(np.uint8).reshape(x.shape[0], -1)
        assert_same_bytes(fmt.quantize(x), truth, fmt.type_size, f"{fmt.name} vs gguf-py")


def tensor_pairs(qtype_name: str):
    """(name, F32 source, llama.cpp's quantized tensor) for every matrix of the golden tiny model."""
    source = {t.name: t for t in gguf.GGUFReader(GOLDEN / "tiny_stablelm.F32.gguf").tensors}
    quantized = gguf.GGUFReader(GOLDEN / f"tiny_stablelm.{qtype_name}.gguf").tensors
    return [(t.name, np.array(source[t.name].data), t) for t in quantized if t.tensor_type == T[qtype_name]]


FILE_QUANTIZERS = [f for f in QUANTIZERS if (GOLDEN / f"tiny_stablelm.{f.name}.gguf").exists()]


@pytest.mark.parametrize("fmt", FILE_QUANTIZERS, ids=ids(FILE_QUANTIZERS))
def test_quantize_equals_llama_model_quantize(fmt):
    """Blocks exactly as llama-quantize writes them into a model file (the tiny golden StableLM)."""
    pairs = tensor_pairs(fmt.name)
    assert len(pairs) == 9, "every matrix of the tiny model is quantized"
    for name, weights, tensor in pairs:
        raw = np.array(tensor.data)
        assert_same_bytes(fmt.quantize(weights), raw, fmt.type_size, f"{fmt.name} {name}")
        assert_same_bits(fmt.dequantize(raw), gguf_py_dequantize(raw, fmt), fmt.block_size,
                         f"{fmt.name} {name} decoded")


def test_golden_files_cover_every_quantizer():
    assert {f.name for f in FILE_QUANTIZERS} == {f.name for f in QUANTIZERS} - {"MXFP4"}


@pytest.mark.parametrize("fmt", ["F32", "F16", "BF16"])
def test_float_types_round_trip_like_ggml(fmt):
    fmt = quants.get(fmt)
    x = np.array([[0.0, -0.0, 1.0, -2.5, 1e-8, 65504.0, 1e5, np.inf, -np.inf, 3.1415927, 1 / 3, 7e-45]],
                 dtype=np.float32)
    raw = fmt.quantize(x)
    with np.errstate(all="ignore"):
        truth = gguf.quants.quantize(x, fmt.qtype)
    assert np.array_equal(raw, truth.view(np.uint8).reshape(1, -1))
    assert_same_bits(fmt.dequantize(raw), gguf_py_dequantize(raw, fmt), 1, fmt.name)


def test_bf16_quiets_nan_like_ggml():
    signalling_nan = np.array([[0x7F800001]], dtype=np.uint32).view(np.float32)
    bits = quants.get("BF16").quantize(signalling_nan).view("<u2")
    assert bits[0, 0] == (0x7F800001 >> 16) | 64          # ggml_compute_fp32_to_bf16, by hand


# ---- bad input ----------------------------------------------------------------------------------------
def test_wrong_length_buffer_says_what_was_expected():
    with pytest.raises(ValueError, match=r"Q4_K rows must be a whole number of 144-byte blocks"):
        quants.get("Q4_K").dequantize(np.zeros(100, np.uint8))
    with pytest.raises(ValueError, match=r"144-byte"):
        quants.get("Q4_K").dequantize_torch(torch.zeros(100, dtype=torch.uint8))


def test_non_byte_input_is_refused():
    with pytest.raises(ValueError, match="uint8"):
        quants.get("Q8_0").dequantize(np.zeros(34, np.float32))


def test_unknown_type_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown ggml type 'Q7_K'.*Q4_K"):
        quants.get("Q7_K")
    with pytest.raises(ValueError, match="unknown ggml type 999"):
        quants.get(999)


def test_unsupported_type_is_named():
    with pytest.raises(ValueError, match="IQ2_XXS is not supported"):
        quants.get("IQ2_XXS")


def test_quantize_wants_whole_blocks():
    with pytest.raises(ValueError, match=r"multiple of 256; got shape \(4, 100\)"):
        quants.get("Q4_K").quantize(np.zeros((4, 100), np.float32))


def test_bytes_objects_are_accepted():
    fmt = quants.get("Q8_0")
    raw = random_bytes(fmt, 8, seed=3)[0]
    assert_same_bits(fmt.dequantize(raw.tobytes()), gguf_py_dequantize(raw, fmt), 32, "bytes")
