"""Bad GGUF files end in one GGUFError naming the problem (and the key or tensor, and the byte), never in
another exception, a hang or a runaway allocation; no operation modifies a file; blocks with an inf or
NaN scale decode as gguf-py (and ggml) decode them, and are listed by tensor_stats.nonfinite_blocks."""

from __future__ import annotations

import collections
import dataclasses
import os
import resource
import time
import tracemalloc
from pathlib import Path

import malformed
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter
from gguf import GGUFValueType as V
from gguf import quants as gguf_quants

from stablelm_lab import GGUFError, GGUFFile, StableLM, StableLMConfig, load_tokenizer, quants
from stablelm_lab.analysis.tensor_stats import nonfinite_blocks
from stablelm_lab.testing import train_neox_tokenizer, uniform, write_gguf

GOLDEN = Path(__file__).parent / "golden"
FUZZ_CASES = 300
FUZZ_SEED = 20240607
MAX_SECONDS_PER_CASE = 2.0
MAX_TRACED_BYTES = 64 << 20  # numpy and Python allocations while opening and decoding one case
MAX_RSS_GROWTH = 200 << 20  # the whole fuzz run, torch included


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return malformed.small_valid_file(tmp_path_factory.mktemp("valid") / "small.gguf")


@pytest.fixture(scope="module")
def layout(base) -> malformed.Layout:
    return malformed.Layout(base)


def test_every_case_starts_from_a_valid_file(base):
    model = StableLM.from_gguf(base)
    assert model.config.n_layer == 1 and GGUFFile(base).tensors


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.gguf")), ids=lambda p: p.name)
def test_our_reader_agrees_with_gguf_py_on_valid_files(path):
    """The checks must not cost correctness: every key, type and tensor as gguf-py's GGUFReader reads them."""
    g, theirs = GGUFFile(path), GGUFReader(str(path))
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert list(g.metadata) == list(fields)
    for key, field in fields.items():
        item_type = field.types[-1] if field.types[0] == V.ARRAY else None
        assert g.metadata_types[key] == (field.types[0], item_type), key
        assert g.metadata[key] == field.contents(), key
    assert g.alignment == theirs.alignment and g._reader.data_offset == theirs.data_offset
    assert [(t.name, t.qtype, t.nbytes, t.offset) for t in g.tensors] == [
        (t.name, t.tensor_type, t.n_bytes, t.data_offset) for t in theirs.tensors
    ]


def test_gguf_error_is_a_value_error_with_an_offset():
    e = GGUFError("x")
    assert isinstance(e, ValueError) and e.offset is None


# ---- the corpus: each malformed case names its problem and where it is -----------------------------
@pytest.mark.parametrize("case", list(malformed.BYTE_CASES))
def test_malformed_bytes(case, layout, tmp_path):
    data, offset = malformed.BYTE_CASES[case](layout)
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=malformed.BYTE_CASE_ERRORS[case]) as e:
        GGUFFile(path)
    message = str(e.value)
    assert message.startswith(str(path))
    assert e.value.offset == offset
    assert f"byte {offset}" in message or case == "bad magic", message


@pytest.mark.parametrize("case", list(malformed.MODEL_CASES))
def test_not_a_model_we_can_build(case, base, tmp_path):
    c = malformed.MODEL_CASES[case]
    path = c.write(base, tmp_path / "bad.gguf")
    if c.when == "open":
        with pytest.raises(GGUFError, match=c.error):
            GGUFFile(path)
        return
    g = GGUFFile(path)  # a well-formed GGUF file...
    with pytest.raises(GGUFError, match=c.error) as e:
        StableLM.from_gguf(g)  # ...that holds no StableLM we can build
    assert str(path) in str(e.value)


def test_a_type_we_cannot_decode_is_named_when_decoding(base, tmp_path):
    path = malformed.MODEL_CASES["tensor type stablelm_lab cannot decode"].write(base, tmp_path / "q8_1.gguf")
    with pytest.raises(GGUFError, match=r"'blk.0.attn_q.weight' is stored as Q8_1, which stablelm_lab cannot"):
        GGUFFile(path).dequantize("blk.0.attn_q.weight")


