"""Named activations: every intermediate of the forward pass passes through a ``Tap``, by llama.cpp's name.

A tap can record the value (``run_with_cache``) and replace it (hooks, for patching experiments).
Names are llama.cpp's graph names (``cb(cur, "attn_norm", il)`` in src/models/stablelm.cpp), prefixed by the
layer as in its eval-callback dump: ``blk.3.attn_norm``, ``blk.3.Qcur``, ..., ``result_norm``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Hook = Callable[[torch.Tensor], "torch.Tensor | None"]


class Tap:
    """Passes activations through: records them into ``store`` and lets ``hooks`` replace them."""

    def __init__(self, store: dict | None = None, hooks: dict[str, Hook] | None = None, prefix: str = ""):
        self.store, self.hooks, self.prefix = store, hooks or {}, prefix

    def __call__(self, name: str, x: torch.Tensor) -> torch.Tensor:
        name = self.prefix + name
        hook = self.hooks.get(name)
        if hook is not None:
            patched = hook(x)
            x = x if patched is None else patched
        if self.store is not None:
            self.store[name] = x
        return x

    def layer(self, i: int) -> Tap:
        """The same tap, naming activations of block i as ``blk.{i}.name``."""
        return Tap(self.store, self.hooks, f"blk.{i}.")

    @property
    def active(self) -> bool:
        return self.store is not None or bool(self.hooks)


NO_TAP = Tap()
