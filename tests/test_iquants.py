"""The lattice i-quants (IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M) against outside truth.

- llama.cpp: tests/golden/iquant_blocks.npz, blocks that ggml_quantize_chunk wrote (with an importance
  vector) and random blocks, each decoded by ggml's dequantize_row_<type> (tools/make_golden_iquants.py).
- gguf-py: its own transcription of the grids (gguf.quants, packed two bits per coordinate) and its
  decoders; tests/test_quants.py runs every registered format, these included, against them on 10,000
  random blocks each (numpy, torch and the readable decoder).
- hand derivations: one block of three formats decoded on paper, the lattice facts the docstrings teach.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from devices import TORCH_DEVICES
from gguf import GGMLQuantizationType as T

from stablelm_lab import GGUFFile, StableLM, quants, testing
from stablelm_lab.quants import iq_grids, iquants
from stablelm_lab.testing import WEIGHT_STD, TinySpec, every_type_mix, read_back, transformers_model, write_gguf

GOLDEN = Path(__file__).parent / "golden" / "iquant_blocks.npz"
NAMES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]
FORMATS = [quants.get(name) for name in NAMES]


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as npz:
        return dict(npz)


def assert_same_bits(ours: np.ndarray, truth: np.ndarray, what: str) -> None:
    """Identical float32 bits, except that any NaN matches any NaN."""
    assert ours.dtype == np.float32 and ours.shape == truth.shape, f"{what}: {ours.dtype} {ours.shape}"
    same = (ours.view(np.uint32) == truth.view(np.uint32)) | (np.isnan(ours) & np.isnan(truth))
    assert same.all(), f"{what}: {np.count_nonzero(~same)} of {same.size} weights differ"


def all_decoders(fmt, raw: np.ndarray) -> dict[str, np.ndarray]:
    out = {"numpy": fmt.dequantize(raw), "reference": fmt.dequantize_reference(raw)}
    for device in TORCH_DEVICES:
        out[f"torch on {device}"] = fmt.dequantize_torch(torch.from_numpy(raw).to(device)).cpu().numpy()
    return out


# ---- the registry -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FORMATS, ids=NAMES)
def test_block_sizes_are_ggml_static_asserts(fmt):
    # ggml-common.h, by hand: block_iq2_xxs = sizeof(ggml_half) + QK_K/8*sizeof(uint16_t), etc.
    expected = {
        "IQ2_XXS": 2 + 256 // 8 * 2,
        "IQ2_XS": 2 + 256 // 8 * 2 + 256 // 32,
        "IQ2_S": 2 + 256 // 4 + 256 // 16,
        "IQ3_XXS": 2 + 3 * (256 // 8),
        "IQ3_S": 2 + 13 * (256 // 32) + 256 // 64,
        "IQ1_S": 2 + 256 // 8 + 256 // 16,
        "IQ1_M": 256 // 8 + 256 // 16 + 256 // 32,
    }
    assert fmt.block_size == 256 and fmt.type_size == expected[fmt.name]
    assert fmt.block_dtype.itemsize == fmt.type_size and not fmt.can_quantize


def test_sub_block_sizes_are_listed():
    assert {f.name: f.sub_block_size for f in FORMATS} == {
        "IQ2_XXS": 32,
        "IQ2_XS": 16,
        "IQ2_S": 16,
        "IQ3_XXS": 32,
        "IQ3_S": 32,
        "IQ1_S": 32,
        "IQ1_M": 16,
    }


@pytest.mark.parametrize("fmt", FORMATS, ids=NAMES)
def test_sub_block_is_what_one_scale_bit_moves(fmt):
    """Flip each bit of a block, one at a time, and decode with gguf-py: apart from the bits of d (they
    move the whole block), the largest set of weights one bit moves is one aligned sub-block."""
    rng = np.random.default_rng(fmt.qtype.value)
    block = rng.integers(0, 256, fmt.type_size, dtype=np.uint8)
    with np.errstate(all="ignore"):
        for _ in range(100):  # a block with a finite, normal d
            base = gguf.quants.dequantize(block[None], fmt.qtype)[0]
            if np.isfinite(base).all() and np.abs(base).min() > 0:
                break
            block = rng.integers(0, 256, fmt.type_size, dtype=np.uint8)
        flips = np.repeat(block[None], 8 * fmt.type_size, axis=0)
        bit = np.arange(8 * fmt.type_size)
        flips[bit, bit // 8] ^= (1 << (bit % 8)).astype(np.uint8)
        moved = gguf.quants.dequantize(flips, fmt.qtype) != base
    groups = [np.flatnonzero(m) for m in moved if 0 < m.sum() < fmt.block_size]
    largest = max(len(g) for g in groups)
    sub = fmt.sub_block_size
    assert largest == sub
    assert all(g[0] // sub == g[-1] // sub for g in groups)


# ---- the tables -------------------------------------------------------------------------------------------
GRIDS = {
    "IQ2_XXS": iq_grids.IQ2XXS_GRID,
    "IQ2_XS": iq_grids.IQ2XS_GRID,
    "IQ2_S": iq_grids.IQ2S_GRID,
    "IQ3_XXS": iq_grids.IQ3XXS_GRID,
    "IQ3_S": iq_grids.IQ3S_GRID,
    "IQ1_S": iq_grids.IQ1S_GRID,
}


@pytest.mark.parametrize("name", list(GRIDS))
def test_grid_equals_gguf_py_transcription(name):
    cls = gguf.quants._type_traits[T[name]]
    cls.init_grid()
    theirs = cls.grid.reshape(cls.grid_shape)
    ours = iquants.grid_points(GRIDS[name], signed=name == "IQ1_S")
    assert np.array_equal(ours, theirs)


def test_ksigns_equal_gguf_py_and_carry_parity():
    ksigns = iq_grids.KSIGNS_IQ2XS
    assert bytes(ksigns) == gguf.quants.IQ2_XXS.ksigns
    assert np.array_equal(ksigns & 127, np.arange(128))  # the 7 stored bits
    popcount = np.unpackbits(ksigns[:, None], axis=1).sum(axis=1)
    assert (popcount % 2 == 0).all()  # bit 7 = their parity


def quantizer_units(points: np.ndarray, levels) -> np.ndarray:
    """Decoder bytes -> the quantizer's odd coordinates 2l + 1 (iq2xs_init_impl, iq3xs_init_impl)."""
    return 2 * np.searchsorted(levels, points) + 1


