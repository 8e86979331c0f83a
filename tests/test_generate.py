"""generate() on a tiny random model with a tokenizer in its file; greedy text against transformers."""

from __future__ import annotations

import pytest
import torch

from stablelm_lab import StableLM, generate, load_tokenizer
from stablelm_lab.testing import TinySpec, train_neox_tokenizer, transformers_model, write_gguf
from stablelm_lab.text.generate import generate_ids, next_token

PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tok = train_neox_tokenizer(vocab_size=1000)
    spec = TinySpec(n_vocab=tok.get_vocab_size(), seed=3)  # every id decodes to some text
    path = write_gguf(tmp_path_factory.mktemp("gen") / "m.gguf", spec, tokenizer=tok)
    return StableLM.from_gguf(path), load_tokenizer(path), transformers_model(path, spec), tok


def test_greedy_text_matches_transformers(setup):
    model, tok, hf, original = setup
    ids = original.encode(PROMPT).ids
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, pad_token_id=1, eos_token_id=0)[
            0, len(ids) :
        ].tolist()
    out = out[: out.index(0)] if 0 in out else out
    expected = original.decode(out, skip_special_tokens=True)
    assert generate(model, tok, PROMPT, max_new_tokens=24, do_sample=False) == expected


def test_streaming_pieces_add_up_to_the_text(setup):
    model, tok, _, _ = setup
    pieces = list(generate(model, tok, PROMPT, max_new_tokens=40, seed=1, stream=True))
    assert "".join(pieces) == generate(model, tok, PROMPT, max_new_tokens=40, seed=1)
    assert all(not p.endswith("\ufffd") for p in pieces[:-1])  # no half characters shown


def test_seed_makes_sampling_reproducible(setup):
    model, tok, _, _ = setup
    a = generate(model, tok, PROMPT, max_new_tokens=16, temperature=1.5, seed=123)
    b = generate(model, tok, PROMPT, max_new_tokens=16, temperature=1.5, seed=123)
    assert a == b


def test_top_k_1_is_greedy(setup):
    model, tok, _, _ = setup
    assert generate(model, tok, PROMPT, max_new_tokens=12, top_k=1, seed=5) == generate(
        model, tok, PROMPT, max_new_tokens=12, do_sample=False
    )


def test_stops_at_eos(setup):
    model, tok, _, _ = setup
    first_id = next(generate_ids(model, tok.encode(PROMPT).ids, do_sample=False))
    saved = dict(tok.special_ids)
    try:
        tok.special_ids["eos"] = first_id  # the greedy first token becomes end-of-sequence
        assert generate(model, tok, PROMPT, max_new_tokens=10, do_sample=False) == ""
    finally:
        tok.special_ids = saved


def test_next_token_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(
        torch.tensor([next_token(logits, 1.0, 1.0, None, True, g) for _ in range(3000)]), minlength=3
    )
    torch.testing.assert_close(counts / 3000, torch.tensor([0.7, 0.2, 0.1]), atol=0.03, rtol=0)
    assert next_token(logits, do_sample=False) == 0


def test_empty_prompt_is_refused(setup):
    model, tok, _, _ = setup
    with pytest.raises(ValueError, match="no tokens"):
        generate(model, tok, "")
