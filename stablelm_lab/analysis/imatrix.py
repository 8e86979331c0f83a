"""The importance matrix: how strongly each input column of each matrix is driven, as llama-imatrix measures it.

    imat = collect_imatrix(model, text, tokenizer=tok, chunk_size=128)   # or collect_imatrix(path, text)
    imat.sums["blk.0.ffn_down.weight"]     # float32 (n_ff,): Σ over tokens of x_j², x = ffn_down's input
    imat.counts["blk.0.ffn_down.weight"]   # int64 (1,): how many tokens went into the sums
    imat.importance()                      # {tensor name: sums / count}: what llama-quantize hands the quantizers
    save_imatrix(imat, "imatrix.gguf"); load_imatrix("imatrix.gguf")    # llama.cpp's files (.dat read too)

What is measured (llama.cpp tools/imatrix/imatrix.cpp, ``IMatrixCollector::collect_imatrix``): for every
matrix multiplication ``y = W x`` whose weight is named ``blk.*`` (and ``output.weight`` with
``--process-output``), the running sum over tokens of ``x[j] * x[j]`` for each input column j, plus the
number of tokens. For StableLM that is attn_q, attn_k, attn_v (input: attn_norm), attn_output (kqv_out),
ffn_gate, ffn_up (ffn_norm) and ffn_down (the SwiGLU product, ffn_swiglu), read here from the model's
named activations during the one forward pass, by hooks.

How the text is cut (``compute_imatrix``): the whole text is tokenized once (BOS first if the vocabulary
adds one), cut into len // chunk_size chunks of chunk_size tokens (the rest is dropped; fewer than two
chunks' worth is refused), each chunk runs from an empty cache with its first token replaced by BOS when
the vocabulary adds one, and every token of every chunk counts (only llama-imatrix's perplexity estimate
skips the first half of a chunk). llama-imatrix also ignores a matrix multiplication over fewer than 16
tokens (``if (src1->ne[1] < 16 ...) return false``); we run one whole chunk per pass and keep every one.

What the quantizers do with it (ggml/src/ggml-quants.c): ``sums / count`` becomes ``quant_weights``, and
``quantize_<type>`` then runs the type's ``_impl`` quantizer instead of its reference one: the scale search
of a block minimizes Σ_j w_j (x_j − x̂_j)² with w_j = quant_weights[j] · sqrt(σ² + x_j²)
(``quantize_row_q4_K_impl``, ``quantize_row_q4_0_impl``...) instead of the reference weights (Q4_K's:
av_x + |x_j|). A column the text drives hard must be rounded well; one it barely touches may be rounded
badly.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from ..container.gguf_file import GGUFFile, PathLike
from ..model import StableLM
from ..model.config import StableLMConfig
from .metrics import DEFAULT_N_CTX, _Scorer, chunks

GGUF_VERSION = 3
GGUF_ALIGNMENT = 32
GGML_TYPE_F32 = 0
GGUF_TYPE_UINT32, GGUF_TYPE_STRING, GGUF_TYPE_ARRAY = 4, 8, 9
KEY_TYPE, KEY_DATASETS = "general.type", "imatrix.datasets"
KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.chunk_count", "imatrix.chunk_size"
SUM_SUFFIX, COUNT_SUFFIX = ".in_sum2", ".counts"


class ImatrixError(ValueError):
    """An importance-matrix file that is malformed or does not fit the model."""


@dataclass
class ImportanceMatrix:
    """Per matrix (by GGUF tensor name): the sums of squared inputs per column, and the token count.

    As in llama.cpp, ``sums[name]`` is flat: n_mat blocks of n_cols (n_mat = 1 for a dense model like
    StableLM; a mixture of experts has one block per expert) and ``counts[name]`` has n_mat entries.
    A legacy .dat file stores ``(sum / count) · ncall`` and ``ncall`` instead (``legacy`` = True)."""

    sums: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]
    chunk_count: int = 0
    chunk_size: int = 0
    datasets: list[str] = field(default_factory=list)
    legacy: bool = False

    def __len__(self) -> int:
        return len(self.sums)

    def importance(self) -> dict[str, np.ndarray]:
        """{tensor name: float32 vector}: what llama-quantize passes to the quantizers (tools/quantize/
        quantize.cpp, ``load_imatrix``): each block of sums divided by its count (1 where a count is 0),
        or a legacy file's values divided by ncall."""
        out = {}
        for name, sums in self.sums.items():
            counts = self.counts[name].astype(np.float32)
            blocks = sums.reshape(len(counts), -1)
            if self.legacy:
                out[name] = sums / counts[0] if counts[0] > 0 else sums.copy()
            else:
                safe = np.where(counts > 0, counts, np.float32(1))
                out[name] = np.where(counts[:, None] > 0, blocks / safe[:, None], np.float32(1)).reshape(-1)
        return {name: v.astype(np.float32) for name, v in out.items()}

    def __repr__(self) -> str:
        n_tokens = max((int(c.max()) for c in self.counts.values()), default=0)
        kind = "legacy .dat, ncall" if self.legacy else "tokens"
        return (
            f"ImportanceMatrix({len(self)} matrices, {n_tokens} {kind}, {self.chunk_count} chunks of "
            f"{self.chunk_size}, datasets {self.datasets})"
        )


