"""The stablelm-lab command, run in-process through ``main(argv)``: each subcommand's output against the
package's API on the same files, and the promise about errors (one line on stderr, a non-zero exit,
never a traceback), also checked once in a real subprocess."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from stablelm_lab import GGUFFile, StableLM, generate, load_tokenizer
from stablelm_lab.cli import build_parser, main
from stablelm_lab.mixes.rules import explain_mix
from stablelm_lab.testing import TRAINING_TEXT, TinySpec, train_neox_tokenizer, write_gguf

SPEC = TinySpec(n_vocab=512, n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, n_ctx=64, seed=3)
COMMANDS = ["inspect", "dequant", "quantize", "imatrix", "explain-mix", "generate", "compare", "bench"]


@pytest.fixture(scope="module")
def f32(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.F32.gguf"
    return write_gguf(path, SPEC, tokenizer=train_neox_tokenizer(400))


@pytest.fixture(scope="module")
def q4_k_m(f32, tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.Q4_K_M.gguf"
    assert main(["quantize", str(f32), str(path), "Q4_K_M", "--quiet"]) == 0
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    assert code != 0
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["--help"] if command is None else [command, "--help"])
    assert exit.value.code == 0
    assert "usage: stablelm-lab" in capsys.readouterr().out


def test_every_subcommand_is_there():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == COMMANDS


def test_inspect(f32, q4_k_m, capsys):
    code, out, _ = run(capsys, "inspect", q4_k_m)
    assert code == 0
    g = GGUFFile(q4_k_m)
    assert "file type MOSTLY_Q4_K_M (15)" in out
    for t in g.tensors:
        assert any(line.split()[:2] == [t.name, t.qtype.name] for line in out.splitlines()), t.name
    assert "tokenizer.ggml.tokens = [" in out and "items]" in out  # the vocabulary, abbreviated
    assert "bits per weight" in out


def test_dequant_stats_and_npy(f32, tmp_path, capsys):
    code, out, _ = run(capsys, "dequant", f32, "blk.1.ffn_down.weight", "--npy", tmp_path / "w.npy")
    w = GGUFFile(f32).dequantize("blk.1.ffn_down.weight")
    assert code == 0 and f"max {w.max():.6g}" in out and f"mean {w.astype(np.float64).mean():.6g}" in out
    np.testing.assert_array_equal(np.load(tmp_path / "w.npy"), w)


def test_quantize_and_explain_mix_agree(f32, q4_k_m, capsys):
    code, out, _ = run(capsys, "explain-mix", f32, "q4_k_m")
    assert code == 0
    for c in explain_mix(f32, "Q4_K_M"):
        assert any(
            line.startswith(c.name + " ") and f" {c.qtype.name} " in line and line.endswith(c.rule)
            for line in out.splitlines()
        ), c.name
    assert {t.name: t.qtype for t in GGUFFile(q4_k_m).tensors} == {c.name: c.qtype for c in explain_mix(f32, "Q4_K_M")}


def test_quantize_reports_what_it_wrote(f32, tmp_path, capsys):
    code, out, err = run(capsys, "quantize", f32, tmp_path / "q8.gguf", "Q8_0")
    assert code == 0 and "wrote" in out and "Q8_0" in out and "quantizing to Q8_0" in err


def test_generate_is_the_package_generate(f32, capsys):
    code, out, _ = run(capsys, "generate", f32, "The quick", "--greedy", "--max-new-tokens", "8")
    truth = generate(StableLM.from_gguf(f32), load_tokenizer(f32), "The quick", max_new_tokens=8, do_sample=False)
    assert code == 0 and out == "The quick" + truth + "\n"


def test_compare(f32, q4_k_m, capsys):
    code, out, _ = run(capsys, "compare", f32, q4_k_m, "--text", TRAINING_TEXT, "--n-ctx", "32")
    assert code == 0
    assert any(line.startswith("blk.1.attn_v.weight") and "F32" in line and "Q6_K" in line for line in out.splitlines())
    assert "Mean    KLD:" in out and "Same top p:" in out
    code, out, _ = run(capsys, "compare", f32, f32, "--no-kl")
    assert code == 0 and " inf " in out and "KLD" not in out


def test_bench(monkeypatch, capsys):
    import stablelm_lab.analysis.bench

    monkeypatch.setattr(stablelm_lab.analysis.bench, "copy_bandwidth", lambda: 1e10)
    code, out, _ = run(capsys, "bench", "--rows", 4, "--cols", 256, "--repeat", 1, "--formats", "Q4_0,Q6_K")
    assert code == 0 and "| Q4_0 |" in out and "| Q6_K |" in out


@pytest.mark.parametrize(
    "device, says",
    [("cuda:99", "CUDA device(s) here"), ("gpu", "unknown torch device"), ("meta", "times the CPU or a CUDA GPU")],
)
def test_bench_refuses_a_device_it_cannot_time(device, says, capsys):
    assert_one_line_error(*run(capsys, "bench", "--device", device, "--formats", "Q4_0")[::2], says)


# ---- errors -----------------------------------------------------------------------------------------------
def test_missing_file(capsys, tmp_path):
    assert_one_line_error(*run(capsys, "inspect", tmp_path / "nope.gguf")[::2], "nope.gguf")


def test_not_a_gguf(capsys, tmp_path):
    (tmp_path / "x.gguf").write_text("hello")
    assert_one_line_error(*run(capsys, "dequant", tmp_path / "x.gguf", "t")[::2], "not a GGUF file")


def test_unknown_tensor_suggests_names(f32, capsys):
    assert_one_line_error(*run(capsys, "dequant", f32, "attn_q")[::2], "no tensor 'attn_q'", "blk.0.attn_q.weight")


def test_unknown_mix_and_wrong_model(f32, tmp_path, capsys):
    assert_one_line_error(*run(capsys, "quantize", f32, tmp_path / "o.gguf", "Q4_K_XL")[::2], "unknown mix")
    assert not (tmp_path / "o.gguf").exists()
    llama = write_gguf(tmp_path / "llama.gguf", architecture="llama")
    assert_one_line_error(*run(capsys, "explain-mix", llama, "Q4_0")[::2], "not a StableLM")


def test_text_too_short_for_kl(f32, q4_k_m, capsys):
    assert_one_line_error(*run(capsys, "compare", f32, q4_k_m, "--text", "too short")[::2], "you need at least")


@pytest.mark.parametrize(
    "argv", [["quantize", "a.gguf"], ["generate", "f.gguf", "p", "--max-new-tokens", "x"], ["frobnicate"], []]
)
def test_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        main(argv)
    assert_one_line_error(exit.value.code, capsys.readouterr().err, "error:")


def test_as_a_process_no_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "stablelm_lab.cli", "explain-mix", str(tmp_path / "missing.gguf"), "Q4_K_M"],
        capture_output=True,
        text=True,
    )
    assert_one_line_error(done.returncode, done.stderr, "stablelm-lab explain-mix: error:", "missing.gguf")
