"""The KV cache: keys and values of the tokens already seen, so each new token costs one row of work."""

from __future__ import annotations

import torch


class KVCache:
    """Per layer, the keys and values of every past position: (B, T_past, n_head_kv, head_dim) each."""

    def __init__(self, n_layer: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layer
        self.values: list[torch.Tensor | None] = [None] * n_layer

    def __len__(self) -> int:
        """How many positions are cached (the position of the next token)."""
        k = self.keys[0]
        return 0 if k is None else k.shape[1]

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's k, v (B, T, n_head_kv, head_dim); return all of them, past and new."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=1)
            v = torch.cat([self.values[layer], v], dim=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v