# ---- collecting ----------------------------------------------------------------------------------------
def matrix_inputs(config: StableLMConfig, process_output: bool = False) -> dict[str, list[str]]:
    """{activation name: the weights it is the input of}: which named activation each matrix multiplies."""
    inputs: dict[str, list[str]] = {}
    for i in range(config.n_layer):
        ffn_input = f"blk.{i}.attn_norm" if config.parallel_residual else f"blk.{i}.ffn_norm"
        inputs.setdefault(f"blk.{i}.attn_norm", []).extend(f"blk.{i}.attn_{m}.weight" for m in "qkv")
        inputs[f"blk.{i}.kqv_out"] = [f"blk.{i}.attn_output.weight"]
        inputs.setdefault(ffn_input, []).extend([f"blk.{i}.ffn_gate.weight", f"blk.{i}.ffn_up.weight"])
        inputs[f"blk.{i}.ffn_swiglu"] = [f"blk.{i}.ffn_down.weight"]
    if process_output:
        inputs["result_norm"] = ["output.weight"]
    return inputs


def collect_imatrix(
    model: StableLM | PathLike,
    text: str | Iterable[int],
    tokenizer: Tokenizer | None = None,
    chunk_size: int | None = None,
    n_chunks: int | None = None,
    process_output: bool = False,
    add_bos: bool | None = None,
    datasets: list[str] | None = None,
    progress: bool = False,
) -> ImportanceMatrix:
    """llama-imatrix's importance matrix of ``model`` (a StableLM with ``tokenizer``, or a GGUF path) over
    ``text`` (a string, or token ids): ``-c chunk_size`` (``--chunks n_chunks``, ``--process-output``).
    chunk_size defaults to llama-imatrix's 512, or the model's context if shorter. The sums are
    accumulated in float64 and stored as float32, as the file holds them."""
    scorer = _Scorer.of(model, tokenizer, add_bos)
    chunk_size = chunk_size or min(DEFAULT_N_CTX, scorer.model.config.n_ctx)
    tokens = scorer.tokens(text)
    if len(tokens) < 2 * chunk_size:
        raise ValueError(
            f"you need at least {2 * chunk_size} tokens for chunks of {chunk_size} tokens; the "
            f"text tokenizes to only {len(tokens)} (llama-imatrix refuses the same)"
        )
    ids = chunks(tokens, chunk_size, scorer.add_bos, scorer.bos_id)[:n_chunks]
    model = scorer.model
    inputs = matrix_inputs(model.config, process_output)
    sums = dict.fromkeys(inputs, 0.0)
    seen = dict.fromkeys(inputs, 0)

    def accumulate(name):
        def hook(x):  # x (B, T, n_cols): add Σ over the tokens of x² per column; x itself goes on unchanged
            x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            sums[name] = sums[name] + (x * x).sum(0).cpu()
            seen[name] += x.shape[0]

        return hook

    hooks = {name: accumulate(name) for name in inputs}
    for chunk in tqdm(ids, desc="collecting", unit="chunk", disable=not progress):
        model.run_with_hooks(torch.as_tensor(chunk[None]), hooks)
    return ImportanceMatrix(
        sums={w: sums[a].numpy().astype(np.float32) for a, ws in inputs.items() for w in ws},
        counts={w: np.array([seen[a]], dtype=np.int64) for a, ws in inputs.items() for w in ws},
        chunk_count=len(ids),
        chunk_size=chunk_size,
        datasets=list(datasets or []),
    )


