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
from devices import TORCH_DEVICES
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from stablelm_lab import quants

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = [
    "F32",
    "F16",
    "BF16",
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K",
    "Q4_K",
    "Q5_K",
    "Q6_K",
    "IQ4_NL",
    "IQ4_XS",
    "TQ1_0",
    "TQ2_0",
    "MXFP4",
    "IQ2_XXS",
    "IQ2_XS",
    "IQ2_S",
    "IQ3_XXS",
    "IQ3_S",
    "IQ1_S",
    "IQ1_M",
]
#: The lattice i-quants: their llama.cpp golden is tests/golden/iquant_blocks.npz (tests/test_iquants.py).
IQUANTS = {"IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"}
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
    assert bad_blocks.size == 0, (
        f"{what}: {bad_blocks.size} of {same.size // block_size} blocks differ, first at block {bad_blocks[0]}"
    )


def assert_same_bytes(ours: np.ndarray, truth: np.ndarray, type_size: int, what: str) -> None:
    assert ours.dtype == np.uint8 and ours.shape == truth.shape, f"{what}: {ours.shape} vs {truth.shape}"
    bad_blocks = np.flatnonzero((ours.reshape(-1, type_size) != truth.reshape(-1, type_size)).any(axis=1))
    assert bad_blocks.size == 0, (
        f"{what}: {bad_blocks.size} of {ours.size // type_size} blocks differ, first at block {bad_blocks[0]}"
    )


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
def test_numpy_decoder_equals_gguf_py_on_random_bytes(fmt):
    raw = random_bytes(fmt, RANDOM_BLOCKS, seed=fmt.qtype.value)
    assert_same_bits(fmt.dequantize(raw), gguf_py_dequantize(raw, fmt), fmt.block_size, f"{fmt.name} numpy")


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("fmt", ALL, ids=ids(ALL))
def test_torch_decoder_equals_gguf_py_on_random_bytes(fmt, device):
    raw = random_bytes(fmt, RANDOM_BLOCKS, seed=fmt.qtype.value)
    ours = fmt.dequantize_torch(torch.from_numpy(raw).to(device))
    assert ours.dtype == torch.float32 and ours.device.type == device
    assert_same_bits(ours.cpu().numpy(), gguf_py_dequantize(raw, fmt), fmt.block_size, f"{fmt.name} torch")


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("fmt", ALL, ids=ids(ALL))
def test_torch_decoder_writes_into_a_given_output(fmt, device):
    raw = random_bytes(fmt, 256, seed=fmt.qtype.value + 1).reshape(4, -1)
    out = torch.full((4, raw.shape[-1] // fmt.type_size * fmt.block_size), 7.0, device=device)  # stale values
    assert fmt.dequantize_torch(torch.from_numpy(raw).to(device), out=out) is out
    assert_same_bits(out.cpu().numpy(), gguf_py_dequantize(raw, fmt), fmt.block_size, f"{fmt.name} torch out=")


@pytest.mark.parametrize("bad", ["shape", "dtype", "strided"])
def test_torch_decoder_refuses_an_output_it_cannot_fill(bad):
    fmt = quants.get("Q4_K")
    raw = torch.from_numpy(random_bytes(fmt, 16, seed=3).reshape(2, -1))
    out = {
        "shape": torch.empty(2, 2047),
        "dtype": torch.empty(2, 2048, dtype=torch.float16),
        "strided": torch.empty(2048, 2).T,
    }[bad]
    with pytest.raises(ValueError, match=r"out must be a contiguous float32 tensor of shape \(2, 2048\)"):
        fmt.dequantize_torch(raw, out=out)


@pytest.mark.parametrize("fmt", ALL, ids=ids(ALL))
def test_reference_decoder_equals_gguf_py_on_random_bytes(fmt):
    raw = random_bytes(fmt, RANDOM_BLOCKS, seed=fmt.qtype.value)
    assert_same_bits(
        fmt.dequantize_reference(raw), gguf_py_dequantize(raw, fmt), fmt.block_size, f"{fmt.name} reference"
    )


GOLDEN_ROW_FORMATS = [f for f in BLOCK_FORMATS if f.name not in IQUANTS]


@pytest.mark.parametrize("fmt", GOLDEN_ROW_FORMATS, ids=ids(GOLDEN_ROW_FORMATS))
def test_decoders_equal_llama_cpp(fmt, golden_rows):
    """llama.cpp's dequantize_row_* on random bytes and on blocks its quantizer wrote."""
    cases = [(golden_rows[f"random_bytes/{fmt.name}"], golden_rows[f"random_decoded/{fmt.name}"])]
    cases += [
        (golden_rows[key], golden_rows[key.replace("quantized/", "dequantized/", 1)])
        for key in golden_rows
        if key.startswith(f"quantized/{fmt.name}/")
    ]
    for raw, truth in cases:
        assert_same_bits(fmt.dequantize(raw), truth, fmt.block_size, f"{fmt.name} numpy")
        for device in TORCH_DEVICES:
            assert_same_bits(
                fmt.dequantize_torch(torch.from_numpy(raw).to(device)).cpu().numpy(),
                truth,
                fmt.block_size,
                f"{fmt.name} torch on {device}",
            )
        assert_same_bits(fmt.dequantize_reference(raw), truth, fmt.block_size, f"{fmt.name} reference")


@pytest.mark.parametrize("fmt", ALL, ids=ids(ALL))
def test_decoders_keep_leading_dimensions(fmt):
    raw = random_bytes(fmt, 48, seed=1).reshape(2, 3, -1)
    expected_shape = (2, 3, raw.shape[-1] // fmt.type_size * fmt.block_size)
    assert fmt.dequantize(raw).shape == expected_shape
    assert fmt.dequantize_reference(raw).shape == expected_shape
    assert tuple(fmt.dequantize_torch(torch.from_numpy(raw)).shape) == expected_shape


# ---- ggml's rounding ---------------------------------------------------------------------------------
def test_nearest_int_is_ggml_bit_trick_everywhere():
    """ggml's nearest_int adds 1.5·2^23 and keeps the low 23 bits, minus 2^22 (values derived by hand)."""
    from stablelm_lab.quants.rounding import nearest_int

    v = np.array(
        [
            2.5,
            -2.5,
            3.5,
            0.49999997,
            -0.0,
            4194303.0,
            np.nan,
            np.inf,
            -np.inf,  # NaN: mantissa 0x400000 -> 0; inf: mantissa 0 -> -2^22
            4194304.5,  # + 1.5·2^23 = 16777216.5 rounds to 2^24: mantissa 0
            5e6,
        ],
        dtype=np.float32,
    )  # 17582912 = 2^24 + 2·402848: 402848 - 2^22
    expected = [2, -2, 4, 0, 0, 4194303, 0, -4194304, -4194304, -4194304, 402848 - 4194304]
    with np.errstate(invalid="ignore"):
        assert nearest_int(v).tolist() == expected


def test_tq1_0_trit_planes_equal_the_c_formula():
    from stablelm_lab.quants.ternary import trit, trit_plane

    every_byte = np.arange(256, dtype=np.uint8)
    for n in range(5):
        assert np.array_equal(trit_plane(every_byte, n), trit(np.arange(256), n)), n


# ---- packed scales: the fast unpacking equals the readable formula for every input ------------------
def zero_and_one_bit_inputs(n_bytes: int) -> np.ndarray:
    """The zero input and the 8·n_bytes inputs with a single bit set, as rows of bytes.

    Unpackings that only shift, mask and OR disjoint bit fields are linear maps over GF(2) (and send zero
    to zero); two linear maps that agree on the one-bit inputs, a basis, agree on all 2^(8·n_bytes).
    A few random inputs are added as a check on that linearity, not as the proof.
    """
    one_bit = np.packbits(np.eye(8 * n_bytes, dtype=np.uint8), axis=1, bitorder="little")
    rng = np.random.default_rng(5)
    return np.vstack([np.zeros((1, n_bytes), np.uint8), one_bit, rng.integers(0, 256, (16, n_bytes), dtype=np.uint8)])


def test_q3_k_scale_unpacking_equals_the_index_formula():
    from stablelm_lab.quants.q3_k import scale_value, unpack_scale_words, unpack_scales

    packed = zero_and_one_bit_inputs(12)
    readable = np.array([[scale_value(row, s) + 32 for s in range(16)] for row in packed])
    assert np.array_equal(unpack_scales(packed), readable)
    words = torch.from_numpy(packed.copy()).view(torch.int32)  # torch: signed words
    fast_torch = torch.stack(unpack_scale_words(*words.T), dim=1).view(torch.uint8)
    assert np.array_equal(fast_torch.numpy(), readable)


def test_q4_k_scale_min_unpacking_equals_get_scale_min_k4():
    from stablelm_lab.quants.scales_mins import get_scale_min_k4, scales_mins_k4, unpack_scale_min_words

    packed = zero_and_one_bit_inputs(12)
    readable = np.array([[get_scale_min_k4(j, row) for j in range(8)] for row in packed])  # (n, j, sc/m)
    scales, mins = scales_mins_k4(packed)
    assert np.array_equal(scales, readable[:, :, 0]) and np.array_equal(mins, readable[:, :, 1])
    words = torch.from_numpy(packed.copy()).view(torch.int32)
    fast_torch = torch.stack(unpack_scale_min_words(*words.T), dim=1).view(torch.uint8).numpy()
    assert np.array_equal(fast_torch[:, :8], readable[:, :, 0])
    assert np.array_equal(fast_torch[:, 8:], readable[:, :, 1])


@pytest.mark.parametrize("fmt", ALL, ids=ids(ALL))
def test_kernels_write_into_out_and_any_split_decodes_alike(fmt, monkeypatch):
    """The kernels fill a given output; small steps, threads and torch's chunks change no bit."""
    from stablelm_lab.quants import threads, tuning

    raw = random_bytes(fmt, 64, seed=2)
    truth = gguf_py_dequantize(raw, fmt).reshape(-1, fmt.block_size)
    blocks = raw.reshape(-1, fmt.type_size).view(fmt.block_dtype)[:, 0]
    out = np.full(truth.shape, np.nan, dtype=np.float32)
    with np.errstate(all="ignore"):
        assert fmt.dequantize_blocks(blocks, out) is out
    assert_same_bits(out, truth, fmt.block_size, f"{fmt.name} numpy into out")
    out_torch = torch.full(truth.shape, float("nan"))
    blocks_torch = torch.from_numpy(raw).reshape(-1, fmt.type_size)
    assert fmt.dequantize_blocks_torch(blocks_torch, out_torch) is out_torch
    assert_same_bits(out_torch.numpy(), truth, fmt.block_size, f"{fmt.name} torch into out")

    monkeypatch.setattr(threads, "THREADS", 3)
    monkeypatch.setattr(tuning, "CHUNK_WEIGHTS_THREADED", 5 * fmt.block_size)  # 13 steps over 3 threads
    monkeypatch.setattr(tuning, "CHUNK_WEIGHTS_TORCH_CPU", 5 * fmt.block_size)
    assert_same_bits(fmt.dequantize(raw).reshape(truth.shape), truth, fmt.block_size, f"{fmt.name} threads")
    assert_same_bits(
        fmt.dequantize_torch(torch.from_numpy(raw)).numpy().reshape(truth.shape),
        truth,
        fmt.block_size,
        f"{fmt.name} torch chunks",
    )


# ---- encoding -----------------------------------------------------------------------------------------
QUANTIZERS = [f for f in BLOCK_FORMATS if f.can_quantize]


def test_every_type_with_a_ggml_reference_quantizer_can_quantize():
    assert {f.name for f in QUANTIZERS} == {
        "Q4_0",
        "Q4_1",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "IQ4_NL",
        "IQ4_XS",
        "TQ1_0",
        "TQ2_0",
        "MXFP4",
    }


@pytest.mark.parametrize("fmt", QUANTIZERS, ids=ids(QUANTIZERS))
def test_quantize_equals_llama_cpp_on_every_row_character(fmt, golden_rows):
    characters = [key.split("/", 1)[1] for key in golden_rows if key.startswith("rows/")]
    assert len(characters) >= 8
    for character in characters:
        ours = fmt.quantize(golden_rows[f"rows/{character}"])
        assert_same_bytes(
            ours, golden_rows[f"quantized/{fmt.name}/{character}"], fmt.type_size, f"{fmt.name} on {character} rows"
        )


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
        assert_same_bits(
            fmt.dequantize(raw), gguf_py_dequantize(raw, fmt), fmt.block_size, f"{fmt.name} {name} decoded"
        )


def test_golden_files_cover_every_quantizer():
    assert {f.name for f in FILE_QUANTIZERS} == {f.name for f in QUANTIZERS} - {"MXFP4"}


@pytest.mark.parametrize("fmt", ["F32", "F16", "BF16"])
def test_float_types_round_trip_like_ggml(fmt):
    fmt = quants.get(fmt)
    x = np.array(
        [[0.0, -0.0, 1.0, -2.5, 1e-8, 65504.0, 1e5, np.inf, -np.inf, 3.1415927, 1 / 3, 7e-45]], dtype=np.float32
    )
    raw = fmt.quantize(x)
    with np.errstate(all="ignore"):
        truth = gguf.quants.quantize(x, fmt.qtype)
    assert np.array_equal(raw, truth.view(np.uint8).reshape(1, -1))
    assert_same_bits(fmt.dequantize(raw), gguf_py_dequantize(raw, fmt), 1, fmt.name)


def test_bf16_quiets_nan_like_ggml():
    signalling_nan = np.array([[0x7F800001]], dtype=np.uint32).view(np.float32)
    bits = quants.get("BF16").quantize(signalling_nan).view("<u2")
    assert bits[0, 0] == (0x7F800001 >> 16) | 64  # ggml_compute_fp32_to_bf16, by hand


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
    with pytest.raises(ValueError, match="Q8_K is not supported"):  # ggml's dot-product type, never stored
        quants.get("Q8_K")


def test_quantize_wants_whole_blocks():
    with pytest.raises(ValueError, match=r"multiple of 256; got shape \(4, 100\)"):
        quants.get("Q4_K").quantize(np.zeros((4, 100), np.float32))


def test_bytes_objects_are_accepted():
    fmt = quants.get("Q8_0")
    raw = random_bytes(fmt, 8, seed=3)[0]
    assert_same_bits(fmt.dequantize(raw.tobytes()), gguf_py_dequantize(raw, fmt), 32, "bytes")
