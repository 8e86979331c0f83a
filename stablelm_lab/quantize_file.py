"""Quantize a whole StableLM GGUF file with one of llama.cpp's mixes, as llama-quantize does.

    choices = quantize_gguf("model.F16.gguf", "model.Q4_K_M.gguf", "Q4_K_M")

What llama-quantize writes (llama_model_quantize_impl in llama.cpp's src/llama-quant.cpp), step by step:
1. the metadata of the source, key by key, then general.quantization_version = 2 and general.file_type
   = the mix (llama.cpp removes these two and appends them at the end);
2. the tensor table in llama.cpp's loading order: the tensors outside the blocks first (output.weight,
   output_norm.*, token_embd.weight: sorted by name), then block 0, 1, ... each sorted by name;
3. each tensor's bytes: copied when its type stays (norms, biases), else decoded to float32 and encoded
   with the reference quantizer of its new type (``stablelm_lab.quants``), row by row.
The type of each tensor comes from ``stablelm_lab.mixes``. Done this way the output is the very file
llama-quantize writes, byte for byte (tests/test_quantize_file.py checks it against llama.cpp's).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, Keys

from . import quants
from .gguf_file import GGUFError, GGUFFile
from .mixes import Mix, TensorChoice, explain_mix, get_mix, tensor_role

GGML_QNT_VERSION = 2                  # general.quantization_version that llama.cpp writes
CHUNK_WEIGHTS = 1 << 18               # weights decoded and re-encoded per step, to bound memory
PROGRESS_BAR_WEIGHTS = 32 << 20       # show a progress bar for models larger than this
UNQUANTIZED = {quants.get(name).qtype for name in ("F32", "F16", "BF16")}


def quantize_gguf(src, dst, mix: str | Mix, allow_requantize: bool = False,
                  progress: bool | None = None) -> list[TensorChoice]:
    """Write ``dst``: the StableLM GGUF ``src`` quantized with ``mix`` ("Q4_K_M", ...). Returns, for
    every tensor in the order written, the type it got and the rule that chose it."""
    src, dst, mix = Path(src), Path(dst), get_mix(mix)
    if dst.resolve() == src.resolve():
        raise ValueError(f"the output {dst} would overwrite the input; choose another path")
    g = GGUFFile(src)
    choices = sorted(explain_mix(g, mix), key=lambda c: llama_order(c.name))
    _check_requantize(choices, allow_requantize)
    part = dst.with_name(dst.name + ".part")
    try:
        _write(g, part, choices, mix, progress)
        os.replace(part, dst)
    finally:
        part.unlink(missing_ok=True)
    return choices


def llama_order(name: str) -> tuple[int, str]:
    """llama.cpp's order of tensors (llama_model_loader's weight_name_comparer): layer, then name;
    tensors outside the blocks count as layer -1."""
    _, layer = tensor_role(name)
    return (-1 if layer is None else layer, name)


def _check_requantize(choices: list[TensorChoice], allow_requantize: bool) -> None:
    for c in choices:
        if c.qtype != c.source_type and c.source_type not in UNQUANTIZED and not allow_requantize:
            raise GGUFError(f"{c.name} is already {c.source_type.name}: requantizing from a quantized type "
                            f"compounds two rounding errors; start from an F16/F32 file, or allow it "
                            f"explicitly (allow_requantize=True, --allow-requantize)")


def _write(g: GGUFFile, path: Path, choices: list[TensorChoice], mix: Mix, progress: bool | None) -> None:
    writer = GGUFWriter(path, g.architecture)
    try:
        _copy_metadata(g, writer)
        writer.add_uint32(Keys.General.QUANTIZATION_VERSION, GGML_QNT_VERSION)
        writer.add_uint32(Keys.General.FILE_TYPE, int(mix.file_type))
        for c in choices:
            writer.add_tensor_info(c.name, c.shape, np.float32, c.nbytes, raw_dtype=c.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with _progress_bar(choices, mix, progress) as bar:
            for c in choices:
                bar.set_postfix_str(c.name, refresh=False)
                writer.write_tensor_data(convert(g, c, bar))
    finally:
        writer.close()


def _copy_metadata(g: GGUFFile, writer: GGUFWriter) -> None:
    """Every key with its GGUF value type (an i32 stays an i32), in the source's order; the two keys
    llama.cpp rewrites are appended by the caller."""
    writer.data_alignment = g.alignment
    rewritten = {Keys.General.ARCHITECTURE, Keys.General.QUANTIZATION_VERSION, Keys.General.FILE_TYPE}
    for key, value in g.metadata.items():
        if key in rewritten:
            continue
        value_type, item_type = g.metadata_types[key]
        writer.add_key_value(key, value, value_type, sub_type=item_type)


def convert(g: GGUFFile, choice: TensorChoice, bar=None) -> np.ndarray:
    """The tensor's bytes in its new type: the source bytes when the type stays, else decoded to float32
    and re-encoded, a chunk of rows at a time."""
    raw = g.raw(choice.name)
    raw = raw.reshape(-1, raw.shape[-1])                                          # (rows, source bytes)
    if choice.qtype == choice.source_type:
        _advance(bar, choice.n_elements)
        return np.ascontiguousarray(raw)
    source, target = quants.get(choice.source_type), quants.get(choice.qtype)
    n_cols = choice.shape[-1]
    out = np.empty((len(raw), n_cols // target.block_size * target.type_size), dtype=np.uint8)
    step = max(1, CHUNK_WEIGHTS // n_cols)
    for start in range(0, len(raw), step):
        weights = source.dequantize(raw[start:start + step])                     # (rows, n_cols) float32
        out[start:start + step] = target.quantize(weights)
        _advance(bar, weights.size)
    return out


def _advance(bar, n: int) -> None:
    if bar is not None:
        bar.update(n)


def _progress_bar(choices: list[TensorChoice], mix: Mix, progress: bool | None):
    from tqdm.auto import tqdm

    total = sum(c.n_elements for c in choices)
    show = total > PROGRESS_BAR_WEIGHTS if progress is None else progress
    return tqdm(total=total, unit="w", unit_scale=True, desc=f"quantizing to {mix.name}", disable=not show)