@pytest.mark.parametrize("name", ["IQ2_XXS", "IQ2_XS", "IQ2_S"])
def test_iq2_points_are_odd_points_of_2e8(name):
    """Coordinates 1, 3, 5 (bytes 0x08, 0x19, 0x2b) whose sum is a multiple of 4: the odd half of 2·E8."""
    points = iquants.grid_points(GRIDS[name])
    assert set(np.unique(points)) == {8, 25, 43}
    odd = quantizer_units(points, [8, 25, 43])
    assert (odd.sum(axis=1) % 4 == 0).all()


def test_iq3_xxs_points_are_a_coset_of_2d4():
    """Coordinates 1, 3, ..., 15 (bytes 4, 12, ..., 52, 62) with sum ≡ 0 (mod 4): (1,1,1,1) + 2·D4."""
    levels = [4, 12, 20, 28, 36, 44, 52, 62]
    points = iquants.grid_points(iq_grids.IQ3XXS_GRID)
    assert set(np.unique(points)) == set(levels)
    z = (quantizer_units(points, levels) - 1) // 2  # point = (1, 1, 1, 1) + 2·z
    assert (z.sum(axis=1) % 2 == 0).all()  # z in D4: integer, even coordinate sum


def test_iq1_grid_is_ternary_and_distinct():
    points = iquants.grid_points(iq_grids.IQ1S_GRID, signed=True)
    assert points.shape == (2048, 8) and set(np.unique(points)) == {-1, 0, 1}
    assert len(np.unique(points, axis=0)) == 2048 and iq_grids.IQ1S_DELTA == np.float32(0.125)


