"""Sampling against both references: transformers' own logits warpers and generate (the model card's
order), and llama.cpp's own samplers (its default chain, golden file made by tools/make_golden_sampling.py)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from stablelm_lab.text import sampling
from stablelm_lab.text.sampling import card_probs, llama_cpp_probs

GOLDEN = Path(__file__).parent / "golden"


# ---- hand derivations ---------------------------------------------------------------------------------
def test_top_p_keeps_the_token_that_reaches_it():
    # four equal logits: probabilities exactly 1/4 each; the first two reach top_p = 0.5 exactly
    for probs in (card_probs(torch.zeros(4), 1.0, None, 0.5), llama_cpp_probs(torch.zeros(4), 0, 0.5, 0.0, 1.0)):
        assert sorted(probs.tolist()) == [0.0, 0.0, 0.5, 0.5]
    # the example: [.5, .25, .25] at top_p 0.5 keeps only the first
    probs = card_probs(torch.log(torch.tensor([0.5, 0.25, 0.25])), 1.0, None, 0.5)
    torch.testing.assert_close(probs, torch.tensor([1.0, 0.0, 0.0]))


def test_temperature_divides_the_logits():
    # softmax(log p / T) is p^(1/T) renormalized: at T = 0.5, [.5, .25, .25] -> [.25, .0625, .0625] / .375
    logits = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    expected = torch.tensor([2 / 3, 1 / 6, 1 / 6])
    torch.testing.assert_close(card_probs(logits, 0.5, None, 1.0), expected)
    torch.testing.assert_close(llama_cpp_probs(logits, 0, 1.0, 0.0, 0.5), expected)


def test_the_two_orders_differ_where_temperature_moves_the_cut():
    # probabilities [.6, .3, .1]: top_p 0.8 keeps two tokens untempered; at temperature 3 the flattened
    # distribution needs all three to reach 0.8 (transformers), while llama.cpp cut before tempering
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    assert int((card_probs(logits, 3.0, None, 0.8) > 0).sum()) == 3
    assert int((llama_cpp_probs(logits, 0, 0.8, 0.0, 3.0) > 0).sum()) == 2


def test_min_p_keeps_tokens_at_the_floor():
    logits = torch.tensor([0.0, float(np.log(np.float32(0.25))), -3.0])
    assert (llama_cpp_probs(logits, 0, 1.0, 0.25, 1.0) > 0).tolist() == [True, True, False]


def test_bad_temperature_is_refused():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        card_probs(torch.zeros(3), 0.0)


# ---- transformers' warpers, on many random vectors ------------------------------------------------------
def random_cases(n_cases=400, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        n = int(rng.choice([3, 10, 64, 1000]))
        logits = rng.normal(0, rng.uniform(0.2, 5), n)
        if i % 3 == 0:
            logits = np.round(logits)  # many ties, also at the top-k and top-p cut-offs
        if i % 7 == 0:
            logits = np.zeros(n)  # all tied: probabilities exact, sums hit top_p
        yield (
            torch.tensor(logits, dtype=torch.float32),
            float(rng.choice([0.1, 0.5, 0.75, 1.0, 1.3, 2.0])),
            [None, 1, 2, 5, 50, 2000][int(rng.integers(6))],
            float(rng.choice([0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 1.0])),
        )


def transformers_warped(logits, temperature, top_k, top_p):
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList()  # generation/utils.py's order and conditions
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k is not None and top_k != 0:
        warpers.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p=top_p))
    return warpers(torch.zeros(1, 1, dtype=torch.long), logits[None].clone())[0]


def test_card_order_equals_transformers_warpers():
    for logits, temperature, top_k, top_p in random_cases():
        theirs = transformers_warped(logits, temperature, top_k, top_p)
        ours = sampling.card_filter(logits, temperature, top_k, top_p)
        where = f"T={temperature} top_k={top_k} top_p={top_p} logits={logits[:6].tolist()}"
        assert torch.equal(torch.isfinite(ours), torch.isfinite(theirs)), where  # the same kept set
        torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1), rtol=0, atol=0, msg=where)


# ---- llama.cpp's own samplers (golden) -------------------------------------------------------------------
def llama_cpp_golden_cases():
    with np.load(GOLDEN / "llama_cpp_sampling.npz") as npz:
        data = dict(npz)
    return [{k: data[f"{i}/{k}"] for k in ("logits", "settings", "kept", "probs")} for i in range(len(data) // 4)]


def test_llama_cpp_chain_equals_llama_cpp():
    cases = llama_cpp_golden_cases()
    assert len(cases) >= 40
    for case in cases:
        top_k, top_p, min_p, temperature = case["settings"]
        probs = llama_cpp_probs(torch.from_numpy(case["logits"]), int(top_k), top_p, min_p, temperature)
        kept = probs.nonzero()[:, 0].numpy()
        where = f"settings {case['settings'].tolist()}"
        if len(np.unique(case["logits"])) == len(case["logits"]):
            assert kept.tolist() == case["kept"].tolist(), where
            theirs = case["probs"]
        else:  # tied logits: which of them stay is up to std::partial_sort's order; how many is not
            assert len(kept) == len(case["kept"]), where
            theirs = case["probs"][np.argsort(-case["probs"], kind="stable")]
            kept = kept[np.argsort(-probs[kept].numpy(), kind="stable")]
        # measured max |diff| 6e-8 (ATEN_CPU_CAPABILITY default, avx2, avx512): llama.cpp divides by a double sum
        np.testing.assert_allclose(probs[kept].numpy(), theirs, rtol=0, atol=6e-7, err_msg=where)


def test_llama_cpp_defaults_are_common_h():
    # common/common.h, common_params_sampling: top_k 40, top_p 0.95f, min_p 0.05f, temp 0.80f
    assert sampling.LLAMA_CPP == sampling.Sampling("llama.cpp", temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)


# ---- the defaults are the card's call: generate and the CLI against transformers' generate ---------------
CARD_CALL = {"temperature": 0.75, "top_p": 0.95, "top_k": 50}  # top_k: transformers' GenerationConfig default


def test_generate_and_cli_defaults_are_the_cards_call():
    from transformers import GenerationConfig

    from stablelm_lab import generate
    from stablelm_lab.cli import build_parser

    # transformers 5 fills unset fields from here (generation/configuration_utils.py); 4.x had top_k=50 inline
    assert GenerationConfig._get_default_generation_params()["top_k"] == CARD_CALL["top_k"]
    defaults = inspect.signature(generate).parameters
    assert {k: defaults[k].default for k in CARD_CALL} == CARD_CALL
    args = build_parser().parse_args(["generate", "model.gguf", "prompt"])
    assert {k: getattr(args, k) for k in CARD_CALL} == CARD_CALL
    assert sampling.CARD == sampling.Sampling("transformers", **CARD_CALL)


@torch.no_grad()
def test_generate_draws_from_the_distribution_transformers_generate_draws_from(monkeypatch):
    """The card's call on transformers' StableLmForCausalLM and our generate with its defaults, on the
    embedded default: at every step, the same warped distribution (ours follows transformers' draws)."""
    from stablelm_lab import StableLM, load_tokenizer
    from stablelm_lab.container import default_model
    from stablelm_lab.testing import transformers_model

    generate_module = importlib.import_module("stablelm_lab.text.generate")  # the package's name is the function

    path = default_model.embedded_gguf("F16")
    ours = StableLM.from_gguf(path)
    hf = transformers_model(path, ours.config)
    prompt = load_tokenizer(path).encode("x = ").ids  # a wide next-token distribution: top_k=50 cuts
    torch.manual_seed(0)
    out = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=32,
        do_sample=True,
        temperature=0.75,
        top_p=0.95,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    drawn = out.sequences[0, len(prompt) :].tolist()
    theirs = [s[0].softmax(-1) for s in out.scores]

    seen = []

    def follow_transformers(probs, generator=None):  # record our distribution, take transformers' draw
        seen.append(probs)
        return drawn[len(seen) - 1]

    monkeypatch.setattr(generate_module, "draw", follow_transformers)
    tokens = list(generate_module.generate_ids(ours, prompt, max_new_tokens=len(drawn), seed=0))
    assert tokens == drawn
    for step, (p, q) in enumerate(zip(seen, theirs)):
        assert torch.equal(p > 0, q > 0), f"step {step}: kept sets differ"
        # measured max |diff| 7.5e-8 (ATEN_CPU_CAPABILITY default, avx2, avx512)
        torch.testing.assert_close(p, q, rtol=0, atol=7e-7, msg=f"step {step}")
    # the test can see a lost top_k: on this sequence, top-p alone would keep other tokens at some step
    logits = ours(torch.tensor([prompt + drawn]))[0, len(prompt) - 1 : -1]
    assert any(not torch.equal(card_probs(row, 0.75, None, 0.95) > 0, card_probs(row) > 0) for row in logits)
