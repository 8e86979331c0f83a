"""The embedded default in data/: found from any directory, shaped like StableLM-3B-4E1T, agreeing with
llama.cpp (data/llama_cpp_greedy.json, recorded by tools/llama_cpp_check.py), better than gzip."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T
from gguf import TokenType

from stablelm_lab import GGUFFile, StableLM, StableLMConfig, load_tokenizer
from stablelm_lab.container.default_model import (
    DATA_DIR,
    ENV_VAR,
    default_gguf,
    embedded_gguf,
    embedded_variants,
    held_out_text,
)
from stablelm_lab.mixes.rules import explain_mix
from stablelm_lab.text.generate import generate_ids
from stablelm_lab.train import evaluate

N_GREEDY = 32
NEAR_TIE = 0.05  # logits this close may order differently under another summation order
LOGIT_TOLERANCE = 2e-3  # ours vs llama.cpp's logits: same F16 weights, float32 sums in another order


@pytest.fixture(scope="module")
def path():
    return embedded_gguf()


@pytest.fixture(scope="module")
def model(path):
    return StableLM.from_gguf(path)


@pytest.fixture(scope="module")
def record():
    return json.loads((DATA_DIR / "llama_cpp_greedy.json").read_text())


# ---- finding the file ----------------------------------------------------------------------------------
def test_found_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert default_gguf() == DATA_DIR / "tiny-stablelm.F16.gguf"
    assert default_gguf().is_file()


def test_environment_variable_names_another_file(tmp_path, monkeypatch):
    other = tmp_path / "stablelm-3b-4e1t.Q4_K_M.gguf"
    other.write_bytes(b"GGUF")
    monkeypatch.setenv(ENV_VAR, str(other))
    assert default_gguf() == other


@pytest.mark.parametrize("where", ["missing.gguf", "."])
def test_environment_variable_pointing_nowhere_is_a_clear_error(tmp_path, monkeypatch, where):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / where))
    with pytest.raises(FileNotFoundError, match=f"{ENV_VAR}=.*(no file|a directory)"):
        default_gguf()


def test_an_unknown_variant_lists_the_shipped_ones():
    with pytest.raises(FileNotFoundError, match="Q4_K_M"):
        embedded_gguf("Q9_9")


def test_data_stays_under_40_mb():
    assert sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file()) < 40e6


# ---- the file is shaped like the real releases ----------------------------------------------------------
def test_shaped_like_stablelm_3b_4e1t(path):
    g = GGUFFile(path)
    c = StableLMConfig.from_gguf(g)
    assert c.n_rot * 4 == c.head_dim  # rotary on the first 25% of each head
    assert not c.parallel_residual and c.n_head_kv == c.n_head
    assert "output_norm.bias" in g.tensor_info  # LayerNorm with bias
    assert not np.array_equal(g.dequantize("output.weight"), g.dequantize("token_embd.weight"))  # untied
    for t in g.tensors:
        if len(t.shape) == 2:
            assert t.shape[-1] % 256 == 0, t.name  # K-quants apply to every matrix
            assert t.qtype == T.F16, t.name  # as convert_hf_to_gguf --outtype f16
        else:
            assert t.qtype == T.F32, t.name


def test_tokenizer_metadata_in_the_gpt_neox_style(path):
    meta = GGUFFile(path).metadata
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "olmo"
    assert tokens[:2] == ["<|endoftext|>", "<|padding|>"] and types[:2] == [TokenType.CONTROL] * 2
    runs = [t for t, kind in zip(tokens, types) if kind == TokenType.USER_DEFINED]
    assert sorted(runs, key=len) == [" " * n for n in range(2, 25)]
    assert meta["tokenizer.ggml.eos_token_id"] == 0 and meta["tokenizer.ggml.padding_token_id"] == 1


@pytest.mark.parametrize("variant", [v for v in embedded_variants() if v != "F16"])
def test_variants_hold_the_types_of_their_mix(path, variant):
    expected = {c.name: c.qtype for c in explain_mix(path, variant)}
    assert {t.name: t.qtype for t in GGUFFile(embedded_gguf(variant)).tensors} == expected


# ---- llama.cpp agrees -----------------------------------------------------------------------------------
def test_record_is_of_the_shipped_file(path, record):
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["model_sha256"], (
        "data/ changed: rerun tools/llama_cpp_check.py"
    )


def test_tokenizer_agrees_with_llama_cpp(path, record):
    assert load_tokenizer(path).encode(record["prompt"]).ids == record["prompt_tokens"]


def test_greedy_continuation_agrees_with_llama_cpp(model, record):
    ours = list(generate_ids(model, record["prompt_tokens"], N_GREEDY, do_sample=False, eos=None))
    theirs = record["greedy_tokens"]
    if ours != theirs:  # allowed only where llama.cpp's two best tokens are a near-tie and we took the other
        k = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        best, best_logit, runner_up, runner_up_logit = record["top2"][k]
        assert ours[k] == runner_up and best_logit - runner_up_logit < NEAR_TIE, (k, ours, theirs)


@torch.no_grad()
def test_logits_agree_with_llama_cpp(model, record):
    ids = record["prompt_tokens"] + record["greedy_tokens"]
    logits = model(ids[:-1])[0, len(record["prompt_tokens"]) - 1 :]  # one row per greedy step
    for row, (best, best_logit, runner_up, runner_up_logit) in zip(logits, record["top2"]):
        assert float(row[best]) == pytest.approx(best_logit, abs=LOGIT_TOLERANCE)
        assert float(row[runner_up]) == pytest.approx(runner_up_logit, abs=LOGIT_TOLERANCE)


# ---- quality ---------------------------------------------------------------------------------------------
def test_beats_gzip_on_held_out_text(model, path):
    text = held_out_text()[:24_000]
    assert evaluate.bits_per_byte(model, load_tokenizer(path), text) < evaluate.gzip_bits_per_byte(text)


def test_has_a_previous_token_head_and_an_induction_head(model, path):
    ids = load_tokenizer(path).encode(held_out_text()).ids[: model.config.n_ctx]
    assert evaluate.previous_token_scores(model, ids).max() > 0.5
    assert evaluate.induction_scores(model).max() > 0.3
