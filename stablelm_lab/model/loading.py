"""Fill a StableLM's layers with the tensors of a GGUF file, whatever mix of ggml types it holds.

Layer by layer, in file order, through ``stablelm_lab.quants``' torch kernels: the raw uint8 rows are read
from the memory map (on a GPU, copied there first) and decoded a band of rows at a time straight into the
tensor the layer keeps; then those pages of the file are released, so the peak is the model plus one
band, never the model plus the file. With ``lean=True`` the quantized matrices stay as bytes and each
forward decodes them (weights.py: so StableLM-3B in Q4_K_M needs ~2 GB instead of ~11 GB in float32).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from gguf import GGMLQuantizationType
from torch import nn
from tqdm.auto import tqdm

from ..container.gguf_file import GGUFError, GGUFFile, TensorInfo, quant_format
from .layers import Embedding, LayerNorm, Linear
from .weights import FLOAT_TYPES, FloatWeights, LeanWeights, decode_rows

PROGRESS_BAR_BYTES = 256 << 20  # show a progress bar for files larger than this
WeightLayer = Embedding | Linear | LayerNorm


def load_weights(
    model: nn.Module,
    g: GGUFFile,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    lean: bool = False,
    progress: bool | None = None,
) -> dict[str, GGMLQuantizationType]:
    """Hold every tensor ``model`` needs from ``g``, decoded to ``dtype`` on ``device`` (with ``lean``,
    quantized matrices as their bytes); return the ggml type each tensor had in the file, by name."""
    layers = weight_layers(model)
    missing = sorted(set(weight_slots(model)) - set(g.tensor_info))
    if missing:
        raise GGUFError(
            f"{g.path} lacks tensors a StableLM needs: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else "")
        )
    in_file = {t.name: i for i, t in enumerate(g.tensors)}  # extra tensors (rope_freqs...) are unused
    prefixes = sorted(layers, key=lambda prefix: in_file[f"{prefix}.weight"])  # the map read front to back
    types = {}
    for prefix in _progress(prefixes, layers, g, progress):
        layer = layers[prefix]
        infos = {attr: g.tensor_info[f"{prefix}.{attr}"] for attr in layer.tensor_shapes}
        for attr, info in infos.items():
            _check_tensor(g, info, layer.tensor_shapes[attr])
        _hold_file_tensors(layer, g, infos, dtype, device, lean)
        for info in infos.values():
            g.release(info.name)
            types[info.name] = info.qtype
    return {name: types[name] for name in weight_slots(model)}


def _hold_file_tensors(
    layer: WeightLayer,
    g: GGUFFile,
    infos: dict[str, TensorInfo],
    dtype: torch.dtype,
    device: str | torch.device,
    lean: bool,
) -> None:
    """One layer's tensors (attr -> file tensor) decoded to floats, or for a lean matrix kept as bytes."""
    raw = {attr: _on_device(_file_view(g.raw(info.name)), device) for attr, info in infos.items()}
    floats = {
        attr: decode_rows(raw[attr], quant_format(info, g.path), dtype).reshape(info.shape)
        for attr, info in infos.items()
        if attr != "weight" or not _kept_quantized(layer, info, lean)
    }
    if "weight" in floats:
        hold_floats(layer, floats)
    else:
        weight = raw["weight"]
        owned = weight.clone() if weight.device.type == "cpu" else weight  # not a view of the file's map
        layer.weights = LeanWeights(owned, infos["weight"].qtype, dtype, floats.get("bias"))


def _kept_quantized(layer: WeightLayer, info: TensorInfo, lean: bool) -> bool:
    return lean and not isinstance(layer, LayerNorm) and info.qtype not in FLOAT_TYPES


def hold_floats(layer: WeightLayer, floats: dict[str, torch.Tensor], trainable: bool = False) -> None:
    """Give ``layer`` its tensors (``"weight"``, and ``"bias"`` if it has one) as float tensors; with
    ``trainable``, as parameters an optimizer updates."""
    if isinstance(layer, LayerNorm):
        for attr, value in floats.items():
            setattr(layer, attr, nn.Parameter(value, requires_grad=trainable))
    else:
        layer.weights = FloatWeights(floats["weight"], floats.get("bias"), trainable)


def weight_layers(model: nn.Module) -> dict[str, WeightLayer]:
    """GGUF tensor prefix -> the layer that holds those tensors, in the model's order:
    ``"blk.0.attn_q"`` -> ``model.blk[0].attn.attn_q``."""
    return {gguf_name(path): m for path, m in model.named_modules() if isinstance(m, WeightLayer)}


def weight_slots(model: nn.Module) -> dict[str, tuple[WeightLayer, str]]:
    """GGUF tensor name -> (layer, "weight" or "bias") for every tensor the model needs."""
    return {
        f"{prefix}.{attr}": (layer, attr)
        for prefix, layer in weight_layers(model).items()
        for attr in layer.tensor_shapes
    }


def gguf_name(module_path: str) -> str:
    """Module path -> GGUF tensor prefix: ``blk.0.attn.attn_q`` -> ``blk.0.attn_q``."""
    return module_path.replace(".attn.", ".").replace(".ffn.", ".")


def _check_tensor(g: GGUFFile, info: TensorInfo, shape: tuple[int, ...]) -> None:
    """The tensor has the shape the config asks for, in a type we can decode."""
    if info.shape != shape:
        raise GGUFError(
            f"{g.path}: tensor {info.name} has shape {info.shape}, the config says {shape} "
            f"(data at byte {info.offset})",
            info.offset,
        )
    quant_format(info, g.path)  # a GGUFError for a type stablelm_lab cannot decode


def _file_view(raw: np.ndarray) -> torch.Tensor:
    """The file's bytes as a uint8 tensor, without a copy. The map is read-only: the loader only reads
    this view, and copies what it keeps."""
    with warnings.catch_warnings():  # torch warns that it cannot make a read-only array writable
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(raw)


def _on_device(raw: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    return raw.to(device) if torch.device(device).type != "cpu" else raw


def _progress(prefixes: list[str], layers: dict[str, WeightLayer], g: GGUFFile, progress: bool | None) -> Iterable[str]:
    nbytes = {p: sum(g.tensor_info[f"{p}.{attr}"].nbytes for attr in layers[p].tensor_shapes) for p in prefixes}
    show = sum(nbytes.values()) > PROGRESS_BAR_BYTES if progress is None else progress
    if not show:
        return prefixes
    return _bytes_bar(nbytes, tqdm(total=sum(nbytes.values()), unit="B", unit_scale=True, desc="loading weights"))


def _bytes_bar(nbytes: dict[str, int], bar: tqdm) -> Iterator[str]:
    with bar:
        for prefix, n in nbytes.items():
            yield prefix
            bar.update(n)
