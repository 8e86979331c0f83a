"""The model against outside truth: transformers' StableLmForCausalLM (float32, eager attention) holding the
weights that gguf-py decodes from the same file, and torch's own layer_norm / complex rotation for the parts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from devices import TORCH_DEVICES
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader

from stablelm_lab import GGUFError, StableLM, quants
from stablelm_lab.model import LayerNorm, Rotary
from stablelm_lab.model.layers import rotate
from stablelm_lab.model.weights import LeanWeights
from stablelm_lab.testing import (
    TinySpec,
    every_type_mix,
    q4_k_m_mix,
    random_weights,
    transformers_model,
    uniform,
    write_gguf,
)
from stablelm_lab.text.generate import generate_ids

GOLDEN = Path(__file__).parent / "golden"
LOGITS_ATOL = 1e-4  # measured on the CPU: max 8.0e-6 (ATEN_CPU_CAPABILITY=default), 5.3e-6 (avx2), 4.6e-6 (avx512)

SPECS = {
    # StableLM-3B-4E1T's shape in small: sequential residual, rotary on a quarter of each head
    "sequential-gqa-rot0.25": TinySpec(n_head_kv=2, n_rot=16),
    # StableLM 2 12B's features: parallel residual, per-head q/k norms, q/k/v biases, rotary on half
    "parallel-qknorm-bias-rot0.5": TinySpec(
        n_head_kv=4, n_rot=32, parallel_residual=True, qkv_bias=True, qk_norm=True, rope_base=500.0, seed=1
    ),
    # StableLM 2 1.6B's: biases, sequential, one KV head, an odd rotary width
    "sequential-mqa-bias-rot24": TinySpec(n_layer=3, n_head_kv=1, n_rot=24, qkv_bias=True, seed=2),
}


def prompt(n=24, seed=0, vocab=512):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, vocab, size=(2, n)))


@pytest.fixture(scope="module", params=list(SPECS))
def pair(request, tmp_path_factory):
    """(our model, transformers' model, spec) on one float32 file."""
    spec = SPECS[request.param]
    path = write_gguf(tmp_path_factory.mktemp("m") / "f32.gguf", spec)
    return StableLM.from_gguf(path), transformers_model(path, spec), spec


# ---- layers ----------------------------------------------------------------------------------------
def layer_norm_formula(x, weight, bias=None, eps=1e-5):
    """(x - mean) / sqrt(var + eps) * weight + bias over the last dim, biased variance, in float64."""
    x = x.double()
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps) * weight.double()
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layernorm_is_the_formula(dtype):
    norm = LayerNorm((64,), eps=1e-5)
    norm.weight = torch.nn.Parameter(torch.randn(64, dtype=dtype), requires_grad=False)
    norm.bias = torch.nn.Parameter(torch.randn(64, dtype=dtype), requires_grad=False)
    x = (torch.randn(3, 5, 64) * 3 + 1).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bfloat16 keeps 8 bits of mantissa
    torch.testing.assert_close(norm(x).double(), layer_norm_formula(x, norm.weight, norm.bias), atol=tol, rtol=tol)


def test_per_head_layernorm_is_the_formula_for_each_head():
    norm = LayerNorm((4, 16), eps=1e-5, bias=False)  # StableLM 2's q/k norm: a weight per head
    norm.weight = torch.nn.Parameter(torch.randn(4, 16), requires_grad=False)
    x = torch.randn(2, 3, 4, 16) * 2 - 1
    torch.testing.assert_close(norm(x).double(), layer_norm_formula(x, norm.weight), atol=1e-5, rtol=1e-5)


