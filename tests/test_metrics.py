"""The metrics against hand-derived values and independent references: toy models whose perplexity is
known in closed form (which positions llama-perplexity scores, and what predicts what), and
transformers' StableLmForCausalLM with torch's own cross_entropy and kl_div on the same files."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stablelm_lab import StableLM, load_tokenizer
from stablelm_lab.analysis.metrics import (
    KLDivergence,
    Perplexity,
    chunks,
    kl_divergence,
    max_abs_error,
    mean_and_uncertainty,
    percentile,
    perplexity,
    rmse,
    snr_db,
    tensor_error,
)
from stablelm_lab.mixes.quantize_file import quantize_gguf
from stablelm_lab.testing import TRAINING_TEXT, TinySpec, train_neox_tokenizer, transformers_model, write_gguf


# ---- tensors ---------------------------------------------------------------------------------------------
def test_tensor_errors_by_hand():
    ref = np.array([1.0, -1.0, 1.0, -1.0], dtype=np.float32)
    approx = np.array([1.5, -1.0, 1.0, -1.0], dtype=np.float32)
    assert rmse(ref, approx) == pytest.approx(0.25)  # sqrt(0.5² / 4)
    assert snr_db(ref, approx) == pytest.approx(10 * math.log10(16))  # Σref² = 4, Σerr² = 0.25
    assert max_abs_error(ref, approx) == 0.5
    assert snr_db(ref, ref) == float("inf")
    assert tensor_error(torch.from_numpy(ref), approx) == tensor_error(ref, approx)
    with pytest.raises(ValueError, match="shapes differ"):
        tensor_error(ref, approx[:3])


def test_statistics_helpers_by_hand():
    assert percentile(np.array([0.0, 1, 2, 3]), 0.5) == 1.5  # between the 2nd and 3rd value
    assert percentile(np.array([0.0, 1, 2, 3]), 0.999) == pytest.approx(2.997)
    values = np.arange(12, dtype=np.float64)  # mean 5.5, population var 143/12
    assert mean_and_uncertainty(values) == pytest.approx((5.5, math.sqrt(143 / 12 / 11)))
    assert mean_and_uncertainty(values[:10])[1] == 0.0  # llama.cpp: no error below 11 values


# ---- toy models with a closed-form perplexity ---------------------------------------------------------------
class ToyModel:
    """Logits L at one token per position, 0 elsewhere: p(peak) = e^L / (e^L + V - 1).

    At positions >= wrong_before it peaks on the token that follows in the text (input + 1 mod V), before
    that on a wrong one, so the perplexity tells which positions were scored."""

    def __init__(self, n_vocab=16, peak=3.0, wrong_before=0, n_ctx=64):
        self.config = SimpleNamespace(n_vocab=n_vocab, n_ctx=n_ctx)
        self.device = torch.device("cpu")
        self.peak, self.wrong_before = peak, wrong_before

    def __call__(self, ids):
        n_vocab = self.config.n_vocab
        target = (ids + 1) % n_vocab
        positions = torch.arange(ids.shape[1])[None, :]
        target = torch.where(positions < self.wrong_before, (ids + 5) % n_vocab, target)
        return F.one_hot(target, n_vocab).float() * self.peak


def counting_tokens(n, n_vocab=16):
    return [i % n_vocab for i in range(n)]


def test_uniform_model_has_perplexity_n_vocab():
    ppl = perplexity(ToyModel(n_vocab=16, peak=0.0), counting_tokens(100), n_ctx=32)
    assert ppl.value == pytest.approx(16.0, rel=1e-12) and ppl.uncertainty < 1e-6
    assert (ppl.n_chunks, ppl.n_tokens) == (3, 3 * (32 - 16 - 1))  # 100 // 32 chunks, the rest dropped


def test_logits_at_t_predict_token_t_plus_1_on_the_second_half_only():
    n_vocab, peak, n_ctx = 16, 3.0, 32
    p = math.exp(peak) / (math.exp(peak) + n_vocab - 1)
    ppl = perplexity(ToyModel(n_vocab, peak, wrong_before=n_ctx // 2), counting_tokens(96), n_ctx=n_ctx)
    assert ppl.value == pytest.approx(1 / p, rel=1e-12)
    # wrong at position n_ctx/2 too: exactly the first scored token of each chunk pays for it
    nll = perplexity(ToyModel(n_vocab, peak, wrong_before=n_ctx // 2 + 1), counting_tokens(96), n_ctx=n_ctx).nll
    wrong, right = math.log(math.exp(peak) + n_vocab - 1), -math.log(p)
    np.testing.assert_allclose(nll.reshape(3, 15), [[wrong] + [right] * 14] * 3, rtol=1e-12)


def test_kl_divergence_of_toy_models_by_hand():
    n_vocab, n_ctx = 16, 32
    base, other = ToyModel(n_vocab, peak=3.0), ToyModel(n_vocab, peak=2.0)
    kld = kl_divergence(base, other, counting_tokens(64), n_ctx=n_ctx)
    p = np.exp([3.0] + [0.0] * 15) / (np.exp(3.0) + 15)
    q = np.exp([2.0] + [0.0] * 15) / (np.exp(2.0) + 15)
    assert kld.per_position == pytest.approx(np.full(2 * 15, np.sum(p * np.log(p / q))), rel=1e-12)
    assert kld.top1_agreement == 1.0 and kld.p_diff == pytest.approx(q[0] - p[0])
    assert kld.ppl_base.value == pytest.approx(1 / p[0]) and kld.ppl.value == pytest.approx(1 / q[0])


def test_chunks_as_llama_perplexity_cuts_them():
    ids = chunks(list(range(10, 30)), n_ctx=8, add_bos=True, bos_id=0)
    assert ids.tolist() == [[0, 11, 12, 13, 14, 15, 16, 17], [0, 19, 20, 21, 22, 23, 24, 25]]
    with pytest.raises(ValueError, match="at least 16 tokens.*only 15"):
        chunks(list(range(15)), n_ctx=8)


def test_a_text_needs_a_tokenizer():
    with pytest.raises(ValueError, match="needs a tokenizer"):
        perplexity(ToyModel(), "some text", n_ctx=8)


def test_report_prints_llama_perplexity_lines():
    rng = np.random.default_rng(0)
    nll_base = rng.uniform(0.5, 3, 200)
    kld = KLDivergence(
        rng.uniform(0, 0.1, 200),
        nll_base,
        nll_base + rng.normal(0, 0.05, 200),
        rng.random(200) < 0.9,
        n_ctx=64,
        n_chunks=5,
    )
    report = kld.report()
    assert f"Mean    KLD: {kld.mean:10.6f} ±" in report
    assert f"Same top p: {100 * kld.top1_agreement:6.3f} ±" in report
    assert f"Mean PPL(Q)                   : {kld.ppl.value:10.6f}" in report
    assert f"Median  KLD: {np.median(kld.per_position):10.6f}" in report
    assert "RMS Δp" in report and "Cor(ln(PPL(Q)), ln(PPL(base)))" in report
    assert str(Perplexity(nll_base, 64, 5)).startswith(f"PPL = {np.exp(nll_base.mean()):.4f} +/- ")


# ---- a tiny StableLM against transformers -------------------------------------------------------------------
SPEC = TinySpec(n_vocab=512, n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, n_ctx=64, seed=7)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    f32 = write_gguf(tmp / "f32.gguf", SPEC, tokenizer=train_neox_tokenizer(400))
    quantize_gguf(f32, tmp / "q4_0.gguf", "Q4_0", progress=False)
    return {"F32": f32, "Q4_0": tmp / "q4_0.gguf"}


def hf_log_probs(path, ids: np.ndarray) -> torch.Tensor:
    """transformers' log-probabilities at the positions llama-perplexity scores, float64."""
    with torch.no_grad():
        logits = transformers_model(path, SPEC)(torch.from_numpy(ids)).logits
    first = ids.shape[1] // 2
    return torch.log_softmax(logits[:, first:-1].double(), dim=-1)