# ---- llama.cpp's imatrix GGUF file ---------------------------------------------------------------------
def save_imatrix(imat: ImportanceMatrix, path: PathLike) -> None:
    """Write llama-imatrix's GGUF file (``IMatrixCollector::save_imatrix``): keys general.type = "imatrix",
    imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size; per matrix, in name order, the F32 tensors
    ``<name>.in_sum2`` (n_cols × n_mat) and ``<name>.counts`` (1 × n_mat), laid out as gguf.cpp writes them."""
    if imat.legacy:
        raise ImatrixError(
            "a legacy .dat matrix holds averages, not sums: llama.cpp converts it with the "
            "chunk size it was made with (llama-imatrix --in-file FILE.dat -c N)"
        )
    kvs = [
        _kv_str(KEY_TYPE, "imatrix"),
        _kv_str_array(KEY_DATASETS, imat.datasets),
        _kv_u32(KEY_CHUNK_COUNT, imat.chunk_count),
        _kv_u32(KEY_CHUNK_SIZE, imat.chunk_size),
    ]
    tensors = []  # (name, ne, float32 data)
    for name in sorted(imat.sums):
        counts = np.asarray(imat.counts[name])
        n_mat = len(counts)
        tensors.append((name + SUM_SUFFIX, (len(imat.sums[name]) // n_mat, n_mat), imat.sums[name]))
        tensors.append((name + COUNT_SUFFIX, (1, n_mat), counts))
    infos, offset = [], 0
    for name, ne, _ in tensors:
        infos.append(_gguf_str(name) + _tensor_dims(ne) + struct.pack("<IQ", GGML_TYPE_F32, offset))
        offset += _pad(4 * int(np.prod(ne)))
    head = b"GGUF" + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kvs)) + b"".join(kvs) + b"".join(infos)
    with open(path, "wb") as f:
        f.write(head + bytes(_pad(len(head)) - len(head)))
        for *_, data in tensors:
            raw = np.asarray(data, dtype="<f4").tobytes()
            f.write(raw + bytes(_pad(len(raw)) - len(raw)))


def _pad(n: int) -> int:
    return (n + GGUF_ALIGNMENT - 1) // GGUF_ALIGNMENT * GGUF_ALIGNMENT


def _gguf_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _kv_str(key: str, value: str) -> bytes:
    return _gguf_str(key) + struct.pack("<I", GGUF_TYPE_STRING) + _gguf_str(value)


def _kv_str_array(key: str, values: list[str]) -> bytes:
    return (
        _gguf_str(key)
        + struct.pack("<IIQ", GGUF_TYPE_ARRAY, GGUF_TYPE_STRING, len(values))
        + b"".join(_gguf_str(v) for v in values)
    )


def _kv_u32(key: str, value: int) -> bytes:
    return _gguf_str(key) + struct.pack("<II", GGUF_TYPE_UINT32, value)


def _tensor_dims(ne: tuple[int, ...]) -> bytes:
    """ggml_n_dims: trailing dimensions of 1 are not written (a 256 × 1 tensor is stored as 1-D)."""
    n_dims = max([1] + [i + 1 for i, n in enumerate(ne) if n != 1])
    return struct.pack(f"<I{n_dims}Q", n_dims, *ne[:n_dims])


def load_imatrix(path: PathLike) -> ImportanceMatrix:
    """Read an imatrix file: llama.cpp's GGUF format, or the legacy .dat (common/imatrix-loader.cpp).
    A malformed entry raises ImatrixError naming the tensor."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    imat = _load_gguf(path) if magic == b"GGUF" else _load_legacy(path)
    _check_values(imat, path)
    return imat


def _load_gguf(path: Path) -> ImportanceMatrix:
    g = GGUFFile(path)
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in g.metadata]
    if missing:
        raise ImatrixError(
            f"{path}: missing imatrix metadata {', '.join(missing)} (llama-quantize refuses "
            f"such a file too); is it an imatrix file?"
        )
    pairs: dict[str, dict[str, object]] = {}
    for t in g.tensors:
        for suffix in (SUM_SUFFIX, COUNT_SUFFIX):
            if t.name.endswith(suffix):
                pairs.setdefault(t.name[: -len(suffix)], {})[suffix] = t
    if not pairs:
        raise ImatrixError(f"{path}: no <tensor>.in_sum2 / <tensor>.counts entries: no importance data")
    sums, counts = {}, {}
    for name, pair in sorted(pairs.items()):
        for suffix in (SUM_SUFFIX, COUNT_SUFFIX):
            other = COUNT_SUFFIX if suffix == SUM_SUFFIX else SUM_SUFFIX
            if suffix not in pair:
                raise ImatrixError(f"{path}: {name} has {name}{other} but no {name}{suffix}")
            if pair[suffix].qtype.name != "F32":
                raise ImatrixError(f"{path}: {name}{suffix} is {pair[suffix].qtype.name}; sums and counts must be F32")
        sums[name] = np.array(g.raw(name + SUM_SUFFIX)).view("<f4").reshape(-1).astype(np.float32)
        stored = np.array(g.raw(name + COUNT_SUFFIX)).view("<f4").reshape(-1)
        if not np.all(np.isfinite(stored)):
            raise ImatrixError(f"{path}: {name}.counts is not finite: {stored[~np.isfinite(stored)][:3]}")
        counts[name] = np.rint(stored).astype(np.int64)  # llama.cpp: std::lround
        if len(counts[name]) == 0 or len(sums[name]) % len(counts[name]):
            raise ImatrixError(
                f"{path}: {name}: {len(sums[name])} sums do not split into {len(counts[name])} counts (one per matrix)"
            )
    return ImportanceMatrix(
        sums,
        counts,
        int(g.metadata[KEY_CHUNK_COUNT]),
        int(g.metadata[KEY_CHUNK_SIZE]),
        [str(d) for d in g.metadata[KEY_DATASETS]],
    )


def _load_legacy(path: Path) -> ImportanceMatrix:
    """The .dat layout (save_imatrix_legacy): i32 n_entries; per entry i32 name length, the name, i32 ncall,
    i32 nval, nval f32 = (sum / count) · ncall; then optionally i32 chunk count, i32 length, dataset name."""
    data = path.read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n < 0 or pos + n > len(data):
            raise ImatrixError(
                f"{path}: not an imatrix file (neither GGUF nor a complete legacy .dat): "
                f"{what} runs past the end ({len(data)} bytes)"
            )
        pos += n
        return data[pos - n : pos]

    def i32(what: str) -> int:
        return struct.unpack("<i", take(4, what))[0]

    n_entries = i32("the entry count")
    if n_entries < 1:
        raise ImatrixError(f"{path}: not an imatrix file: {n_entries} entries")
    sums, counts = {}, {}
    for i in range(n_entries):
        name = take(i32(f"entry {i + 1}'s name length"), f"entry {i + 1}'s name").decode("utf-8", "replace")
        ncall, nval = i32(f"{name}'s ncall"), i32(f"{name}'s value count")
        if nval < 1:
            raise ImatrixError(f"{path}: {name} has {nval} values")
        sums[name] = np.frombuffer(take(4 * nval, f"{name}'s values"), dtype="<f4").astype(np.float32)
        counts[name] = np.array([ncall], dtype=np.int64)
    chunk_count, datasets = 0, []
    if pos + 4 <= len(data):
        chunk_count = i32("the chunk count")
        if pos + 4 <= len(data):
            n = i32("the dataset name length")
            if n > 0:
                datasets.append(take(n, "the dataset name").decode("utf-8", "replace"))
    return ImportanceMatrix(sums, counts, chunk_count, 0, datasets, legacy=True)


def _check_values(imat: ImportanceMatrix, path) -> None:
    for name, sums in imat.sums.items():
        bad = ~np.isfinite(sums)
        if bad.any():
            raise ImatrixError(
                f"{path}: {name} has {bad.sum()} non-finite sums (first at column {np.argmax(bad)}: {sums[bad][0]})"
            )
        if (sums < 0).any():
            raise ImatrixError(f"{path}: {name} has negative sums of squares (column {np.argmax(sums < 0)})")
        if (imat.counts[name] <= 0).any():
            raise ImatrixError(
                f"{path}: {name} has a count of {imat.counts[name].min()}: no tokens went into "
                f"its sums (llama-quantize would quietly weigh every column 1)"
            )


def check_imatrix(imat: ImportanceMatrix, model_file: PathLike | GGUFFile) -> None:
    """That ``imat`` fits the model in ``model_file`` (a GGUF path or GGUFFile): one entry per matrix that
    llama-imatrix collects (every 2-D blk.* weight), each as long as the matrix's rows (n_cols per
    expert), and no entry for a tensor the model lacks. ImatrixError naming the first tensor that does not."""
    g = model_file if isinstance(model_file, GGUFFile) else GGUFFile(model_file)
    shapes = {t.name: t.shape for t in g.tensors}
    for name, sums in sorted(imat.sums.items()):
        if name not in shapes:
            raise ImatrixError(f"the importance matrix has {name}, which {g.path} does not: made for another model?")
        n_cols, n_mat = shapes[name][-1], int(np.prod(shapes[name][:-2])) if len(shapes[name]) > 2 else 1
        if len(sums) != n_cols * n_mat:
            raise ImatrixError(
                f"{name}: the importance matrix has {len(sums)} values, the tensor in {g.path} "
                f"has {n_cols * n_mat} columns: made for another model?"
            )
    for name, shape in shapes.items():
        if name.startswith("blk.") and name.endswith(".weight") and len(shape) >= 2 and name not in imat.sums:
            raise ImatrixError(
                f"{name}: no importance data for this matrix (llama-imatrix collects every blk.* "
                f"matrix): the file is incomplete or for another model"
            )


def imatrix_arguments(path: PathLike, model_file: PathLike | GGUFFile) -> dict:
    """What ``quantize_gguf`` needs to write ``llama-quantize --imatrix path``'s file, read from an imatrix
    file and checked against the model it will quantize: ``imatrix`` = {tensor name: importance vector, as
    llama-quantize computes it}, and what its output records of the file (the quantize.imatrix.* keys):
    ``imatrix_file`` (the path as given), ``imatrix_dataset`` (the first dataset), ``imatrix_chunks``."""
    imat = load_imatrix(path)
    check_imatrix(imat, model_file)
    return {
        "imatrix": imat.importance(),
        "imatrix_file": str(path),
        "imatrix_dataset": imat.datasets[0] if imat.datasets else None,
        "imatrix_chunks": imat.chunk_count,
    }