def test_cut_at_any_byte(layout, tmp_path):
    """Every cut in the header, key-values and tensor table, and every 97th byte of the data: a GGUFError
    that says where the file ends, unless all the tensor data is there (only the last padding is lost)."""
    data = layout.data
    data_end = max(t.offset + t.nbytes for t in GGUFFile(_written(tmp_path / "whole.gguf", data)).tensors)
    cuts = sorted(set(range(layout.data_offset + 64)) | set(range(layout.data_offset, len(data), 97)))
    for n in cuts:
        path = _written(tmp_path / f"cut{n}.gguf", data[:n])
        if n >= data_end:
            GGUFFile(path)
        else:
            with pytest.raises(GGUFError) as e:
                GGUFFile(path)
            message = str(e.value)
            assert f"ends at byte {n}" in message or "can hold" in message or n < 4, (n, message)
        path.unlink()


def _written(path: Path, data: bytes) -> Path:
    """A new file (rewriting one file over and over is many times slower on some disks)."""
    path.write_bytes(data)
    return path


def test_extra_bytes_after_the_data_are_ignored(base, tmp_path):
    path = _written(tmp_path / "long.gguf", base.read_bytes() + b"\x00junk" * 1000)
    for name in ("output.weight", "blk.0.ffn_down.weight"):
        np.testing.assert_array_equal(GGUFFile(path).dequantize(name), GGUFFile(base).dequantize(name))


