"""The importance matrix against llama-imatrix itself: tests/golden/llama_imatrix/ holds what llama-imatrix wrote
for the embedded default over data/calibration.txt (tools/make_golden_imatrix_file.py: 8 chunks of 128 tokens,
--process-output, every matrix in F32), in its GGUF and its legacy .dat format."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from stablelm_lab import StableLM, load_tokenizer
from stablelm_lab.analysis.imatrix import (
    ImatrixError,
    ImportanceMatrix,
    check_imatrix,
    collect_imatrix,
    load_imatrix,
    save_imatrix,
)
from stablelm_lab.container.default_model import DATA_DIR, embedded_gguf
from stablelm_lab.testing import TinySpec, transformers_model, write_gguf

GOLDEN = Path(__file__).parent / "golden" / "llama_imatrix"
RUN = json.loads((GOLDEN / "run.json").read_text())
# Our float32 forward pass against llama.cpp's (float32 throughout), summed over 1024 tokens: the largest
# relative difference of any column's sum was 3.8e-6 (blk.0.attn_q/k/v: llama.cpp adds 1024 float32 squares
# one by one, we add them in float64), the median 3e-7 to 8e-7 per matrix (measured 2026-12-07; the same
# llama-imatrix run on the F16 file, whose matmuls round their inputs to F16, differs from it by up to 6e-4).
# About eight times the measured worst:
SUMS_RTOL = 3e-5


@pytest.fixture(scope="module")
def golden():
    return load_imatrix(GOLDEN / "tiny.imatrix.gguf")


@pytest.fixture(scope="module")
def collected():
    path = embedded_gguf("F16")
    text = (DATA_DIR / "calibration.txt").read_text(encoding="utf-8")
    return collect_imatrix(
        StableLM.from_gguf(path),
        text,
        tokenizer=load_tokenizer(path),
        chunk_size=RUN["chunk_size"],
        n_chunks=RUN["chunks"],
        process_output=True,
        datasets=[RUN["text"]],
    )


def relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    assert (theirs > 0).all()  # every column of the golden is driven: no 0/0
    return float(np.max(np.abs(ours.astype(np.float64) - theirs) / theirs))


def test_collect_equals_llama_imatrix(collected, golden):
    assert sorted(collected.sums) == sorted(golden.sums)
    assert len(golden.sums) == 4 * 7 + 1  # 7 matrices per layer, and output.weight
    worst = {name: relative_difference(collected.sums[name], golden.sums[name]) for name in golden.sums}
    assert max(worst.values()) < SUMS_RTOL, sorted(worst.items(), key=lambda kv: -kv[1])[:3]
    for name in golden.sums:
        np.testing.assert_array_equal(collected.counts[name], golden.counts[name], err_msg=name)
    assert golden.counts["blk.0.attn_q.weight"].tolist() == [RUN["chunks"] * RUN["chunk_size"]]


def test_collect_metadata_equals_llama_imatrix(collected, golden):
    assert (
        (collected.chunk_count, collected.chunk_size, collected.datasets)
        == (golden.chunk_count, golden.chunk_size, golden.datasets)
        == (RUN["chunks"], RUN["chunk_size"], [RUN["text"]])
    )


def test_collect_is_not_blind(collected, golden):
    """The comparison can fail: one chunk fewer, or ffn_down fed the wrong activation, is far off."""
    ffn_down = collected.sums["blk.1.ffn_down.weight"]
    assert relative_difference(ffn_down * 7 / 8, golden.sums["blk.1.ffn_down.weight"]) > 100 * SUMS_RTOL
    assert relative_difference(collected.sums["blk.1.ffn_up.weight"], golden.sums["blk.1.attn_q.weight"]) > 0.01


def test_collect_refuses_a_short_text():
    path = embedded_gguf("F16")
    with pytest.raises(ValueError, match="at least 256 tokens for chunks of 128"):
        collect_imatrix(path, "def f():\n    pass\n", chunk_size=128)


@pytest.mark.parametrize(
    "spec",
    [
        TinySpec(n_head_kv=4, n_rot=32, parallel_residual=True, qkv_bias=True, qk_norm=True, seed=1),  # StableLM 2
        TinySpec(n_layer=3, n_head_kv=1, n_rot=24, qkv_bias=True, seed=2),  # GQA, biases
    ],
    ids=["parallel-qknorm-bias", "sequential-mqa-bias"],
)
def test_collect_sees_the_inputs_transformers_multiplies(spec, tmp_path):
    """Other shapes than the golden's: the input of every nn.Linear of transformers' StableLM (forward
    pre-hooks), squared and summed, is what collect_imatrix reads from our named activations."""
    import torch

    path = write_gguf(tmp_path / "m.gguf", spec)
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, spec.n_vocab, size=64))
    ours = collect_imatrix(StableLM.from_gguf(path), ids.tolist(), chunk_size=32, process_output=True)
    hf = transformers_model(path, spec)
    expected = {}

    def record(name):
        def hook(module, args):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            expected[name] = expected.get(name, 0) + (x * x).sum(0)

        return hook

    names = {
        "q_proj": "attn_q",
        "k_proj": "attn_k",
        "v_proj": "attn_v",
        "o_proj": "attn_output",
        "gate_proj": "ffn_gate",
        "up_proj": "ffn_up",
        "down_proj": "ffn_down",
    }
    for i, layer in enumerate(hf.model.layers):
        for module_name, module in list(layer.self_attn.named_children()) + list(layer.mlp.named_children()):
            if module_name in names:
                module.register_forward_pre_hook(record(f"blk.{i}.{names[module_name]}.weight"))
    hf.lm_head.register_forward_pre_hook(record("output.weight"))
    with torch.no_grad():
        for chunk in ids.view(2, 32):
            hf(chunk[None])
    assert sorted(ours.sums) == sorted(expected)
    for name, sums in expected.items():
        np.testing.assert_allclose(ours.sums[name], sums.numpy(), rtol=1e-4, err_msg=name)
        assert ours.counts[name].tolist() == [64]


# ---- files -----------------------------------------------------------------------------------------------
def test_save_writes_llama_imatrix_file_byte_for_byte(golden, tmp_path):
    """llama.cpp's gguf writer is the truth for the layout: reading its file and writing it back gives its bytes."""
    save_imatrix(golden, tmp_path / "again.gguf")
    assert (tmp_path / "again.gguf").read_bytes() == (GOLDEN / "tiny.imatrix.gguf").read_bytes()


