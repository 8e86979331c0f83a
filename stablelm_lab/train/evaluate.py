"""How good is a small model? Numbers a learner can check and the notebooks can show.

- bits per byte on held-out text, against what ``gzip -9`` needs for the same bytes;
- per head, how much attention goes to the previous token, and how induction-like it is: on a random
  token sequence shown twice, how much the second copy attends to the token that followed the same
  token in the first copy (the "induction head" pattern of Olsson et al., 2022).
"""

from __future__ import annotations

import gzip
import math

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer

from ..model import StableLM


# ---- compression -----------------------------------------------------------------------------------
@torch.no_grad()
def bits_per_byte(model: StableLM, tokenizer: Tokenizer, text: str, batch_size: int = 8) -> float:
    """The model's code length for ``text`` in bits per UTF-8 byte.

    The text's tokens are cut into windows of n_ctx - 1 tokens; each window starts after an
    <|endoftext|>, so every token of the text is predicted exactly once, from its own window."""
    bos = tokenizer.token_to_id("<|endoftext|>")
    ids = tokenizer.encode(text).ids
    span = model.config.n_ctx - 1
    windows = [[bos] + ids[i : i + span] for i in range(0, len(ids), span)]
    nats = 0.0
    for start in range(0, len(windows), batch_size):
        batch = windows[start : start + batch_size]
        for length in sorted({len(w) for w in batch}):  # the last window is shorter
            same = torch.tensor([w for w in batch if len(w) == length])
            logits = model(same[:, :-1]).cpu()
            nats += F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), same[:, 1:].reshape(-1), reduction="sum"
            ).item()
    return nats / math.log(2) / len(text.encode("utf-8"))


def gzip_bits_per_byte(text: str) -> float:
    """What ``gzip -9`` needs per byte of ``text`` (header and trailer included)."""
    data = text.encode("utf-8")
    return 8 * len(gzip.compress(data, compresslevel=9, mtime=0)) / len(data)


# ---- attention heads -------------------------------------------------------------------------------
@torch.no_grad()
def previous_token_scores(model: StableLM, ids: list[int]) -> np.ndarray:
    """(n_layer, n_head): mean attention of each position t ≥ 1 to position t - 1."""
    probs = attention(model, ids)  # (n_layer, nh, T, T)
    T = probs.shape[-1]
    t = torch.arange(1, T)
    return probs[:, :, t, t - 1].mean(-1).numpy()


@torch.no_grad()
def induction_scores(model: StableLM, length: int = 64, seed: int = 0, bos: int = 0) -> np.ndarray:
    """(n_layer, n_head): attention from each token of the second copy of a random sequence to the
    token after its first occurrence. A random sequence has no meaning to predict from, so only a
    head that copies from earlier context can score high; a previous-token head scores ~0."""
    ids = repeated_random_tokens(model.config.n_vocab, length, seed, bos)
    probs = attention(model, ids)  # (n_layer, nh, T, T)
    j = torch.arange(length - 1)
    query = 1 + length + j  # r_j in the second copy
    key = 1 + j + 1  # r_{j+1} in the first copy
    return probs[:, :, query, key].mean(-1).numpy()


def repeated_random_tokens(n_vocab: int, length: int, seed: int = 0, bos: int = 0) -> list[int]:
    """[bos, r_0 ... r_{L-1}, r_0 ... r_{L-1}] with r drawn from the ordinary tokens (ids above the
    specials and whitespace runs)."""
    rng = np.random.default_rng(seed)
    r = rng.integers(32, n_vocab, length).tolist()
    return [bos] + r + r


def attention(model: StableLM, ids: list[int]) -> torch.Tensor:
    """Every layer's attention probabilities for one sequence: (n_layer, n_head, T, T)."""
    _, cache = model.run_with_cache(ids)
    return torch.stack([cache[f"blk.{i}.kq_soft_max"][0].float().cpu() for i in range(model.config.n_layer)])


@torch.no_grad()
def repeat_loss_drop(model: StableLM, length: int = 64, seed: int = 0, bos: int = 0) -> tuple[float, float]:
    """Mean loss (nats) on the first and on the second copy of a random sequence: in-context copying
    makes the second far cheaper."""
    ids = torch.tensor(repeated_random_tokens(model.config.n_vocab, length, seed, bos))
    logits = model(ids[:-1])[0].cpu()
    losses = F.cross_entropy(logits.float(), ids[1:], reduction="none")
    return losses[1:length].mean().item(), losses[length + 1 :].mean().item()
