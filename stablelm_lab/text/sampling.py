"""Sampling: from one row of next-token logits (n_vocab,) to the distribution the next token is drawn from.

Two programs sample StableLM-3B-4E1T, and they cut the distribution in different orders:

- **transformers** (the model card's call, ``model.generate(**inputs, max_new_tokens=64, temperature=0.75,
  top_p=0.95, do_sample=True)``): generation/utils.py's ``_get_logits_processor`` appends
  TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper in that order, then softmax and one draw.
  The card sets no top_k, the model's generation_config.json sets none either, so transformers' default
  ``top_k=50`` applies (generation/configuration_utils.py, ``_get_default_generation_params``).
  Temperature comes first: it changes which tokens survive top-p.
- **llama.cpp** (llama-cli, llama-server): common/common.h's ``common_params_sampling`` default chain is
  penalties, DRY, top-n-sigma, top-k, typical-p, top-p, min-p, XTC, temperature, then ``dist`` draws;
  at the defaults (top_k 40, top_p 0.95, min_p 0.05, temp 0.80; penalty_repeat 1.0, dry_multiplier 0,
  top_n_sigma -1, typ_p 1.0, xtc_probability 0: all off) that is top-k, top-p, min-p, temperature.
  Temperature comes last: it reshapes the survivors but never changes which tokens survive.

Each ``*_filter`` returns logits with the tokens it drops set to -inf; ``*_probs`` the distribution drawn
from (zero outside the kept set).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


# ---- transformers' warpers (generation/logits_process.py), in the card's order ---------------------------
def temperature_filter(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """TemperatureLogitsWarper: divide the logits by the temperature (< 1 sharpens, > 1 flattens)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 to sample (got {temperature}); use greedy decoding for 0")
    return logits / temperature


def top_k_filter(logits: torch.Tensor, top_k: int | None) -> torch.Tensor:
    """TopKLogitsWarper: drop every token below the k-th largest logit (tokens tied with it stay)."""
    if top_k is None or top_k <= 0 or top_k >= logits.numel():
        return logits
    kth = torch.topk(logits, top_k).values[-1]
    return logits.masked_fill(logits < kth, NEG_INF)


def top_p_filter(logits: torch.Tensor, top_p: float | None) -> torch.Tensor:
    """TopPLogitsWarper: keep the most likely tokens until their probability reaches ``top_p``.

    Computed as transformers does, from the unlikely end: a token is dropped when it and every less
    likely token together hold at most 1 - top_p of the probability (so the kept set is the smallest
    whose total reaches top_p); the most likely token always stays. Tied tokens are ordered by the same
    ``torch.sort`` transformers calls, so a tie at the cut-off falls the same way.
    """
    if top_p is None or top_p >= 1.0:
        return logits
    ascending, order = torch.sort(logits, descending=False)
    tail = ascending.softmax(dim=-1).cumsum(dim=-1)  # mass of this token and all less likely ones
    drop_sorted = tail <= 1 - top_p
    drop_sorted[-1] = False  # at least one token: the most likely
    drop = drop_sorted.scatter(0, order, drop_sorted)
    return logits.masked_fill(drop, NEG_INF)


def card_filter(
    logits: torch.Tensor, temperature: float = 0.75, top_k: int | None = 50, top_p: float | None = 0.95
) -> torch.Tensor:
    """The card's generate: temperature, then top-k, then top-p (transformers' order)."""
    return top_p_filter(top_k_filter(temperature_filter(logits.float(), temperature), top_k), top_p)


def card_probs(
    logits: torch.Tensor, temperature: float = 0.75, top_k: int | None = 50, top_p: float | None = 0.95
) -> torch.Tensor:
    """The distribution transformers' generate draws from, with the card's settings by default."""
    return card_filter(logits, temperature, top_k, top_p).softmax(dim=-1)


# ---- llama.cpp's default chain (src/llama-sampler.cpp) ----------------------------------------------------
def llama_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """llama_sampler_top_k: keep exactly the k largest logits (k <= 0 keeps all; ties fall by sort order)."""
    if top_k <= 0 or top_k >= logits.numel():
        return logits
    keep = torch.topk(logits, top_k).indices
    return torch.full_like(logits, NEG_INF).scatter(0, keep, logits[keep])


def llama_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """llama_sampler_top_p: softmax over the tokens still in play, then keep tokens from the most likely
    down until the running sum is >= p (the token that reaches p stays)."""
    if top_p >= 1.0:
        return logits
    descending, order = torch.sort(logits, descending=True)
    running = descending.softmax(dim=-1).cumsum(dim=-1)
    reached = running >= top_p
    last = int(reached.nonzero()[0]) if bool(reached.any()) else len(running) - 1  # rounding: keep all
    drop = torch.ones_like(logits, dtype=torch.bool)
    drop[order[: last + 1]] = False
    return logits.masked_fill(drop, NEG_INF)


def llama_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """llama_sampler_min_p: keep tokens whose probability is at least min_p times the top token's,
    i.e. whose logit is >= max logit + log(min_p)."""
    if min_p <= 0.0:
        return logits
    floor = logits.max() + torch.log(torch.tensor(min_p, dtype=logits.dtype))
    return logits.masked_fill(logits < floor, NEG_INF)


def llama_cpp_filter(
    logits: torch.Tensor, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, temperature: float = 0.8
) -> torch.Tensor:
    """llama.cpp's default chain: top-k, top-p, min-p on the untempered logits, temperature last."""
    kept = llama_min_p(llama_top_p(llama_top_k(logits.float(), top_k), top_p), min_p)
    return temperature_filter(kept, temperature)


def llama_cpp_probs(
    logits: torch.Tensor, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, temperature: float = 0.8
) -> torch.Tensor:
    """The distribution llama_sampler_dist draws from, with llama-cli's defaults."""
    return llama_cpp_filter(logits, top_k, top_p, min_p, temperature).softmax(dim=-1)


# ---- settings, as the two programs name them ------------------------------------------------------------
@dataclass(frozen=True)
class Sampling:
    """One sampler's settings and order: ``probs(logits)`` is the distribution drawn from."""

    order: str = "transformers"  # "transformers" (the card's generate) or "llama.cpp"
    temperature: float = 0.75
    top_k: int | None = 50
    top_p: float = 0.95
    min_p: float = 0.0  # llama.cpp only

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        if self.order == "transformers":
            return card_probs(logits, self.temperature, self.top_k, self.top_p)
        if self.order == "llama.cpp":
            return llama_cpp_probs(logits, self.top_k or 0, self.top_p, self.min_p, self.temperature)
        raise ValueError(f"unknown sampling order {self.order!r}: 'transformers' or 'llama.cpp'")


#: model.generate(**inputs, temperature=0.75, top_p=0.95, do_sample=True) with transformers' top_k=50
CARD = Sampling("transformers", temperature=0.75, top_k=50, top_p=0.95)
#: llama-cli with no sampling options (common/common.h)
LLAMA_CPP = Sampling("llama.cpp", temperature=0.8, top_k=40, top_p=0.95, min_p=0.05)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One token id drawn from ``probs`` (as transformers' generate: torch.multinomial)."""
    return int(torch.multinomial(probs, 1, generator=generator))
