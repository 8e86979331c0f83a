"""What a quantization costs: the error it adds to a tensor, and what it does to the model's predictions,
measured as llama.cpp's llama-perplexity measures them.

    tensor_error(w, w_q)                            # TensorError(rmse=..., snr_db=..., max_abs=...)
    ppl = perplexity("model.Q4_K_M.gguf", text)     # or perplexity(model, text, tokenizer=tok)
    print(ppl)                                      # PPL = 12.3456 +/- 0.12345 (1270 tokens, 10 chunks of 256)
    kld = kl_divergence("model.F16.gguf", "model.Q4_K_M.gguf", text)
    kld.per_position, kld.mean, kld.top1_agreement
    print(kld.report())                             # llama-perplexity --kl-divergence's closing statistics

How llama-perplexity scores a text (llama.cpp tools/perplexity/perplexity.cpp):
- the whole text is tokenized once (with BOS first if the vocabulary adds one: StableLM's does not);
- the tokens are cut into len // n_ctx chunks of n_ctx (the rest is dropped; fewer than 2 chunks' worth
  is refused), and each chunk runs on its own, from an empty cache (its first token replaced by BOS if
  the vocabulary adds one);
- only the second half of each chunk is scored: the logits at positions n_ctx/2 ... n_ctx-2 predict the
  tokens at n_ctx/2+1 ... n_ctx-1, so every scored token sees at least n_ctx/2 tokens of context;
- PPL = exp(mean negative log-likelihood), with the uncertainty exp(mean)·std/sqrt(N-1).
KL divergence runs the same chunks through a base model (the F16 file) and a quantized one; per scored
token, KL(P_base || P_q) = Σ_v p_base(v)·(log p_base(v) − log p_q(v)). "Same top p" is the share of
tokens where both models' most likely next token is the same (top-1 agreement); Δp is how much the
probability of the actual next token moved.
One difference, on purpose: llama.cpp stores the base model's log-probabilities as 16-bit integers over
a 16-nat range and drops base probabilities below e^-16 from the sum; we keep them as float64. (Doing
it llama.cpp's way moved the mean KLD of a small random model by 3e-4 of itself for Q8_0, by 3e-6 for
Q4_K_M: the fourth significant digit at most.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer

from ..container.gguf_file import GGUFFile, PathLike
from ..model import StableLM
from ..text.tokenizer import load_tokenizer

Weights = np.ndarray | torch.Tensor  # a tensor's values, as numpy or torch holds them
# ---- tensors ---------------------------------------------------------------------------------------------


def _f64(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def rmse(reference: Weights, approx: Weights) -> float:
    """Root mean square of the error."""
    return float(np.sqrt(np.mean((_f64(approx) - _f64(reference)) ** 2)))


def max_abs_error(reference: Weights, approx: Weights) -> float:
    return float(np.max(np.abs(_f64(approx) - _f64(reference))))


def snr_db(reference: Weights, approx: Weights) -> float:
    """Signal-to-noise ratio in decibels: 10·log10(Σ reference² / Σ error²); +inf when exact. Each extra
    bit of a uniform quantizer buys about 6 dB."""
    ref = _f64(reference)
    noise = np.sum((_f64(approx) - ref) ** 2)
    return float("inf") if noise == 0 else float(10 * np.log10(np.sum(ref**2) / noise))


@dataclass(frozen=True)
class TensorError:
    rmse: float
    snr_db: float
    max_abs: float

    def __str__(self) -> str:
        return f"RMSE {self.rmse:.4g}, SNR {self.snr_db:.2f} dB, max |error| {self.max_abs:.4g}"


def tensor_error(reference: Weights, approx: Weights) -> TensorError:
    if np.shape(reference) != np.shape(approx):
        raise ValueError(f"shapes differ: {np.shape(reference)} vs {np.shape(approx)}")
    return TensorError(rmse(reference, approx), snr_db(reference, approx), max_abs_error(reference, approx))


# ---- llama-perplexity's statistics -------------------------------------------------------------------------
def mean_and_uncertainty(values: np.ndarray) -> tuple[float, float]:
    """Mean and its standard error, as llama-perplexity computes them (no error below 11 values)."""
    values = np.asarray(values, dtype=np.float64)
    n = len(values)
    if n < 1:
        return 0.0, 0.0
    mean = values.mean()
    var = np.mean(values**2) - mean**2
    return float(mean), float(np.sqrt(var / (n - 1))) if var > 0 and n > 10 else 0.0


def percentile(values: np.ndarray, fraction: float) -> float:
    """Linear interpolation between the sorted values at fraction·(n−1), llama-perplexity's rule."""
    return float(np.percentile(values, 100 * fraction, method="linear"))