# ---- decoding against llama.cpp -------------------------------------------------------------------------
def test_golden_covers_every_iquant(golden):
    assert {key.split("/")[1] for key in golden if key.startswith("quantized/")} == set(NAMES)
    assert {key.split("/")[1] for key in golden if key.startswith("random_bytes/")} == set(NAMES)


@pytest.mark.parametrize("fmt", FORMATS, ids=NAMES)
def test_decoders_equal_llama_cpp_on_blocks_it_quantized(fmt, golden):
    keys = [key for key in golden if key.startswith(f"quantized/{fmt.name}/")]
    assert len(keys) == 5
    for key in keys:
        truth = golden[key.replace("quantized/", "dequantized/", 1)]
        assert np.abs(truth).max() > 0
        for decoder, ours in all_decoders(fmt, golden[key]).items():
            assert_same_bits(ours, truth, f"{key} {decoder}")


@pytest.mark.parametrize("fmt", FORMATS, ids=NAMES)
def test_decoders_equal_llama_cpp_on_random_bytes(fmt, golden):
    raw, truth = golden[f"random_bytes/{fmt.name}"], golden[f"random_decoded/{fmt.name}"]
    for decoder, ours in all_decoders(fmt, raw).items():
        assert_same_bits(ours, truth, f"{fmt.name} random {decoder}")


@pytest.mark.parametrize("fmt", FORMATS, ids=NAMES)
def test_decoders_equal_gguf_py_on_blocks_llama_cpp_wrote(fmt, golden):
    raw = np.concatenate([golden[k] for k in golden if k.startswith(f"quantized/{fmt.name}/")])
    truth = gguf.quants.dequantize(raw, fmt.qtype).astype(np.float32)
    assert_same_bits(fmt.dequantize(raw), truth, f"{fmt.name} gguf-py")


def test_llama_cpp_kept_iq2_xxs_signs_even(golden):
    """What the parity trick promises: every group of 8 that llama.cpp wrote has an even number of
    negative weights (zeros aside, none here: the grid has no 0)."""
    for key in (k for k in golden if k.startswith("dequantized/IQ2_XXS/")):
        groups = golden[key].reshape(-1, 8)
        assert ((groups < 0).sum(axis=1) % 2 == 0).all(), key


# ---- by hand ---------------------------------------------------------------------------------------------
def one_block(fmt, **fields) -> np.ndarray:
    block = np.zeros(1, fmt.block_dtype)
    for name, value in fields.items():
        block[name] = value
    return block.view(np.uint8).reshape(1, -1)


def decode_all_ways(fmt, raw) -> np.ndarray:
    decoded = all_decoders(fmt, raw)
    first = decoded.pop("numpy")
    for decoder, ours in decoded.items():
        assert_same_bits(ours, first, decoder)
    return first[0]


def test_iq2_xxs_block_by_hand():
    """d = 1; aux0 = 0 (every group on point 0: all 8s); aux1 = sign index 1 for group 0, scale s = 3:
    db = 1·(0.5 + 3)·0.25 = 0.875; ksigns[1] = 129 = bits 0 and 7, so weights 0 and 7 are -0.875·8 = -7."""
    fmt = quants.get("IQ2_XXS")
    qs = np.zeros(32, np.uint16)
    qs[2], qs[3] = 1, 3 << 12  # aux1 of the first 32 weights = 1 | 3 << 28
    y = decode_all_ways(fmt, one_block(fmt, d=1.0, qs=qs))
    assert y[:8].tolist() == [-7, 7, 7, 7, 7, 7, 7, -7]
    assert (y[8:32] == 7).all() and (y[32:] == 0.5 * 0.25 * 8).all()


def test_iq3_s_block_by_hand():
    """d = 0.5; qs[0] = 1 with qh bit 0 set: point 256 + 1 of iq3s_grid for weights 0-3; sign byte 0 =
    0b0101: weights 0 and 2 negative; scales[0] low nibble 2: db = 0.5·(1 + 2·2) = 2.5."""
    fmt = quants.get("IQ3_S")
    qs, qh, signs, scales = (np.zeros(n, np.uint8) for n in (64, 8, 32, 4))
    qs[0], qh[0], signs[0], scales[0] = 1, 1, 0b0101, 2
    point = iq_grids.IQ3S_GRID[257:258].astype("<u4").view(np.uint8).astype(np.float32)  # 4 coordinates
    y = decode_all_ways(fmt, one_block(fmt, d=0.5, qs=qs, qh=qh, signs=signs, scales=scales))
    assert y[:4].tolist() == (2.5 * point * [-1, 1, -1, 1]).tolist()
    assert (y[4:32] == 2.5).all() and (y[32:64] == 0.5).all()  # point 0 = (1, 1, 1, 1); s = 0