def test_save_then_load_keeps_everything(collected, tmp_path):
    save_imatrix(collected, tmp_path / "ours.gguf")
    back = load_imatrix(tmp_path / "ours.gguf")
    assert (back.chunk_count, back.chunk_size, back.datasets, back.legacy) == (
        collected.chunk_count,
        collected.chunk_size,
        collected.datasets,
        False,
    )
    for name in collected.sums:
        np.testing.assert_array_equal(back.sums[name], collected.sums[name])
        np.testing.assert_array_equal(back.counts[name], collected.counts[name])


def test_legacy_dat_gives_the_importance_of_the_gguf(golden):
    """Both files were written by llama-imatrix from the same run: the .dat stores (sum / count) * ncall,
    the GGUF sum and count; llama-quantize turns both into sum / count."""
    legacy = load_imatrix(GOLDEN / "tiny.imatrix.dat")
    assert legacy.legacy and legacy.chunk_count == RUN["chunks"] and legacy.datasets == [RUN["text"]]
    assert legacy.counts["blk.0.attn_q.weight"].tolist() == [RUN["chunks"]]  # ncall = ceil(count / chunk)
    ours, theirs = legacy.importance(), golden.importance()
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-6, err_msg=name)  # two float32 roundings


def test_importance_is_sums_over_counts(golden):
    name = "blk.2.ffn_down.weight"
    w = golden.importance()[name]
    assert w.dtype == np.float32 and w.shape == (768,)
    np.testing.assert_array_equal(w, golden.sums[name] / np.float32(golden.counts[name][0]))


def test_fits_the_model_it_was_made_for(golden):
    check_imatrix(golden, embedded_gguf("F16"))