@dataclass
class Perplexity:
    """Per scored token: the negative log-likelihood of the token that came (natural log)."""

    nll: np.ndarray
    n_ctx: int
    n_chunks: int

    @property
    def n_tokens(self) -> int:
        return len(self.nll)

    @property
    def value(self) -> float:
        return float(np.exp(self.nll.mean()))

    @property
    def uncertainty(self) -> float:
        """llama-perplexity's "+/-": exp(mean)·std(nll)/sqrt(N−1)."""
        mean = self.nll.mean()
        var = np.mean(self.nll**2) - mean**2
        return float(np.exp(mean) * np.sqrt(var / (self.n_tokens - 1))) if var > 0 else 0.0

    def __str__(self) -> str:
        return (
            f"PPL = {self.value:.4f} +/- {self.uncertainty:.5f} "
            f"({self.n_tokens} tokens, {self.n_chunks} chunks of {self.n_ctx})"
        )


@dataclass
class KLDivergence:
    """Per scored token (arrays of the same length), base model vs quantized model."""

    per_position: np.ndarray  # KL(P_base || P_q) in nats
    nll_base: np.ndarray  # −log p_base(next token)
    nll: np.ndarray  # −log p_q(next token)
    same_top: np.ndarray  # bool: argmax of both distributions is the same token
    n_ctx: int
    n_chunks: int
    p_diff: np.ndarray = field(init=False)  # p_q(next token) − p_base(next token)

    def __post_init__(self):
        self.p_diff = np.exp(-self.nll) - np.exp(-self.nll_base)

    @property
    def mean(self) -> float:
        return float(self.per_position.mean())

    @property
    def top1_agreement(self) -> float:
        return float(self.same_top.mean())

    @property
    def ppl(self) -> Perplexity:
        return Perplexity(self.nll, self.n_ctx, self.n_chunks)

    @property
    def ppl_base(self) -> Perplexity:
        return Perplexity(self.nll_base, self.n_ctx, self.n_chunks)

    def report(self) -> str:
        """The closing statistics of ``llama-perplexity --kl-divergence``, line by line."""
        return "\n".join(self._perplexity_lines() + [""] + self._kld_lines() + [""] + self._p_diff_lines())

    def _perplexity_lines(self) -> list[str]:
        n = len(self.nll)
        (ln_q, ln_q_err), (ln_b, ln_b_err) = mean_and_uncertainty(self.nll), mean_and_uncertainty(self.nll_base)
        cov = ((np.mean(self.nll * self.nll_base) - ln_q * ln_b) / (n - 1)) if n >= 10 else 0.0
        ratio_err = np.sqrt(max(ln_q_err**2 + ln_b_err**2 - 2 * cov, 0.0))
        ppl_q, ppl_b = np.exp(ln_q), np.exp(ln_b)
        diff_err = np.sqrt(max((ppl_q * ln_q_err) ** 2 + (ppl_b * ln_b_err) ** 2 - 2 * ppl_q * ppl_b * cov, 0.0))
        cor = cov / (ln_q_err * ln_b_err) if ln_q_err * ln_b_err > 0 else float("nan")
        ratio = np.exp(ln_q - ln_b)
        return [
            "====== Perplexity statistics ======",
            f"Mean PPL(Q)                   : {ppl_q:10.6f} ± {ppl_q * ln_q_err:10.6f}",
            f"Mean PPL(base)                : {ppl_b:10.6f} ± {ppl_b * ln_b_err:10.6f}",
            f"Cor(ln(PPL(Q)), ln(PPL(base))): {100 * cor:6.2f}%",
            f"Mean ln(PPL(Q)/PPL(base))     : {ln_q - ln_b:10.6f} ± {ratio_err:10.6f}",
            f"Mean PPL(Q)/PPL(base)         : {ratio:10.6f} ± {ratio * ratio_err:10.6f}",
            f"Mean PPL(Q)-PPL(base)         : {ppl_q - ppl_b:10.6f} ± {diff_err:10.6f}",
        ]

    def _kld_lines(self) -> list[str]:
        kld = self.per_position
        mean, err = mean_and_uncertainty(kld)
        return (
            [
                "====== KL divergence statistics ======",
                f"Mean    KLD: {mean:10.6f} ± {err:10.6f}",
                f"Maximum KLD: {kld.max():10.6f}",
            ]
            + [
                f"{label} KLD: {percentile(kld, f):10.6f}"
                for label, f in [
                    ("99.9%  ", 0.999),
                    ("99.0%  ", 0.99),
                    ("95.0%  ", 0.95),
                    ("90.0%  ", 0.9),
                    ("Median ", 0.5),
                    ("10.0%  ", 0.1),
                    (" 5.0%  ", 0.05),
                    (" 1.0%  ", 0.01),
                    (" 0.1%  ", 0.001),
                ]
            ]
            + [f"Minimum KLD: {kld.min():10.6f}"]
        )

    def _p_diff_lines(self) -> list[str]:
        dp, n = self.p_diff, len(self.p_diff)
        mean, err = mean_and_uncertainty(dp)
        mse, mse_err = mean_and_uncertainty(dp**2)
        rms = np.sqrt(mse)
        top = self.top1_agreement
        return (
            [
                "====== Token probability statistics ======",
                f"Mean    Δp: {100 * mean:6.3f} ± {100 * err:5.3f} %",
                f"Maximum Δp: {100 * dp.max():6.3f}%",
            ]
            + [
                f"{label} Δp: {100 * percentile(dp, f):6.3f}%"
                for label, f in [
                    ("99.9%  ", 0.999),
                    ("99.0%  ", 0.99),
                    ("95.0%  ", 0.95),
                    ("90.0%  ", 0.9),
                    ("75.0%  ", 0.75),
                    ("Median ", 0.5),
                    ("25.0%  ", 0.25),
                    ("10.0%  ", 0.1),
                    (" 5.0%  ", 0.05),
                    (" 1.0%  ", 0.01),
                    (" 0.1%  ", 0.001),
                ]
            ]
            + [
                f"Minimum Δp: {100 * dp.min():6.3f}%",
                f"RMS Δp    : {100 * rms:6.3f} ± {100 * (0.5 / rms * mse_err if rms > 0 else 0):5.3f} %",
                f"Same top p: {100 * top:6.3f} ± {100 * np.sqrt(top * (1 - top) / max(n - 1, 1)):5.3f} %",
            ]
        )

    def __str__(self) -> str:
        return (
            f"KLD = {self.mean:.6f}, same top p = {100 * self.top1_agreement:.2f}%, "
            f"PPL(Q) = {self.ppl.value:.4f}, PPL(base) = {self.ppl_base.value:.4f} "
            f"({len(self.per_position)} tokens, {self.n_chunks} chunks of {self.n_ctx})"
        )


