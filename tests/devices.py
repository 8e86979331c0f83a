"""The torch devices the kernels and the model are tested on: the CPU always, and a CUDA GPU where this
machine has one (CI has none; docs/cuda.md records the run of these tests on a GPU)."""

from __future__ import annotations

import torch

TORCH_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
