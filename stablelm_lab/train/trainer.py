"""Train the package's own StableLM modules from scratch: fresh weights, batches, AdamW, a loss log.

The model is ``stablelm_lab.model.StableLM`` itself, the class that reads GGUF files: its weight slots
(one per GGUF tensor) are filled with trainable parameters instead of a file's decoded bytes, so what
is trained is exactly what is shipped and loaded back.

Deterministic under the seed: the same seed, corpus, torch build and thread count give the same
weights, bit for bit (torch.use_deterministic_algorithms; the thread count is fixed in Settings
because a matmul's sums are split across threads).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from torch import nn
from tqdm.auto import tqdm

from ..model import StableLM
from ..model.config import StableLMConfig
from ..model.loading import hold_floats, weight_layers


@dataclass(frozen=True)
class Settings:
    """Everything that decides the trained weights."""

    seed: int = 1234
    # StableLM-3B-4E1T's design scaled down: every matrix row a multiple of 256 (K-quants apply to all)
    n_vocab: int = 4096
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4  # head_dim 64; rotary on the first 16 dims (25%, as in the 3B)
    n_ff: int = 768
    n_ctx: int = 256
    # optimization
    batch_size: int = 16  # sequences of n_ctx tokens per step
    steps: int = 1500
    lr: float = 2e-3
    warmup_steps: int = 50
    final_lr_fraction: float = 0.3  # cosine decay down to lr * this
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    english_fraction: float = 0.1  # share of sequences drawn from the English reference text
    repeat_fraction: float = 0.2  # share of sequences that are a snippet repeated (see Batches)
    threads: int = 2
    log_every: int = 10

    def config(self) -> StableLMConfig:
        head_dim = self.n_embd // self.n_head
        return StableLMConfig(
            n_vocab=self.n_vocab,
            n_embd=self.n_embd,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_head_kv=self.n_head,
            n_ff=self.n_ff,
            n_ctx=self.n_ctx,
            n_rot=head_dim // 4,
            norm_eps=1e-5,
        )


QUICK = Settings(steps=20, batch_size=4, warmup_steps=5, log_every=5)  # a smoke run: seconds of training


# ---- fresh weights -------------------------------------------------------------------------------
def fresh_model(settings: Settings) -> StableLM:
    """A StableLM with trainable float32 weights, initialized as GPT-NeoX (which trained StableLM) does:
    "small init" N(0, sqrt(2/(5·C))) for matrices, "wang init" N(0, 2/(n_layer·√C)) for the two
    projections that write into the residual stream, LayerNorms at weight 1, bias 0."""
    torch.manual_seed(settings.seed)
    config = settings.config()
    model = StableLM(config)
    small = math.sqrt(2 / (5 * config.n_embd))
    wang = 2 / (config.n_layer * math.sqrt(config.n_embd))
    for prefix, layer in weight_layers(model).items():
        values = {}
        for attr, shape in layer.tensor_shapes.items():
            name = f"{prefix}.{attr}"
            if attr == "bias":
                values[attr] = torch.zeros(shape)
            elif "_norm" in name:
                values[attr] = torch.ones(shape)
            else:
                std = wang if name.endswith(("attn_output.weight", "ffn_down.weight")) else small
                values[attr] = torch.randn(shape) * std
            model.weight_types[name] = GGMLQuantizationType.F32
        hold_floats(layer, values, trainable=True)
    return model


# ---- batches ---------------------------------------------------------------------------------------
class Batches:
    """Random windows of n_ctx + 1 tokens from two token streams (code, English), seeded.

    A share of the windows (repeat_fraction) is a snippet of 16 to n_ctx/2 tokens repeated to fill the
    window. Copying from earlier in the context is what induction heads do (Olsson et al., 2022);
    natural text rewards it too, but weakly: trained on it alone, this model had no induction head
    after 900 steps and a weak one after 2700. Snippets of varying length reward copying by content,
    not from a fixed distance back.
    """

    def __init__(self, code: np.ndarray, english: np.ndarray, settings: Settings):
        self.streams = [torch.from_numpy(code.astype(np.int64)), torch.from_numpy(english.astype(np.int64))]
        self.settings = settings
        self.generator = torch.Generator().manual_seed(settings.seed + 1)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, n_ctx): the targets are the inputs shifted by one."""
        window = torch.stack([self.row() for _ in range(self.settings.batch_size)])  # (B, n_ctx + 1)
        return window[:, :-1], window[:, 1:]

    def row(self) -> torch.Tensor:
        s, g = self.settings, self.generator
        english = bool(torch.rand(1, generator=g) < s.english_fraction)
        repeat = bool(torch.rand(1, generator=g) < s.repeat_fraction)
        length = int(torch.randint(16, s.n_ctx // 2 + 1, (1,), generator=g)) if repeat else s.n_ctx + 1
        stream = self.streams[int(english)]
        start = int(torch.randint(len(stream) - length, (1,), generator=g))
        snippet = stream[start : start + length]
        return snippet.repeat(-(-(s.n_ctx + 1) // length))[: s.n_ctx + 1]


# ---- the loop --------------------------------------------------------------------------------------
def learning_rate(step: int, s: Settings) -> float:
    """Linear warmup, then cosine decay to final_lr_fraction of the peak."""
    if step < s.warmup_steps:
        return s.lr * (step + 1) / s.warmup_steps
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.lr * (s.final_lr_fraction + (1 - s.final_lr_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer(model: StableLM, s: Settings) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on LayerNorm weights and biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.95), eps=1e-8)


def train(
    model: StableLM, batches: Batches, s: Settings, log: TextIO | None = None, progress: bool = True
) -> list[dict]:
    """Run s.steps optimizer steps; every s.log_every steps append a row (step, tokens, loss, lr) to the
    returned log and write it to ``log`` (an open text file) as a tab-separated line."""
    torch.set_num_threads(s.threads)
    torch.use_deterministic_algorithms(True)
    opt = optimizer(model, s)
    model.train()
    rows, losses = [], []
    if log is not None:
        log.write("step\ttokens\tloss\tlr\n")
    bar = tqdm(range(s.steps), desc="training", unit="step", disable=not progress, mininterval=2)
    for step in bar:
        lr = learning_rate(step, s)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = batches.next()
        logits = model(x)  # (B, n_ctx, n_vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), s.grad_clip)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
            row = {
                "step": step + 1,
                "tokens": (step + 1) * s.batch_size * s.n_ctx,
                "loss": float(np.mean(losses)),
                "lr": lr,
            }
            rows.append(row)
            losses = []
            bar.set_postfix(loss=f"{row['loss']:.3f}")
            if log is not None:
                log.write(f"{row['step']}\t{row['tokens']}\t{row['loss']:.4f}\t{row['lr']:.3e}\n")
                log.flush()
    model.eval()
    return rows


Result = TypeVar("Result")


def timed(fn: Callable[..., Result], *args: object, **kwargs: object) -> tuple[Result, float]:
    """(fn's result, seconds it took)."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start