# ---- running the model over a text -----------------------------------------------------------------------
DEFAULT_N_CTX = 512  # llama-perplexity's classic context for published numbers
LOGITS_BYTES_PER_STEP = 256 << 20


@dataclass
class _Scorer:
    """A model with what scoring needs: its tokenizer and whether its vocabulary adds BOS."""

    model: object
    tokenizer: object | None
    add_bos: bool
    bos_id: int | None

    @classmethod
    def of(cls, model, tokenizer=None, add_bos: bool | None = None) -> _Scorer:
        if isinstance(model, (str, os.PathLike)):
            g = GGUFFile(model)
            meta = g.metadata
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(g)
            add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False)) if add_bos is None else add_bos
            return cls(StableLM.from_gguf(g), tokenizer, add_bos, meta.get("tokenizer.ggml.bos_token_id"))
        bos = getattr(tokenizer, "special_ids", {}).get("bos")
        return cls(model, tokenizer, bool(add_bos), bos)

    def tokens(self, text) -> list[int]:
        if not isinstance(text, str):
            return [int(t) for t in text]
        if self.tokenizer is None:
            raise ValueError("a text needs a tokenizer: pass tokenizer=..., a GGUF path, or token ids")
        ids = self.tokenizer.encode(text).ids
        return ([self.bos_id] if self.add_bos else []) + ids


