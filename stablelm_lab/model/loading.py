"""Fill a StableLM with the tensors of a GGUF file, whatever mix of ggml types it holds.

Tensor by tensor, through ``stablelm_lab.quants``' torch kernels: the raw uint8 rows are read from the
memory map (on a GPU, copied there first) and decoded a band of rows at a time straight into the
parameter's memory; then the tensor's pages of the file are released, so the peak is the model plus
one band, never the model plus the file. With ``lean=True`` the quantized matrices stay as bytes and each
forward decodes them (so StableLM-3B in Q4_K_M needs ~2 GB instead of ~11 GB in float32).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from tqdm.auto import tqdm

from ..container.gguf_file import GGUFError, GGUFFile, TensorInfo, quant_format
from .config import StableLMConfig
from .layers import GGUFWeights
from .model import gguf_name

PROGRESS_BAR_BYTES = 256 << 20  # show a progress bar for files larger than this


def load_gguf(cls, path_or_file, dtype=torch.float32, device="cpu", lean=False, progress=None):
    g = path_or_file if isinstance(path_or_file, GGUFFile) else GGUFFile(path_or_file)
    model = cls(StableLMConfig.from_gguf(g), dtype=dtype)
    slots = weight_slots(model)
    missing = sorted(set(slots) - set(g.tensor_info))
    if missing:
        raise GGUFError(
            f"{g.path} lacks tensors a StableLM needs: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    names = [t.name for t in g.tensors if t.name in slots]  # extra tensors (rope_freqs...) are unused
    for name in _progress(names, g, progress):
        module, attr = slots[name]
        info = g.tensor_info[name]
        _check_tensor(g, info, module._shape(attr))
        module.load(attr, _file_view(g.raw(name)), info.qtype, dtype, device, lean=lean)
        g.release(name)
    return model.to(device).eval()


def _check_tensor(g: GGUFFile, info: TensorInfo, shape: tuple[int, ...]) -> None:
    """The tensor has the shape the config asks for, in a type we can decode."""
    if info.shape != shape:
        raise GGUFError(
            f"{g.path}: tensor {info.name} has shape {info.shape}, the config says {shape} "
            f"(data at byte {info.offset})",
            info.offset,
        )
    quant_format(info, g.path)  # a GGUFError for a type stablelm_lab cannot decode


def weight_slots(model) -> dict[str, tuple[GGUFWeights, str]]:
    """GGUF tensor name -> (module, "weight" or "bias") for every tensor the model needs."""
    slots = {}
    for path, module in model.named_modules():
        if isinstance(module, GGUFWeights):
            slots[f"{gguf_name(path)}.weight"] = (module, "weight")
            if module.has_bias:
                slots[f"{gguf_name(path)}.bias"] = (module, "bias")
    return slots


def _file_view(raw: np.ndarray) -> torch.Tensor:
    """The file's bytes as a uint8 tensor, without a copy. The map is read-only: the loader only reads
    this view, and copies what it keeps."""
    with warnings.catch_warnings():  # torch warns that it cannot make a read-only array writable
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(raw)


def _progress(names, g, progress):
    total = sum(g.tensor_info[n].nbytes for n in names)
    show = total > PROGRESS_BAR_BYTES if progress is None else progress
    if not show:
        return names
    return _bytes_bar(names, g, tqdm(total=total, unit="B", unit_scale=True, desc="loading weights"))


def _bytes_bar(names, g, bar):
    with bar:
        for name in names:
            yield name
            bar.update(g.tensor_info[name].nbytes)