# ---- bad files: one clear error naming the tensor -----------------------------------------------------
def edited(golden) -> ImportanceMatrix:
    sums = {k: v.copy() for k, v in golden.sums.items()}
    counts = {k: v.copy() for k, v in golden.counts.items()}
    return ImportanceMatrix(sums, counts, golden.chunk_count, golden.chunk_size, list(golden.datasets))


@pytest.mark.parametrize(
    "break_it, message",
    [
        (lambda m: m.sums["blk.1.attn_k.weight"].__setitem__(5, np.nan), r"blk\.1\.attn_k\.weight has 1 non-finite"),
        (lambda m: m.counts["blk.3.ffn_up.weight"].__setitem__(0, 0), r"blk\.3\.ffn_up\.weight has a count of 0"),
        (lambda m: m.sums["blk.0.attn_v.weight"].__setitem__(3, -1.0), r"blk\.0\.attn_v\.weight has negative"),
    ],
)
def test_bad_values_name_the_tensor(golden, tmp_path, break_it, message):
    bad = edited(golden)
    break_it(bad)
    save_imatrix(bad, tmp_path / "bad.gguf")
    with pytest.raises(ImatrixError, match=message):
        load_imatrix(tmp_path / "bad.gguf")


def test_a_sum_without_its_count_names_the_tensor(golden, tmp_path):
    data = (GOLDEN / "tiny.imatrix.gguf").read_bytes()
    name = b"blk.2.attn_output.weight.counts"
    renamed = name.replace(b".counts", b".countz")
    (tmp_path / "bad.gguf").write_bytes(data.replace(name, renamed))
    with pytest.raises(ImatrixError, match=r"blk\.2\.attn_output\.weight has .*in_sum2 but no .*\.counts"):
        load_imatrix(tmp_path / "bad.gguf")


def test_another_models_matrix_is_refused(golden):
    short = edited(golden)
    short.sums["blk.0.ffn_down.weight"] = short.sums["blk.0.ffn_down.weight"][:256]
    with pytest.raises(
        ImatrixError,
        match=r"blk\.0\.ffn_down\.weight: the importance matrix has 256 values, "
        r"the tensor .* has 768 columns",
    ):
        check_imatrix(short, embedded_gguf("F16"))
    missing = edited(golden)
    del missing.sums["blk.3.attn_q.weight"], missing.counts["blk.3.attn_q.weight"]
    with pytest.raises(ImatrixError, match=r"blk\.3\.attn_q\.weight: no importance data"):
        check_imatrix(missing, embedded_gguf("F16"))
    extra = edited(golden)
    extra.sums["blk.9.attn_q.weight"], extra.counts["blk.9.attn_q.weight"] = (
        extra.sums["blk.0.attn_q.weight"],
        extra.counts["blk.0.attn_q.weight"],
    )
    with pytest.raises(ImatrixError, match=r"blk\.9\.attn_q\.weight, which .* does not"):
        check_imatrix(extra, embedded_gguf("F16"))


def test_a_truncated_legacy_file_is_refused(tmp_path):
    data = (GOLDEN / "tiny.imatrix.dat").read_bytes()
    (tmp_path / "short.dat").write_bytes(data[:5000])
    with pytest.raises(ImatrixError, match=r"values runs past the end"):
        load_imatrix(tmp_path / "short.dat")


def test_gguf_without_imatrix_metadata_is_refused():
    with pytest.raises(ImatrixError, match="missing imatrix metadata"):
        load_imatrix(embedded_gguf("F16"))


def test_legacy_file_layout_by_hand(tmp_path):
    """The .dat layout written by hand from save_imatrix_legacy's fields."""
    name = b"blk.0.attn_q.weight"
    values = np.array([2.0, 4.0, 6.0], dtype="<f4")
    data = (
        struct.pack("<ii", 1, len(name))
        + name
        + struct.pack("<ii", 2, 3)
        + values.tobytes()
        + struct.pack("<ii", 7, 5)
        + b"t.txt"
    )
    (tmp_path / "x.dat").write_bytes(data)
    imat = load_imatrix(tmp_path / "x.dat")
    assert (imat.chunk_count, imat.datasets, imat.legacy) == (7, ["t.txt"], True)
    np.testing.assert_array_equal(imat.importance()["blk.0.attn_q.weight"], [1.0, 2.0, 3.0])