def test_a_real_sized_vocabulary_opens_fast(tmp_path):
    """StableLM-3B's 50k tokens and 50k merges: gguf-py's GGUFReader takes seconds, we take well under one."""
    writer = GGUFWriter(str(tmp_path / "vocab.gguf"), "stablelm")
    writer.add_token_list([f"token{i}" for i in range(50304)])
    writer.add_token_types([1] * 50304)
    writer.add_token_merges([f"a{i} b{i}" for i in range(50000)])
    writer.add_tensor("x", np.zeros((4, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    start = time.perf_counter()
    meta = GGUFFile(tmp_path / "vocab.gguf").metadata
    assert time.perf_counter() - start < 1.0
    assert meta["tokenizer.ggml.tokens"][-1] == "token50303" and len(meta["tokenizer.ggml.merges"]) == 50000


# ---- the fuzz: random damage to valid files ----------------------------------------------------------
def fuzz_bases(base) -> list[Path]:
    """Ours (gguf-py's writer) and two that llama.cpp wrote (Q2_K; a Q4_K_M mix with merges)."""
    return [base, GOLDEN / "tiny_stablelm.Q2_K.gguf", GOLDEN / "tiny_model.Q4_K_M.gguf"]


@pytest.fixture
def one_torch_thread():
    """Tiny models decode fastest on one thread; on a busy machine two threads wait on each other ~1 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fuzz(base, tmp_path, one_torch_thread):
    """Each damaged file loads (and then decodes every tensor and builds a model, or refuses the model
    with a GGUFError) or raises GGUFError; within 2 s, with bounded memory, the file left as it was."""
    rng = np.random.default_rng(FUZZ_SEED)
    originals = [(p.read_bytes(), GGUFFile(p)._reader.data_offset) for p in fuzz_bases(base)]
    stats = collections.Counter()
    worst_seconds, worst_traced = 0.0, 0
    rss_before = _peak_rss()
    for i in range(FUZZ_CASES):
        data, header_end = originals[i % len(originals)]
        path = _written(tmp_path / f"fuzz{i}.gguf", malformed.mutate(data, rng, header_end))
        before = (path.read_bytes(), path.stat().st_mtime_ns)
        start = time.perf_counter()
        outcome, traced = _open_and_decode(path)
        if outcome == "loaded":
            outcome = _build(path)
        seconds = time.perf_counter() - start
        assert seconds < MAX_SECONDS_PER_CASE, (i, outcome, seconds)
        assert traced < MAX_TRACED_BYTES, (i, outcome, traced)
        assert (path.read_bytes(), path.stat().st_mtime_ns) == before, i
        path.unlink()
        stats[outcome] += 1
        worst_seconds, worst_traced = max(worst_seconds, seconds), max(worst_traced, traced)
    rss_growth = _peak_rss() - rss_before
    print(
        f"\nfuzz: {FUZZ_CASES} cases {dict(stats)}; slowest {worst_seconds * 1e3:.1f} ms, "
        f"peak traced {worst_traced / 2**20:.1f} MiB, peak RSS growth {rss_growth / 2**20:.1f} MiB"
    )
    assert rss_growth < MAX_RSS_GROWTH
    assert stats["refused: GGUFError"] > FUZZ_CASES // 10 and stats["model built"] > FUZZ_CASES // 10


def _open_and_decode(path: Path) -> tuple[str, int]:
    """Open, read the metadata, decode every tensor; the outcome and the peak traced allocation."""
    tracemalloc.start()
    try:
        g = GGUFFile(path)
        assert isinstance(g.metadata, dict)
        for info in g.tensors:
            if info.qtype in quants.FORMATS:  # a flipped type id can name a type we cannot decode
                assert g.dequantize(info.name).shape == info.shape
        outcome = "loaded"
    except GGUFError as e:
        assert str(e).startswith(str(path)), str(e)
        outcome = "refused: GGUFError"
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return outcome, peak


def _build(path: Path) -> str:
    try:
        StableLM.from_gguf(path)
        return "model built"
    except GGUFError:
        return "model refused: GGUFError"


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


# ---- read-only ---------------------------------------------------------------------------------------
def test_no_operation_modifies_the_file(tmp_path):
    spec = dataclasses.replace(malformed.SMALL_SPEC, n_vocab=512)  # room for a real BPE tokenizer
    path = write_gguf(tmp_path / "ro.gguf", spec, types=uniform(T.Q8_0), tokenizer=train_neox_tokenizer())
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))  # an mtime in the past, so any write would show
    original = (path.read_bytes(), path.stat().st_mtime_ns)

    def unchanged():
        assert (path.read_bytes(), path.stat().st_mtime_ns) == original

    g = GGUFFile(path)
    unchanged()
    g.metadata, StableLMConfig.from_gguf(g), g.tensors
    unchanged()
    for info in g.tensors:
        raw = g.raw(info.name)
        assert not raw.flags.writeable
        with pytest.raises(ValueError):
            raw[...] = 0
        g.dequantize(info.name)
        nonfinite_blocks(raw, info.qtype)
    unchanged()
    for lean in (False, True):
        StableLM.from_gguf(path, lean=lean)(np.arange(4))
        unchanged()
    assert load_tokenizer(g).encode("hello world").ids
    unchanged()


# ---- non-finite scales ---------------------------------------------------------------------------------
# Blocks 3, 5 and 7 of each tensor get a scale of inf, -inf and NaN. MXFP4 is left out: its scale is an
# E8M0 exponent, and ggml decodes even 0xFF to a finite 2^127.
POISON = {3: np.inf, 5: -np.inf, 7: np.nan}
BF16_POISON = {3: 0x7F80, 5: 0xFF80, 7: 0x7FC0}  # the same values as bfloat16 bits
# The i-quants have no quantizer to make valid blocks from (tests/test_iquants.py decodes their random
# bytes, inf and NaN scales included, against gguf-py and llama.cpp).
NONFINITE_TYPES = [q for q, fmt in quants.FORMATS.items() if q != T.MXFP4 and fmt.can_quantize]


def poisoned(qtype, rng) -> np.ndarray:
    """Rows of valid ``qtype`` blocks, with the scale of blocks 3, 5, 7 (the value itself for F32/F16/BF16)
    set to inf, -inf, NaN."""
    fmt = quants.get(qtype)
    raw = fmt.quantize(rng.standard_normal((4, 512)).astype(np.float32))
    blocks = raw.reshape(-1).view(fmt.block_dtype)
    field = next(f for f in ("d", "value", "bits") if f in fmt.block_dtype.names)
    for block, value in (BF16_POISON if field == "bits" else POISON).items():
        blocks[field][block] = value
    return raw


@pytest.fixture(scope="module")
def nonfinite_file(tmp_path_factory):
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("nan") / "nonfinite.gguf"
    writer = GGUFWriter(str(path), "stablelm")
    for qtype in NONFINITE_TYPES:
        writer.add_tensor(qtype.name, poisoned(qtype, rng), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFFile(path)


@pytest.mark.parametrize("qtype", NONFINITE_TYPES, ids=lambda q: q.name)
def test_nonfinite_scales_decode_as_gguf_py_does(nonfinite_file, qtype):
    raw = nonfinite_file.raw(qtype.name)
    ours = nonfinite_file.dequantize(qtype.name)
    with np.errstate(all="ignore"):
        theirs = gguf_quants.dequantize(np.asarray(raw), qtype)
    np.testing.assert_array_equal(ours, theirs)  # NaN where gguf-py has NaN, the same infinities
    assert not np.isfinite(ours).all()


@pytest.mark.parametrize("qtype", NONFINITE_TYPES, ids=lambda q: q.name)
def test_nonfinite_blocks_are_listed(nonfinite_file, qtype):
    assert nonfinite_blocks(nonfinite_file.raw(qtype.name), qtype).tolist() == sorted(POISON)


def test_a_finite_tensor_has_no_nonfinite_blocks(base):
    g = GGUFFile(base)
    for info in g.tensors:
        assert nonfinite_blocks(g.raw(info.name), info.qtype).size == 0