def test_iq1_m_block_by_hand():
    """d = 2 (fp16 0x4000) split over the top nibbles of the four uint16 scales: only sc[3] holds 0x4;
    grid point 0 (all -1) everywhere; the first group's delta negative (qh bit 3), scale s = 1 for
    the first 16 weights: 2·(2·1 + 1)·(-1 - 0.125) = -6.75, then +0.125 for group 1: -5.25."""
    fmt = quants.get("IQ1_M")
    sc = np.array([1, 0, 0, 0x4000], dtype="<u2")
    qh = np.zeros(16, np.uint8)
    qh[0] = 0x08
    y = decode_all_ways(fmt, one_block(fmt, qh=qh, scales=sc.view(np.uint8)))
    assert (y[:8] == -6.75).all() and (y[8:16] == -5.25).all()
    assert (y[16:] == 2 * 1 * (-1 + 0.125)).all()  # s = 0 elsewhere


# ---- files and the model ---------------------------------------------------------------------------------
def iquant_blocks(shape, qtype: T, rng: np.random.Generator) -> np.ndarray:
    """Random blocks with a finite d chosen so that the decoded weights have a std near WEIGHT_STD."""
    fmt = quants.get(qtype)
    rows, cols = shape
    raw = rng.integers(0, 256, (rows, cols // 256 * fmt.type_size), dtype=np.uint8)
    blocks = raw.reshape(-1, fmt.type_size)
    if qtype == T.IQ1_M:  # d is the top nibbles of the four uint16 scales: set them to 0x2c00 (1/16)
        sc = blocks[:, 48:56].copy().view("<u2")
        sc[:] = (sc & 0x0FFF) | (np.array([0x0, 0x0, 0xC, 0x2], dtype="<u2") << 12)
        blocks[:, 48:56] = sc.view(np.uint8)
    else:
        blocks[:, 0:2] = np.array([1 / 16], np.float16).view(np.uint8)
        std = fmt.dequantize(raw).std()
        blocks[:, 0:2] = np.array([WEIGHT_STD / std / 16], np.float16).view(np.uint8)
    return raw


@pytest.fixture(scope="module")
def iquant_file(tmp_path_factory):
    spec = TinySpec(n_head_kv=2, seed=11)
    original = testing.encode

    def encode(w, qtype, rng):
        return iquant_blocks(w.shape, qtype, rng) if qtype.name in NAMES else original(w, qtype, rng)

    testing.encode = encode
    try:
        path = write_gguf(
            tmp_path_factory.mktemp("iq") / "iq.gguf", spec, types=every_type_mix([T[name] for name in NAMES])
        )
    finally:
        testing.encode = original
    return path, spec


def test_gguf_file_decodes_iquant_tensors_as_gguf_py(iquant_file):
    path, _ = iquant_file
    g = GGUFFile(path)
    truth = read_back(path)
    seen = set()
    for info in g.tensors:
        assert_same_bits(g.dequantize(info.name), truth[info.name], info.name)
        seen.add(quants.get(info.qtype).name)
    assert set(NAMES) <= seen


@pytest.mark.parametrize("lean", [False, True], ids=["dense", "lean"])
@torch.no_grad()
def test_model_on_iquant_weights_matches_transformers(iquant_file, lean):
    path, spec = iquant_file
    ours = StableLM.from_gguf(path, lean=lean)
    hf = transformers_model(path, spec)
    ids = torch.from_numpy(np.random.default_rng(8).integers(0, spec.n_vocab, size=(2, 16)))
    assert (ours(ids) - hf(ids).logits).abs().max().item() < 1e-4
