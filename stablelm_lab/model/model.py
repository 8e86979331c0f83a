"""StableLM: token embedding, a stack of blocks, a final LayerNorm and the output head.

model = StableLM.from_gguf("stablelm-3b-4e1t.Q4_K_M.gguf")          # any mix of tensor types
logits = model(ids)                                                 # (B, T, n_vocab)
logits, acts = model.run_with_cache(ids)                            # acts["blk.0.Qcur"], ...
logits = model.run_with_hooks(ids, {"blk.5.attn_out": lambda x: 0 * x})
model.weight_types["blk.0.ffn_down.weight"]                         # GGMLQuantizationType.Q6_K
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn

from ..container.gguf_file import GGUFFile
from .cache import KVCache
from .config import StableLMConfig
from .hooks import NO_TAP, Hook, Tap
from .layers import Block, Embedding, LayerNorm, Linear, Rotary
from .loading import load_weights

TokenIds = torch.Tensor | np.ndarray | Sequence[int]  # (B, T) or (T,)


class StableLM(nn.Module):
    def __init__(self, config: StableLMConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embd = Embedding(config.n_vocab, config.n_embd)
        self.rotary = Rotary(config.n_rot, config.rope_base)
        self.blk = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.output_norm = LayerNorm((config.n_embd,), config.norm_eps)
        self.output = Linear(config.n_embd, config.n_vocab)
        self.weight_types: dict[str, GGMLQuantizationType] = {}  # by tensor name: its type in the file loaded

    def forward(self, input_ids: TokenIds, cache: KVCache | None = None, tap: Tap = NO_TAP) -> torch.Tensor:
        """Logits (B, T, n_vocab) for token ids (B, T) or (T,); with a cache, T new tokens after the past."""
        ids = self._as_batch(input_ids)
        start = len(cache) if cache is not None else 0
        pos = torch.arange(start, start + ids.shape[1], device=ids.device)  # (T,)
        x = tap("inp_embd", self.token_embd(ids))  # (B, T, C)
        rope = self.rotary(pos, x.dtype)  # the angles of every position, for every layer
        for i, block in enumerate(self.blk):
            x = block(x, rope, cache, tap.layer(i) if tap.active else NO_TAP)
        x = tap("result_norm", self.output_norm(x))
        return tap("result_output", self.output(x))  # (B, T, n_vocab)

    @torch.no_grad()
    def run_with_cache(
        self, input_ids: TokenIds, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and every named activation (llama.cpp names: ``blk.{i}.Qcur``, ``result_norm``...)."""
        acts: dict[str, torch.Tensor] = {}
        logits = self(input_ids, cache, Tap(store=acts))
        return logits, acts

    @torch.no_grad()
    def run_with_hooks(self, input_ids: TokenIds, hooks: dict[str, Hook], cache: KVCache | None = None) -> torch.Tensor:
        """Logits with activations patched: ``hooks[name](x)`` returns the replacement (None keeps x)."""
        unknown = [name for name in hooks if name not in self.activation_names()]
        if unknown:
            raise KeyError(f"no activations named {unknown}; see model.activation_names()")
        return self(input_ids, cache, Tap(hooks=hooks))

    def activation_names(self) -> list[str]:
        """Every name run_with_cache records, in the order the forward pass produces them."""
        per_layer = [
            "attn_norm",
            "Qcur",
            "Kcur",
            "Vcur",
            "kq",
            "kq_soft_max",
            "kqv_out",
            "attn_out",
            "ffn_inp",
            "ffn_norm",
            "ffn_swiglu",
            "ffn_out",
            "l_out",
        ]
        if self.config.parallel_residual:
            per_layer.remove("ffn_norm")
        names = ["inp_embd"] + [f"blk.{i}.{n}" for i in range(self.config.n_layer) for n in per_layer]
        return names + ["result_norm", "result_output"]

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layer)

    @property
    def device(self) -> torch.device:
        return self.output_norm.weight.device

    def _as_batch(self, input_ids: TokenIds) -> torch.Tensor:
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device)
        return ids[None] if ids.dim() == 1 else ids

    @classmethod
    def from_gguf(
        cls,
        path_or_file: str | Path | GGUFFile,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        lean: bool = False,
        progress: bool | None = None,
    ) -> StableLM:
        """Build the model a GGUF file describes and hold its weights as asked (loading.py): decoded to
        ``dtype`` on ``device``, or with ``lean`` the quantized matrices kept as the file's bytes."""
        g = path_or_file if isinstance(path_or_file, GGUFFile) else GGUFFile(path_or_file)
        model = cls(StableLMConfig.from_gguf(g))
        model.weight_types = load_weights(model, g, dtype, device, lean, progress)
        return model.to(device).eval()
