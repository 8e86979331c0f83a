"""Quantize a whole StableLM GGUF file with one of llama.cpp's mixes, as llama-quantize does.

    choices = quantize_gguf("model.F16.gguf", "model.Q4_K_M.gguf", "Q4_K_M")

What llama-quantize writes (llama_model_quantize_impl in llama.cpp's src/llama-quant.cpp), step by step:
1. the metadata of the source, key by key, then general.quantization_version = 2 and general.file_type
   = the mix (llama.cpp removes these two and appends them at the end);
2. the tensor table in llama.cpp's loading order: the tensors outside the blocks first (output.weight,
   output_norm.*, token_embd.weight: sorted by name), then block 0, 1, ... each sorted by name;
3. each tensor's bytes: copied when its type stays (norms, biases), else decoded to float32 and encoded
   with the reference quantizer of its new type (``stablelm_lab.quants``), row by row.
The type of each tensor comes from ``stablelm_lab.mixes.rules``. Done this way the output is the very file
llama-quantize writes, byte for byte (tests/test_quantize_file.py checks it against llama.cpp's).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from gguf import GGUFValueType, GGUFWriter, Keys
from tqdm.auto import tqdm

from .. import quants
from ..container.gguf_file import GGUFError, GGUFFile, PathLike
from .rules import Mix, TensorChoice, explain_mix, get_mix, tensor_role

GGML_QNT_VERSION = 2  # general.quantization_version that llama.cpp writes
CHUNK_WEIGHTS = 1 << 18  # weights decoded and re-encoded per step, to bound memory
PROGRESS_BAR_WEIGHTS = 32 << 20  # show a progress bar for models larger than this
UNQUANTIZED = {quants.get(name).qtype for name in ("F32", "F16", "BF16")}
#: The keys llama-quantize --imatrix adds (tools/quantize/quantize.cpp, LLM_KV_QUANTIZE_IMATRIX_*).
IMATRIX_FILE = "quantize.imatrix.file"
IMATRIX_DATASET = "quantize.imatrix.dataset"
IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"


def quantize_gguf(
    src: PathLike,
    dst: PathLike,
    mix: str | Mix,
    allow_requantize: bool = False,
    progress: bool | None = None,
    imatrix: Mapping[str, np.ndarray] | None = None,
    imatrix_file: str = "",
    imatrix_dataset: str | None = None,
    imatrix_chunks: int = 0,
) -> list[TensorChoice]:
    """Write ``dst``: the StableLM GGUF ``src`` quantized with ``mix`` ("Q4_K_M", ...). Returns, for
    every tensor in the order written, the type it got and the rule that chose it.

    With ``imatrix`` it writes what ``llama-quantize --imatrix FILE`` writes. ``imatrix`` maps a tensor
    name ("blk.0.attn_q.weight") to the importance of each of its input columns, float32 (n_cols,),
    exactly the vector llama-quantize hands to ggml_quantize_chunk: for an imatrix GGUF file,
    ``in_sum2 / counts`` (float32 division; 1 where the count is 0), for a legacy .dat file the stored
    values divided by their ncall (tools/quantize/quantize.cpp, load_imatrix). Every row of the tensor
    is quantized with that one vector. A tensor missing from the mapping is quantized without one (as
    llama-quantize does, "did not find weights"); a vector of another length is an error, except for
    token_embd.weight, which is then quantized without one. The metadata written with it, as
    llama-quantize appends it after general.file_type: quantize.imatrix.file = ``imatrix_file`` (the
    path as given to --imatrix, cut to 127 bytes), quantize.imatrix.dataset = ``imatrix_dataset`` (the
    file's first imatrix.datasets entry, when there is one), quantize.imatrix.entries_count = the
    number of entries in ``imatrix``, quantize.imatrix.chunks_count = ``imatrix_chunks`` (the file's
    imatrix.chunk_count, when above 0). The imatrix also changes one rule of the mixes (rules.py).
    """
    src, dst, mix = Path(src), Path(dst), get_mix(mix)
    if dst.resolve() == src.resolve():
        raise ValueError(f"the output {dst} would overwrite the input; choose another path")
    g = GGUFFile(src)
    choices = sorted(explain_mix(g, mix, has_imatrix=imatrix is not None), key=lambda c: llama_order(c.name))
    _check_requantize(choices, allow_requantize)
    importance = _check_imatrix(imatrix, choices)
    provenance = _imatrix_metadata(imatrix, imatrix_file, imatrix_dataset, imatrix_chunks)
    part = dst.with_name(dst.name + ".part")
    try:
        _write(g, part, choices, mix, progress, importance, provenance)
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
            raise GGUFError(
                f"{c.name} is already {c.source_type.name}: requantizing from a quantized type "
                f"compounds two rounding errors; start from an F16/F32 file, or allow it "
                f"explicitly (allow_requantize=True, --allow-requantize)"
            )


def _check_imatrix(imatrix: Mapping[str, np.ndarray] | None, choices: list[TensorChoice]) -> dict:
    """The importance vector of each tensor that gets one, checked as llama-quantize checks them."""
    if imatrix is None:
        return {}
    for name, values in imatrix.items():
        if not np.isfinite(np.asarray(values, dtype=np.float32)).all():
            raise ValueError(f"the imatrix entry for {name} holds a non-finite value; llama-quantize refuses it")
    importance = {}
    for c in choices:
        if c.name not in imatrix or c.qtype == c.source_type:
            continue
        values = np.asarray(imatrix[c.name], dtype=np.float32)
        if values.shape == (c.shape[-1],):
            importance[c.name] = values
        elif c.name != "token_embd.weight":
            raise ValueError(
                f"the imatrix entry for {c.name} has {values.size} values; the tensor has {c.shape[-1]} columns"
            )
    return importance


def _imatrix_metadata(imatrix, file: str, dataset: str | None, chunks: int) -> list[tuple[str, object, GGUFValueType]]:
    """The quantize.imatrix.* keys llama-quantize appends (tools/quantize/quantize.cpp)."""
    if imatrix is None:
        return []
    keys = [(IMATRIX_FILE, os.fsencode(file)[:127].decode(errors="ignore"), GGUFValueType.STRING)]
    if dataset is not None:
        keys.append((IMATRIX_DATASET, dataset.encode()[:127].decode(errors="ignore"), GGUFValueType.STRING))
    keys.append((IMATRIX_ENTRIES, len(imatrix), GGUFValueType.UINT32))
    if chunks > 0:
        keys.append((IMATRIX_CHUNKS, chunks, GGUFValueType.UINT32))
    return keys


def _write(
    g: GGUFFile,
    path: Path,
    choices: list[TensorChoice],
    mix: Mix,
    progress: bool | None,
    importance: dict,
    provenance: list,
) -> None:
    writer = GGUFWriter(path, g.architecture)
    try:
        _copy_metadata(g, writer, {key for key, _, _ in provenance})
        writer.add_uint32(Keys.General.QUANTIZATION_VERSION, GGML_QNT_VERSION)
        writer.add_uint32(Keys.General.FILE_TYPE, int(mix.file_type))
        for key, value, value_type in provenance:
            writer.add_key_value(key, value, value_type)
        for c in choices:
            writer.add_tensor_info(c.name, c.shape, np.float32, c.nbytes, raw_dtype=c.qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        with _progress_bar(choices, mix, progress) as bar:
            for c in choices:
                bar.set_postfix_str(c.name, refresh=False)
                writer.write_tensor_data(convert(g, c, bar, importance.get(c.name)))
    finally:
        writer.close()


def _copy_metadata(g: GGUFFile, writer: GGUFWriter, appended: set[str] = frozenset()) -> None:
    """Every key with its GGUF value type (an i32 stays an i32), in the source's order; the keys
    llama.cpp rewrites (general.quantization_version, general.file_type, ``appended``) are appended by
    the caller."""
    writer.data_alignment = g.alignment
    rewritten = {Keys.General.ARCHITECTURE, Keys.General.QUANTIZATION_VERSION, Keys.General.FILE_TYPE, *appended}
    for key, value in g.metadata.items():
        if key in rewritten:
            continue
        value_type, item_type = g.metadata_types[key]
        writer.add_key_value(key, value, value_type, sub_type=item_type)


def convert(
    g: GGUFFile, choice: TensorChoice, bar: tqdm | None = None, importance: np.ndarray | None = None
) -> np.ndarray:
    """The tensor's bytes in its new type: the source bytes when the type stays, else decoded to float32
    and re-encoded, a chunk of rows at a time (weighted by ``importance``, one value per column, if given)."""
    raw = g.raw(choice.name)
    raw = raw.reshape(-1, raw.shape[-1])  # (rows, source bytes)
    if choice.qtype == choice.source_type:
        _advance(bar, choice.n_elements)
        return np.ascontiguousarray(raw)
    source, target = quants.get(choice.source_type), quants.get(choice.qtype)
    n_cols = choice.shape[-1]
    out = np.empty((len(raw), n_cols // target.block_size * target.type_size), dtype=np.uint8)
    step = max(1, CHUNK_WEIGHTS // n_cols)
    for start in range(0, len(raw), step):
        weights = source.dequantize(raw[start : start + step])  # (rows, n_cols) float32
        out[start : start + step] = target.quantize(weights, imatrix=importance)
        _advance(bar, weights.size)
    return out


def _advance(bar, n: int) -> None:
    if bar is not None:
        bar.update(n)


def _progress_bar(choices: list[TensorChoice], mix: Mix, progress: bool | None):
    total = sum(c.n_elements for c in choices)
    show = total > PROGRESS_BAR_WEIGHTS if progress is None else progress
    return tqdm(total=total, unit="w", unit_scale=True, desc=f"quantizing to {mix.name}", disable=not show)
