"""A GGUF file, read-only and memory-mapped: its metadata, its tensor table and each tensor's raw blocks.

    g = GGUFFile("stablelm-3b-4e1t.Q4_K_M.gguf")
    g.metadata["stablelm.block_count"]        # 32
    g.tensors[0]                              # TensorInfo(name='token_embd.weight', shape=(50304, 2560), ...)
    g.raw("blk.0.attn_q.weight")              # uint8 (2560, 1440): the Q4_K blocks of each row, zero-copy
    g.dequantize("blk.0.attn_q.weight")       # float32 (2560, 2560)
    g.config                                  # StableLMConfig

Built on gguf-py's ``GGUFReader``; shapes are in numpy order (rows, cols), the reverse of ggml's ``ne``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType

from . import quants

GGUF_MAGIC = b"GGUF"


class GGUFError(ValueError):
    """The file is not a GGUF file we can read, or not the model that was asked for."""


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table."""

    name: str
    shape: tuple[int, ...]            # numpy order: (rows, cols); a row is one ggml row of ne[0] weights
    qtype: GGMLQuantizationType       # the ggml tensor type the bytes are stored in
    nbytes: int
    offset: int                       # where the bytes start in the file

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.nbytes / self.n_elements


class GGUFFile:
    """A read-only, memory-mapped GGUF file."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        _check_magic(self.path)
        try:
            self._reader = GGUFReader(self.path, "r")
        except Exception as e:  # gguf-py raises ValueError, IndexError, struct errors... on broken files
            raise GGUFError(f"{self.path} is not a readable GGUF file: {e}") from e
        self._by_name = {t.name: t for t in self._reader.tensors}

    def __repr__(self) -> str:
        return (f"GGUFFile({self.path!r}: {self.architecture}, {len(self.tensors)} tensors, "
                f"{len(self.metadata)} metadata keys)")

    # ---- metadata ----------------------------------------------------------------------------
    @cached_property
    def metadata(self) -> dict:
        """Every key-value pair: numbers as Python numbers, strings as str, arrays as lists."""
        return {name: _field_value(field) for name, field in self._reader.fields.items()
                if not name.startswith("GGUF.")}

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @cached_property
    def config(self):
        """The model's StableLMConfig; a GGUFError if the file is not a StableLM model."""
        from .config import StableLMConfig

        return StableLMConfig.from_gguf(self)

    # ---- tensors -----------------------------------------------------------------------------
    @cached_property
    def tensors(self) -> list[TensorInfo]:
        return [TensorInfo(name=t.name, shape=tuple(int(n) for n in reversed(t.shape.tolist())),
                           qtype=GGMLQuantizationType(t.tensor_type), nbytes=int(t.n_bytes),
                           offset=int(t.data_offset))
                for t in self._reader.tensors]

    @cached_property
    def tensor_info(self) -> dict[str, TensorInfo]:
        return {t.name: t for t in self.tensors}

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def raw(self, name: str) -> np.ndarray:
        """The tensor's bytes as uint8 (rows, bytes per row), a read-only view into the file (no copy)."""
        info = self._info(name)
        data = self._by_name[name].data
        block_size, type_size = GGML_QUANT_SIZES[info.qtype]
        row_bytes = info.shape[-1] // block_size * type_size
        return data.reshape(-1).view(np.uint8).reshape(*info.shape[:-1], row_bytes)

    def dequantize(self, name: str) -> np.ndarray:
        """The tensor as float32 in its numpy shape, decoded by ``stablelm_lab.quants``."""
        info = self._info(name)
        return quants.get(info.qtype).dequantize(self.raw(name)).reshape(info.shape)

    def _info(self, name: str) -> TensorInfo:
        try:
            return self.tensor_info[name]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor named {name!r}") from None


def _check_magic(path: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise GGUFError(f"cannot open {path}: {e.strerror}") from e
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}")


def _field_value(field):
    """A metadata field as a plain Python value (gguf-py keeps it as numpy parts)."""
    if not field.types:
        return None
    if field.types[0] == GGUFValueType.ARRAY:
        item_type = field.types[-1]
        if item_type == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        return [field.parts[i].item() for i in field.data]
    if field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    return field.parts[field.data[0]].item()
