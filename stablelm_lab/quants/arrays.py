"""The kernels' helpers take numpy arrays or torch tensors alike: the back-end follows the argument."""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import torch

#: A numpy array or a torch tensor: what a helper shared by the numpy and the torch decoders takes.
Array: TypeAlias = np.ndarray | torch.Tensor


def is_torch(x: Array) -> bool:
    """Whether x is a torch tensor (the torch path) rather than a numpy array."""
    return isinstance(x, torch.Tensor)