def test_rotary_turns_pairs_i_and_i_plus_half():
    n_rot, head_dim, base = 20, 80, 10000.0  # StableLM-3B-4E1T
    x = torch.randn(1, 7, 3, head_dim, dtype=torch.float64)
    pos = torch.arange(5, 12)
    out = rotate(x.float(), Rotary(n_rot, base)(pos, torch.float32)).double()
    # the same rotation as complex multiplication: (x_i + j x_{i+10}) * e^{j pos theta_i}
    theta = base ** (-torch.arange(0, n_rot, 2, dtype=torch.float64) / n_rot)
    z = torch.complex(x[..., : n_rot // 2], x[..., n_rot // 2 : n_rot]) * torch.polar(
        torch.ones(7, 1, n_rot // 2, dtype=torch.float64), pos[:, None, None].double() * theta
    )
    expected = torch.cat([z.real, z.imag, x[..., n_rot:]], dim=-1)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[..., n_rot:], x[..., n_rot:])  # dims past n_rot untouched


# ---- the whole model, float32 ----------------------------------------------------------------------
@torch.no_grad()
def test_logits_match_transformers(pair):
    ours, hf, spec = pair
    ids = prompt(24)
    diff = (ours(ids) - hf(ids).logits).abs().max().item()
    assert diff < LOGITS_ATOL, diff


@torch.no_grad()
def test_hidden_states_per_layer(pair):
    ours, hf, spec = pair
    ids = prompt(16, seed=1)
    logits, acts = ours.run_with_cache(ids)
    hidden = hf(ids, output_hidden_states=True).hidden_states  # embeddings, each layer, final norm
    mine = [acts["inp_embd"]] + [acts[f"blk.{i}.l_out"] for i in range(spec.n_layer - 1)] + [acts["result_norm"]]
    assert len(hidden) == len(mine)
    for i, (a, b) in enumerate(zip(mine, hidden)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"hidden state {i}")


@torch.no_grad()
def test_attention_probabilities_match_transformers(pair):
    ours, hf, spec = pair
    ids = prompt(12, seed=2)
    _, acts = ours.run_with_cache(ids)
    attentions = hf(ids, output_attentions=True).attentions
    for i in range(spec.n_layer):
        torch.testing.assert_close(acts[f"blk.{i}.kq_soft_max"], attentions[i], atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_kv_cache_decoding_equals_full_recomputation(pair):
    ours, hf, spec = pair
    ids = prompt(20, seed=3)
    full = hf(ids).logits
    cache = ours.new_cache()
    steps = (
        [ours(ids[:, :8], cache)] + [ours(ids[:, t : t + 1], cache) for t in range(8, 17)] + [ours(ids[:, 17:], cache)]
    )
    assert len(cache) == 20
    assert (torch.cat(steps, dim=1) - full).abs().max().item() < LOGITS_ATOL


@torch.no_grad()
def test_greedy_tokens_match_transformers(pair):
    ours, hf, spec = pair
    ids = prompt(6, seed=4)[0]
    theirs = hf.generate(ids[None], max_new_tokens=32, do_sample=False, pad_token_id=0)[0, 6:].tolist()
    assert list(generate_ids(ours, ids.tolist(), max_new_tokens=32, do_sample=False)) == theirs


@torch.no_grad()
def test_hook_patches_like_a_forward_hook_on_transformers(pair):
    ours, hf, spec = pair
    ids = prompt(10, seed=5)
    ablated = ours.run_with_hooks(ids, {"blk.0.attn_out": lambda x: torch.zeros_like(x)})
    handle = hf.model.layers[0].self_attn.o_proj.register_forward_hook(lambda m, i, out: torch.zeros_like(out))
    try:
        expected = hf(ids).logits
    finally:
        handle.remove()
    assert (ablated - expected).abs().max().item() < LOGITS_ATOL
    assert (ablated - ours(ids)).abs().max().item() > 1e-2  # the patch did something


def test_activation_names_are_llama_cpp_graph_names(pair):
    ours, hf, spec = pair
    _, acts = ours.run_with_cache(prompt(4))
    assert list(acts) == ours.activation_names()
    assert {
        "blk.0.attn_norm",
        "blk.0.Qcur",
        "blk.0.Kcur",
        "blk.0.Vcur",
        "blk.0.kq_soft_max",
        "blk.0.attn_out",
        "blk.0.ffn_inp",
        "blk.0.ffn_out",
        "blk.0.l_out",
        "result_norm",
    } <= set(acts)
    assert acts["blk.0.Qcur"].shape == (2, 4, spec.n_head, spec.head_dim)
    assert acts["blk.0.Kcur"].shape == (2, 4, spec.n_head_kv, spec.head_dim)
    with pytest.raises(KeyError, match="no activations named"):
        ours.run_with_hooks(prompt(4), {"blk.0.nonsense": lambda x: x})


# ---- quantized files: the target is "decode with gguf-py, then float32" -------------------------------
QUANT_CASES = {
    "Q8_0": uniform(T.Q8_0),
    "Q4_0": uniform(T.Q4_0),
    "Q4_K_M-like": q4_k_m_mix,
    "every-type": every_type_mix(
        [
            T.F16,
            T.BF16,
            T.Q4_0,
            T.Q4_1,
            T.Q5_0,
            T.Q5_1,
            T.Q8_0,
            T.Q2_K,
            T.Q3_K,
            T.Q4_K,
            T.Q5_K,
            T.Q6_K,
            T.IQ4_NL,
            T.IQ4_XS,
        ]
    ),
}


def require_formats(path):
    missing = sorted({t.tensor_type.name for t in GGUFReader(str(path)).tensors} - {q.name for q in quants.FORMATS})
    if missing:
        pytest.skip(f"quant formats not implemented yet: {missing}")


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("lean", [False, True], ids=["dense", "lean"])
@pytest.mark.parametrize("case", list(QUANT_CASES))
@torch.no_grad()
def test_quantized_file_matches_transformers_on_gguf_py_weights(case, lean, device, tmp_path):
    spec = TinySpec(n_head_kv=2, seed=7, qkv_bias=True)
    path = write_gguf(tmp_path / f"{case}.gguf", spec, types=QUANT_CASES[case])
    require_formats(path)
    ours = StableLM.from_gguf(path, lean=lean, device=device)
    hf = transformers_model(path, spec)
    ids = prompt(16, seed=8)
    logits = ours(ids)
    assert logits.device.type == device
    assert (logits.cpu() - hf(ids).logits).abs().max().item() < LOGITS_ATOL
    file_types = {t.name: t.tensor_type for t in GGUFReader(str(path)).tensors}
    assert ours.weight_types == file_types
    quantized = file_types["blk.0.attn_q.weight"] not in (T.F32, T.F16, T.BF16)
    assert isinstance(ours.blk[0].attn.attn_q.weights, LeanWeights) == (lean and quantized)  # kept as bytes


@torch.no_grad()
def test_lean_weights_decode_to_the_dense_weights(tmp_path):
    """A lean layer shows its matrix as the dense one holds it, and looks up embedding rows alike."""
    path = write_gguf(tmp_path / "m.gguf", TinySpec(), types=q4_k_m_mix)
    dense, lean = StableLM.from_gguf(path), StableLM.from_gguf(path, lean=True)
    assert isinstance(lean.output.weights, LeanWeights) and lean.output.weights.raw.dtype == torch.uint8
    assert torch.equal(lean.output.weight, dense.output.weight)
    ids = prompt(5)
    assert torch.equal(lean.token_embd(ids), dense.token_embd(ids))


def test_lean_matrices_give_the_dense_gradients(tmp_path):
    """Lean mode decodes every matrix into one reused scratch buffer, except when autograd keeps the
    decoded weight for backward: gate and up both feed the product, so a shared buffer would show."""
    path = write_gguf(tmp_path / "m.gguf", TinySpec(), types=q4_k_m_mix)
    grads = []
    for lean in (False, True):
        ffn = StableLM.from_gguf(path, lean=lean).blk[0].ffn
        x = torch.randn(2, 3, 256, generator=torch.Generator().manual_seed(0), requires_grad=True)
        (ffn.ffn_gate(x) * ffn.ffn_up(x)).sum().backward()
        grads.append(x.grad)
    assert torch.equal(grads[0], grads[1])


@torch.no_grad()
def test_lean_models_in_two_threads_do_not_share_a_band(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", TinySpec(n_ff=4096), types=q4_k_m_mix)
    model = StableLM.from_gguf(path, lean=True)
    inputs = [prompt(8, seed=s) for s in range(8)]
    alone = [model(ids) for ids in inputs]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(model, inputs))
    assert all(torch.equal(a, b) for a, b in zip(alone, together))


@pytest.mark.parametrize("lean", [False, True], ids=["dense", "lean"])
@pytest.mark.parametrize("device", TORCH_DEVICES)
@torch.no_grad()
def test_cached_decoding_and_greedy_tokens_on_each_device(device, lean, tmp_path):
    spec = TinySpec(n_head_kv=2, seed=9)
    path = write_gguf(tmp_path / "m.gguf", spec, types=q4_k_m_mix)
    ours = StableLM.from_gguf(path, device=device, lean=lean)
    hf = transformers_model(path, spec)
    ids = prompt(12, seed=10)
    cache = ours.new_cache()
    steps = [ours(ids[:, :8], cache)] + [ours(ids[:, t : t + 1], cache) for t in range(8, 12)]
    assert (torch.cat(steps, dim=1).cpu() - hf(ids).logits).abs().max().item() < LOGITS_ATOL

    theirs = hf.generate(ids[:1, :6], max_new_tokens=24, do_sample=False, pad_token_id=0)[0, 6:].tolist()
    assert list(generate_ids(ours, ids[0, :6].tolist(), max_new_tokens=24, do_sample=False)) == theirs


@pytest.mark.parametrize("name", ["Q4_K", "Q6_K", "Q8_0", "Q2_K"])
@torch.no_grad()
def test_files_quantized_by_llama_cpp(name):
    """The golden tiny files made with llama.cpp's own quantizer (tools/make_golden_quants.py)."""
    path = GOLDEN / f"tiny_stablelm.{name}.gguf"
    require_formats(path)
    ours = StableLM.from_gguf(path)
    hf = transformers_model(path, ours.config)
    ids = prompt(12, vocab=ours.config.n_vocab)
    assert (ours(ids) - hf(ids).logits).abs().max().item() < LOGITS_ATOL


# ---- dtypes, errors --------------------------------------------------------------------------------
@torch.no_grad()
def test_bfloat16_is_close_to_float32(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", TinySpec())
    ids = prompt(8)
    full = StableLM.from_gguf(path)(ids)
    half = StableLM.from_gguf(path, dtype=torch.bfloat16)(ids)
    assert half.dtype == torch.bfloat16
    # measured 0.78% of the largest logit (ATEN_CPU_CAPABILITY=default, avx2, avx512): bfloat16's 8 bits
    assert (half.float() - full).abs().max().item() < 0.05 * full.abs().max().item()


def test_a_llama_file_is_refused(tmp_path):
    path = write_gguf(tmp_path / "llama.gguf", architecture="llama")
    with pytest.raises(GGUFError, match="not a StableLM"):
        StableLM.from_gguf(path)


def test_a_file_missing_tensors_is_refused(tmp_path):
    weights = random_weights(TinySpec())
    del weights["blk.1.ffn_up.weight"]
    path = write_gguf(tmp_path / "cut.gguf", weights=weights)
    with pytest.raises(GGUFError, match="lacks tensors a StableLM needs: blk.1.ffn_up.weight"):
        StableLM.from_gguf(path)


# ---- llama.cpp itself: golden logits made by tools/make_golden_logits.py ----------------------------
@pytest.fixture(scope="module")
def llama_cpp_golden():
    with np.load(GOLDEN / "tiny_model_logits.npz") as npz:
        return dict(npz)


@torch.no_grad()
def test_float32_file_matches_llama_cpp(llama_cpp_golden):
    ours = StableLM.from_gguf(GOLDEN / "tiny_model.F32.gguf")(llama_cpp_golden["tokens"])[0].numpy()
    # measured max |diff| 2.1e-6 (ATEN_CPU_CAPABILITY=default), 1.9e-6 (avx2, avx512)
    np.testing.assert_allclose(ours, llama_cpp_golden["logits/F32"], atol=2e-5, rtol=0)


@pytest.mark.parametrize("mix", ["Q8_0", "Q4_K_M"])
@torch.no_grad()
def test_quantized_files_agree_with_llama_cpp(llama_cpp_golden, mix):
    """llama.cpp rounds activations to Q8_0/Q8_K inside its quantized matmuls, so the logits differ a
    little from "decode the weights, then float32". Measured on these files: Q8_0 max |diff| 0.026,
    argmax 24/24, KL max 4e-5; Q4_K_M max |diff| 0.034, argmax 23/24 (a near tie), KL max 6e-5."""
    path = GOLDEN / f"tiny_model.{mix}.gguf"
    require_formats(path)
    ours = StableLM.from_gguf(path)(llama_cpp_golden["tokens"])[0]
    theirs = torch.from_numpy(llama_cpp_golden[f"logits/{mix}"])
    log_p, log_q = theirs.log_softmax(-1), ours.log_softmax(-1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)  # KL(llama.cpp || ours) per position
    assert kl.max().item() < 1e-3
    assert (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item() >= 0.9
