"""Text generation: prompt -> tokens -> one forward per new token (with the KV cache) -> text.

    text = generate(model, tok, "The capital of France is", max_new_tokens=32, do_sample=False)
    for piece in generate(model, tok, "Once upon a time", stream=True): print(piece, end="")

The defaults are the model card's call, ``model.generate(**inputs, max_new_tokens=64, temperature=0.75,
top_p=0.95, do_sample=True)``, which in transformers also applies its default top_k=50; the sampling
itself (and llama.cpp's other order) is in ``sampling``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from tokenizers import Tokenizer

from ..model import StableLM
from .sampling import Sampling, draw


def generate(
    model: StableLM,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    temperature: float = 0.75,
    top_p: float = 0.95,
    top_k: int | None = 50,
    do_sample: bool = True,
    seed: int | None = None,
    stream: bool = False,
) -> str | Iterator[str]:
    """The continuation of ``prompt`` as a string, or (``stream=True``) an iterator of text pieces.

    Greedy when ``do_sample`` is False; else in transformers' order: logits / temperature, cut to the
    ``top_k`` most likely tokens (None: no cut), then to the smallest set whose probability reaches
    ``top_p``, softmax, one draw (``sampling.card_probs``).
    Stops after ``max_new_tokens`` or at the end-of-sequence token.
    """
    prompt_ids = tokenizer.encode(prompt).ids
    new_ids = generate_ids(
        model, prompt_ids, max_new_tokens, temperature, top_p, top_k, do_sample, seed, eos_id(tokenizer)
    )
    pieces = stream_text(tokenizer, new_ids)
    return pieces if stream else "".join(pieces)


def stream_text(tokenizer: Tokenizer, new_ids: Iterable[int]) -> Iterator[str]:
    """Yield the new text as token ids arrive; a piece is held back while it ends inside a UTF-8 character."""
    ids: list[int] = []
    shown = ""
    for token in new_ids:
        ids.append(token)
        text = tokenizer.decode(ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # byte-level BPE can split a character across tokens
            yield text[len(shown) :]
            shown = text
    text = tokenizer.decode(ids, skip_special_tokens=True)
    if len(text) > len(shown):
        yield text[len(shown) :]


@torch.no_grad()
def generate_ids(
    model: StableLM,
    prompt_ids: list[int],
    max_new_tokens: int = 64,
    temperature: float = 0.75,
    top_p: float = 0.95,
    top_k: int | None = 50,
    do_sample: bool = True,
    seed: int | None = None,
    eos: int | None = None,
) -> Iterator[int]:
    """Yield new token ids: the prompt runs once, then each token is one cached forward step."""
    if not prompt_ids:
        raise ValueError("the prompt encodes to no tokens; give at least one token to continue from")
    generator = torch.Generator(device="cpu")
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    cache = model.new_cache()
    logits = model(prompt_ids, cache)[0, -1]  # (n_vocab,)
    for _ in range(max_new_tokens):
        token = next_token(logits, temperature, top_p, top_k, do_sample, generator)
        if token == eos:
            return
        yield token
        logits = model([token], cache)[0, -1]


def next_token(
    logits: torch.Tensor,
    temperature: float = 0.75,
    top_p: float = 0.95,
    top_k: int | None = 50,
    do_sample: bool = True,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token from one row of logits (n_vocab,): the argmax, or a draw as the card's generate."""
    logits = logits.float().cpu()
    if not do_sample or temperature == 0:
        return int(logits.argmax())
    return draw(Sampling("transformers", temperature, top_k, top_p).probs(logits), generator)


def eos_id(tokenizer: Tokenizer) -> int | None:
    ids = getattr(tokenizer, "special_ids", {})
    if "eos" in ids:
        return ids["eos"]
    return tokenizer.token_to_id("<|endoftext|>")