def chunks(tokens: list[int], n_ctx: int, add_bos: bool = False, bos_id: int | None = None) -> np.ndarray:
    """(n_chunk, n_ctx) token ids as llama-perplexity evaluates them; each chunk's first token is BOS when
    the vocabulary adds one."""
    if n_ctx < 4:
        raise ValueError(f"n_ctx must be at least 4, got {n_ctx}")
    if len(tokens) < 2 * n_ctx:
        raise ValueError(
            f"you need at least {2 * n_ctx} tokens to evaluate perplexity with a context of "
            f"{n_ctx}; the text tokenizes to only {len(tokens)} tokens"
        )
    n_chunk = len(tokens) // n_ctx
    out = np.array(tokens[: n_chunk * n_ctx], dtype=np.int64).reshape(n_chunk, n_ctx)
    if add_bos:
        if bos_id is None:
            raise ValueError("the vocabulary adds BOS but names no BOS token")
        out[:, 0] = bos_id
    return out


def scored_log_probs(model: StableLM, chunk_ids: np.ndarray) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Log-probabilities (float64) at the scored positions of each chunk, and the tokens they predict:
    yields (log_probs (B, n_score, n_vocab) torch tensor, targets (B, n_score) numpy)."""
    n_chunk, n_ctx = chunk_ids.shape
    first = n_ctx // 2
    n_vocab = model.config.n_vocab
    step = max(1, LOGITS_BYTES_PER_STEP // (n_ctx * n_vocab * 8))
    for start in range(0, n_chunk, step):
        ids = torch.as_tensor(chunk_ids[start : start + step], device=model.device)
        with torch.no_grad():  # never across a yield: a generator left unfinished would keep grad off
            log_probs = torch.log_softmax(model(ids)[:, first : n_ctx - 1].double(), dim=-1)  # (B, n_score, n_vocab)
        yield log_probs, chunk_ids[start : start + step, first + 1 :]


def _take(log_probs, targets: np.ndarray) -> np.ndarray:
    index = torch.as_tensor(targets, device=log_probs.device)[..., None]
    return log_probs.gather(-1, index)[..., 0].cpu().numpy().reshape(-1)


def perplexity(
    model: StableLM | PathLike,
    text: str | Iterable[int],
    tokenizer: Tokenizer | None = None,
    n_ctx: int | None = None,
    add_bos: bool | None = None,
) -> Perplexity:
    """llama-perplexity's perplexity of ``text`` (a string, or token ids) under ``model`` (a StableLM with
    ``tokenizer``, or a GGUF path, whose tokenizer and BOS rule are then read from the file)."""
    scorer = _Scorer.of(model, tokenizer, add_bos)
    n_ctx = n_ctx or min(DEFAULT_N_CTX, scorer.model.config.n_ctx)
    ids = chunks(scorer.tokens(text), n_ctx, scorer.add_bos, scorer.bos_id)
    nll = [-_take(lp, targets) for lp, targets in scored_log_probs(scorer.model, ids)]
    return Perplexity(np.concatenate(nll), n_ctx, len(ids))


def kl_divergence(
    model_base: StableLM | PathLike,
    model: StableLM | PathLike,
    text: str | Iterable[int],
    tokenizer: Tokenizer | None = None,
    n_ctx: int | None = None,
    add_bos: bool | None = None,
) -> KLDivergence:
    """llama-perplexity --kl-divergence: ``model`` (e.g. Q4_K_M) against ``model_base`` (e.g. F16) on the
    same chunks of ``text``; the base model's tokenizer and BOS rule are used for both."""
    base = _Scorer.of(model_base, tokenizer, add_bos)
    other = _Scorer.of(model, base.tokenizer, base.add_bos)
    if base.model.config.n_vocab != other.model.config.n_vocab:
        raise ValueError(f"the vocabularies differ: {base.model.config.n_vocab} vs {other.model.config.n_vocab}")
    n_ctx = n_ctx or min(DEFAULT_N_CTX, base.model.config.n_ctx)
    ids = chunks(base.tokens(text), n_ctx, base.add_bos, base.bos_id)
    parts = {"kld": [], "nll_base": [], "nll": [], "same_top": []}
    for (lp_base, targets), (lp, _) in zip(scored_log_probs(base.model, ids), scored_log_probs(other.model, ids)):
        parts["kld"].append((lp_base.exp() * (lp_base - lp)).sum(-1).cpu().numpy().reshape(-1))
        parts["nll_base"].append(-_take(lp_base, targets))
        parts["nll"].append(-_take(lp, targets))
        parts["same_top"].append((lp_base.argmax(-1) == lp.argmax(-1)).cpu().numpy().reshape(-1))
    joined = {k: np.concatenate(v) for k, v in parts.items()}
    return KLDivergence(joined["kld"], joined["nll_base"], joined["nll"], joined["same_top"], n_ctx, len(ids))