def test_perplexity_is_transformers_cross_entropy(files):
    tokens = np.random.default_rng(1).integers(0, SPEC.n_vocab, 200).tolist()
    ppl = perplexity(StableLM.from_gguf(files["Q4_0"]), tokens, n_ctx=32)
    ids = chunks(tokens, 32)
    lp = hf_log_probs(files["Q4_0"], ids)
    nll = F.cross_entropy(lp.reshape(-1, SPEC.n_vocab), torch.from_numpy(ids[:, 17:]).reshape(-1), reduction="none")
    np.testing.assert_allclose(ppl.nll, nll.numpy(), atol=2e-5)


def test_kl_divergence_is_torch_kl_div_on_transformers(files):
    tokens = np.random.default_rng(2).integers(0, SPEC.n_vocab, 160).tolist()
    kld = kl_divergence(StableLM.from_gguf(files["F32"]), StableLM.from_gguf(files["Q4_0"]), tokens, n_ctx=32)
    ids = chunks(tokens, 32)
    lp_base, lp_q = hf_log_probs(files["F32"], ids), hf_log_probs(files["Q4_0"], ids)
    truth = F.kl_div(lp_q, lp_base, log_target=True, reduction="none").sum(-1).reshape(-1)
    np.testing.assert_allclose(kld.per_position, truth.numpy(), rtol=1e-3, atol=1e-7)
    assert kld.mean > 0
    np.testing.assert_array_equal(kld.same_top, (lp_base.argmax(-1) == lp_q.argmax(-1)).reshape(-1).numpy())


def test_a_model_against_itself(files):
    model = StableLM.from_gguf(files["Q4_0"])
    kld = kl_divergence(model, model, np.arange(128) % SPEC.n_vocab, n_ctx=32)
    assert np.abs(kld.per_position).max() < 1e-12 and kld.top1_agreement == 1.0
    assert np.all(kld.p_diff == 0)
    assert torch.is_grad_enabled(), "scoring left autograd switched off for the caller"


def test_paths_bring_their_tokenizer(files):
    text = TRAINING_TEXT
    by_path = perplexity(files["F32"], text, n_ctx=32)
    by_model = perplexity(StableLM.from_gguf(files["F32"]), text, tokenizer=load_tokenizer(files["F32"]), n_ctx=32)
    np.testing.assert_array_equal(by_path.nll, by_model.nll)
    assert kl_divergence(files["F32"], files["Q4_0"], text, n_ctx=32).n_chunks == by_path.n_chunks