# ---- the command line ------------------------------------------------------------------------------------
def test_cli_imatrix_writes_what_llama_imatrix_writes(golden, tmp_path, capsys, monkeypatch):
    from stablelm_lab.cli import main

    monkeypatch.chdir(DATA_DIR.parent)  # the dataset is recorded as given: data/calibration.txt
    out = tmp_path / "cli.imatrix.gguf"
    assert (
        main(
            [
                "imatrix",
                str(embedded_gguf("F16")),
                RUN["text"],
                "-o",
                str(out),
                "-c",
                str(RUN["chunk_size"]),
                "--chunks",
                str(RUN["chunks"]),
                "--process-output",
                "--quiet",
            ]
        )
        == 0
    )
    assert f"wrote {out}: 29 matrices, 8 chunks of 128 tokens (1024 tokens)" in capsys.readouterr().out
    ours = load_imatrix(out)
    assert ours.datasets == golden.datasets and ours.chunk_count == golden.chunk_count
    for name in golden.sums:
        assert relative_difference(ours.sums[name], golden.sums[name]) < SUMS_RTOL, name


def test_cli_quantize_refuses_a_bad_imatrix_in_one_line(golden, tmp_path, capsys):
    from stablelm_lab.cli import main

    bad = edited(golden)
    bad.counts["blk.1.ffn_gate.weight"][0] = 0
    save_imatrix(bad, tmp_path / "bad.gguf")
    code = main(
        [
            "quantize",
            str(embedded_gguf("F16")),
            str(tmp_path / "out.gguf"),
            "Q4_K_M",
            "--imatrix",
            str(tmp_path / "bad.gguf"),
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "blk.1.ffn_gate.weight has a count of 0" in err, err
    assert not (tmp_path / "out.gguf").exists()


def test_cli_quantize_passes_llama_quantizes_importance(golden, tmp_path, monkeypatch):
    """--imatrix FILE reaches quantize_gguf as {tensor: sums / count}, with the file's name, datasets and
    chunk count (llama-quantize records them as quantize.imatrix.* keys)."""
    from stablelm_lab.cli import main
    from stablelm_lab.mixes import quantize_file

    seen = {}

    def fake_quantize_gguf(src, dst, mix, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop here")

    monkeypatch.setattr(quantize_file, "quantize_gguf", fake_quantize_gguf)
    imatrix_file = str(GOLDEN / "tiny.imatrix.gguf")
    assert (
        main(
            [
                "quantize",
                str(embedded_gguf("F16")),
                str(tmp_path / "o.gguf"),
                "Q2_K",
                "--imatrix",
                imatrix_file,
                "--quiet",
            ]
        )
        == 1
    )
    vectors = seen["imatrix"]
    assert sorted(vectors) == sorted(golden.sums)
    for name, sums in golden.sums.items():
        np.testing.assert_array_equal(vectors[name], sums / np.float32(golden.counts[name][0]))
    assert (seen["imatrix_file"], seen["imatrix_dataset"], seen["imatrix_chunks"]) == (
        imatrix_file,
        RUN["text"],
        RUN["chunks"],
    )


def test_cli_quantize_with_imatrix_writes_llama_quantizes_file(tmp_path, monkeypatch):
    """End to end, with llama.cpp's files at both ends: the imatrix llama-imatrix collected on the embedded
    default (imatq's golden), read by load_imatrix, turned into importance vectors and handed to
    quantize_gguf by `stablelm-lab quantize --imatrix`, gives the Q4_K_M file llama-quantize --imatrix wrote."""
    import hashlib

    from stablelm_lab.cli import main

    golden = json.loads((Path(__file__).parent / "golden" / "quantize_imatrix" / "mixes.json").read_text())["default"]
    monkeypatch.chdir(DATA_DIR.parent)  # llama-quantize records the imatrix path as given
    out = tmp_path / "default.Q4_K_M.gguf"
    assert (
        main(["quantize", golden["source"], str(out), golden["mix"], "--imatrix", golden["imatrix_file"], "--quiet"])
        == 0
    )
    assert hashlib.sha256(out.read_bytes()).hexdigest() == golden["file_sha256"]
