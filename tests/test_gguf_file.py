"""GGUFFile against gguf-py's own reader and decoders, and against the bytes on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf import quants as gguf_quants

from stablelm_lab import GGUFError, GGUFFile, StableLMConfig, quants
from stablelm_lab.testing import TinySpec, every_type_mix, write_gguf

MIXED_TYPES = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    spec = TinySpec(n_layer=2, qkv_bias=True)
    path = write_gguf(tmp_path_factory.mktemp("gguf") / "mixed.gguf", spec, types=every_type_mix(MIXED_TYPES))
    return path


def test_tensor_table_matches_gguf_py(mixed):
    g = GGUFFile(mixed)
    theirs = GGUFReader(str(mixed)).tensors
    assert [t.name for t in g.tensors] == [t.name for t in theirs]
    for ours, t in zip(g.tensors, theirs):
        assert ours.shape == tuple(reversed(t.shape.tolist()))  # numpy order: (rows, cols)
        assert ours.qtype == t.tensor_type
        assert ours.nbytes == t.n_bytes
    assert {t.qtype for t in g.tensors} == set(MIXED_TYPES) | {T.F32}


def test_metadata_values(mixed):
    meta = GGUFFile(mixed).metadata
    assert meta["general.architecture"] == "stablelm"
    assert meta["stablelm.embedding_length"] == 256
    assert meta["stablelm.rope.dimension_count"] == 16
    assert meta["stablelm.use_parallel_residual"] is True
    assert meta["stablelm.attention.layer_norm_epsilon"] == pytest.approx(1e-5)


def test_raw_is_the_bytes_on_disk_without_a_copy(mixed):
    g = GGUFFile(mixed)
    data = open(mixed, "rb").read()
    for info in g.tensors:
        raw = g.raw(info.name)
        assert raw.dtype == np.uint8 and raw.nbytes == info.nbytes
        assert raw.tobytes() == data[info.offset : info.offset + info.nbytes]
        assert not raw.flags.writeable
        assert np.shares_memory(raw, g._reader.data)  # a view into the memory map


def rss_file_kib() -> int:
    """Pages of mapped files this process holds (RssFile in /proc/self/status)."""
    return int(next(line for line in open("/proc/self/status") if line.startswith("RssFile")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's /proc")
def test_release_unmaps_a_tensors_pages_and_keeps_its_bytes(tmp_path):
    path = write_gguf(tmp_path / "big.gguf", TinySpec(n_vocab=16384))  # 16 MiB embedding
    before = path.read_bytes()
    g = GGUFFile(path)
    name, n_kib = "token_embd.weight", g.tensor_info["token_embd.weight"].nbytes // 1024
    start = rss_file_kib()
    first = g.raw(name).sum(dtype=np.uint64)  # touches every page of the tensor
    assert rss_file_kib() - start > 0.9 * n_kib
    g.release(name)
    assert rss_file_kib() - start < 0.1 * n_kib
    assert g.raw(name).sum(dtype=np.uint64) == first  # read again: mapped back in, same bytes
    assert path.read_bytes() == before


def test_dequantize_matches_gguf_py(mixed):
    g = GGUFFile(mixed)
    for t in GGUFReader(str(mixed)).tensors:
        if t.tensor_type not in quants.FORMATS:
            continue  # arrives with its quant format
        expected = gguf_quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(g.tensor_info[t.name].shape)
        np.testing.assert_array_equal(g.dequantize(t.name), expected, err_msg=t.name)


def test_config_from_keys_and_tensors(tmp_path):
    spec = TinySpec(n_head_kv=1, n_rot=32, rope_base=500.0, parallel_residual=True, qk_norm=True)
    cfg = StableLMConfig.from_gguf(GGUFFile(write_gguf(tmp_path / "m.gguf", spec)))
    assert cfg == StableLMConfig(
        n_vocab=512,
        n_embd=256,
        n_layer=2,
        n_head=4,
        n_head_kv=1,
        n_ff=512,
        n_ctx=256,
        n_rot=32,
        norm_eps=cfg.norm_eps,
        rope_base=500.0,
        parallel_residual=True,
        qkv_bias=False,
        qk_norm=True,
    )
    assert cfg.norm_eps == pytest.approx(1e-5) and cfg.head_dim == 64 and cfg.partial_rotary_factor == 0.5


def test_sequential_residual_follows_the_tensors_not_the_key(mixed):
    # stablelm_lab.testing writes use_parallel_residual = True, as the converter does when config.json lacks it
    cfg = StableLMConfig.from_gguf(GGUFFile(mixed))
    assert not cfg.parallel_residual
    assert cfg.rope_base == 10000.0  # rope.freq_base absent
    assert cfg.qkv_bias and not cfg.qk_norm


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, I am text")
    with pytest.raises(GGUFError, match="is not a GGUF file") as e:
        GGUFFile(path)
    assert isinstance(e.value, ValueError)


def test_truncated_gguf(mixed, tmp_path):
    path = tmp_path / "cut.gguf"
    path.write_bytes(open(mixed, "rb").read()[:300])
    with pytest.raises(GGUFError, match="not a readable GGUF file"):
        GGUFFile(path)


def test_missing_file(tmp_path):
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "nowhere.gguf")


def test_other_architecture_has_no_stablelm_config(tmp_path):
    path = write_gguf(tmp_path / "llama.gguf", architecture="llama")
    g = GGUFFile(path)  # still a readable GGUF
    assert g.architecture == "llama"
    with pytest.raises(GGUFError, match="holds a 'llama' model, not a StableLM"):
        StableLMConfig.from_gguf(g)


def test_unknown_tensor_name(mixed):
    with pytest.raises(KeyError, match="no tensor named"):
        GGUFFile(mixed).raw("blk.99.attn_q.weight")
