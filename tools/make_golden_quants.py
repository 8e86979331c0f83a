"""Make the golden files that prove stablelm_lab.quants equal to llama.cpp, byte for byte.

    python tools/make_golden_quants.py        # in an environment with llama-cpp-python built from source
    # or its source package over a separate llama.cpp build (diskcache importable, for llama_cpp's __init__):
    PYTHONPATH=/path/to/llama_cpp_python-0.3.36 LLAMA_CPP_LIB_PATH=/path/to/llama.cpp/build/bin \
        .venv/bin/python tools/make_golden_quants.py

Writes, under tests/golden/:
- quant_rows.npz: rows of several characters (Gaussian, heavy-tailed, zeros, ...), each quantized by
  ggml's quantize_<type> without importance matrix (what llama-quantize calls; for every type but
  IQ4_NL it is quantize_row_<type>_ref, which this script checks) and decoded again by
  dequantize_row_<type>; and random bytes decoded
  by dequantize_row_<type> (NaN, inf and subnormal fp16 scales included).
- tiny_stablelm.F32.gguf and tiny_stablelm.<TYPE>.gguf: a small StableLM-shaped model whose tensors
  hold the same characters, quantized by llama.cpp's own llama_model_quantize (pure: every matrix
  gets the one type), i.e. blocks written the way llama-quantize writes a released file.

The tests read these files only; they never need llama.cpp. llama-cpp-python must be built without
-march=native (CMAKE_ARGS="-DGGML_NATIVE=OFF"), so that its C code rounds every float operation on its
own, as numpy does, instead of fusing a*b+c into one FMA.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

# ggml_ref: a sibling in tools/ (Python puts the folder of the script it runs first on sys.path)
import ggml_ref
import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFWriter, LlamaFileType
from gguf import GGMLQuantizationType as T

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"

#: The types that have a reference quantizer in ggml (quantize_row_<type>_ref).
QUANTIZED_TYPES = [
    T.Q4_0,
    T.Q4_1,
    T.Q5_0,
    T.Q5_1,
    T.Q8_0,
    T.Q2_K,
    T.Q3_K,
    T.Q4_K,
    T.Q5_K,
    T.Q6_K,
    T.IQ4_NL,
    T.IQ4_XS,
    T.TQ1_0,
    T.TQ2_0,
    T.MXFP4,
]
#: llama_model_quantize's file type for each of them.
FILE_TYPES = {
    T.Q4_0: LlamaFileType.MOSTLY_Q4_0,
    T.Q4_1: LlamaFileType.MOSTLY_Q4_1,
    T.Q5_0: LlamaFileType.MOSTLY_Q5_0,
    T.Q5_1: LlamaFileType.MOSTLY_Q5_1,
    T.Q8_0: LlamaFileType.MOSTLY_Q8_0,
    T.Q2_K: LlamaFileType.MOSTLY_Q2_K,
    T.Q3_K: LlamaFileType.MOSTLY_Q3_K_S,
    T.Q4_K: LlamaFileType.MOSTLY_Q4_K_S,
    T.Q5_K: LlamaFileType.MOSTLY_Q5_K_S,
    T.Q6_K: LlamaFileType.MOSTLY_Q6_K,
    T.IQ4_NL: LlamaFileType.MOSTLY_IQ4_NL,
    T.IQ4_XS: LlamaFileType.MOSTLY_IQ4_XS,
    T.TQ1_0: LlamaFileType.MOSTLY_TQ1_0,
    T.TQ2_0: LlamaFileType.MOSTLY_TQ2_0,
}
# (MXFP4 is left out of the files: llama.cpp writes it only for MoE expert tensors, which StableLM lacks.)
DECODED_TYPES = QUANTIZED_TYPES


def row_characters(rng: np.random.Generator, n_rows: int = 8, n: int = 512) -> dict[str, np.ndarray]:
    """Rows that exercise every branch of the quantizers, each (n_rows, n) float32."""
    gauss = rng.standard_normal((n_rows, n))
    heavy = rng.standard_t(2, (n_rows, n)) * 0.02
    heavy[rng.random((n_rows, n)) < 0.01] *= 50  # rare outliers
    constant = np.full((n_rows, n), 0.125) * np.where(np.arange(n_rows) % 2, -1, 1)[:, None]
    magnitude_tiny = np.array([1e-6, 1e-8, 1e-30, 1e-38] * (n_rows // 4))[:, None]
    magnitude_huge = np.array([1e2, 1e4, 6e4, 1e6] * (n_rows // 4))[:, None]
    alternating = rng.uniform(0.5, 1.0, (n_rows, n)) * np.where(np.arange(n) % 2, -1, 1)
    spike = gauss * 0.01
    spike[np.arange(n_rows), rng.integers(0, n, n_rows)] = 1.0
    mixed = np.where(rng.random((n_rows, n)) < 0.5, -1, 1) * rng.uniform(0, 2, (n_rows, n))
    rows = {
        "gaussian": gauss * 0.02,
        "heavy_tailed": heavy,
        "zeros": np.zeros((n_rows, n)),
        "constant": constant,
        "tiny": gauss * magnitude_tiny,
        "huge": gauss * magnitude_huge,
        "alternating_signs": alternating,
        "mixed_signs": mixed,
        "uniform": rng.uniform(-1, 1, (n_rows, n)),
        "single_spike": spike,
        "all_positive": np.abs(gauss) + 0.5,
        "integers": rng.integers(-8, 8, (n_rows, n)).astype(np.float64),
    }
    return {name: r.astype(np.float32) for name, r in rows.items()}


def random_blocks(rng: np.random.Generator, qtype: T) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = 1024 if block_size == 32 else 256
    return rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)


def make_row_golden(rng: np.random.Generator) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, rows in row_characters(rng).items():
        arrays[f"rows/{name}"] = rows
        for qtype in QUANTIZED_TYPES:
            raw = ggml_ref.quantize_rows(rows, qtype)
            if qtype != T.IQ4_NL and not np.array_equal(raw, ggml_ref.quantize_row(rows, qtype)):
                raise AssertionError(f"quantize_{qtype.name} differs from its row ref on {name}")
            arrays[f"quantized/{qtype.name}/{name}"] = raw
            arrays[f"dequantized/{qtype.name}/{name}"] = ggml_ref.dequantize_row(raw, qtype)
    for qtype in DECODED_TYPES:
        raw = random_blocks(rng, qtype)
        arrays[f"random_bytes/{qtype.name}"] = raw
        arrays[f"random_decoded/{qtype.name}"] = ggml_ref.dequantize_row(raw, qtype)
    return arrays


# ---- a tiny StableLM quantized by llama_model_quantize --------------------------------------------
def tiny_stablelm_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A one-layer StableLM with 256-wide rows (so every K-quant applies); each matrix a character."""
    chars = row_characters(rng, n_rows=64, n=256)
    hidden, n_vocab = 256, 64

    def matrix(rows: int, *names: str) -> np.ndarray:
        return np.concatenate([chars[name] for name in names])[:rows]

    return {
        "token_embd.weight": matrix(n_vocab, "gaussian"),
        "blk.0.attn_norm.weight": np.ones(hidden, np.float32),
        "blk.0.attn_norm.bias": np.zeros(hidden, np.float32),
        "blk.0.attn_q.weight": matrix(256, "heavy_tailed", "single_spike", "mixed_signs", "uniform"),
        # ordinary-sized keys (q.k / sqrt(64) spans several units), so attention is far from uniform and a
        # wrong rotary or attention scale changes the logits; "tiny" blocks stay in ffn_up
        "blk.0.attn_k.weight": matrix(64, "gaussian") * np.float32(10),
        "blk.0.attn_v.weight": matrix(64, "gaussian") * np.float32(5e4),  # large, yet finite in fp16
        "blk.0.attn_output.weight": matrix(256, "zeros", "constant", "alternating_signs", "integers"),
        "blk.0.ffn_norm.weight": np.ones(hidden, np.float32),
        "blk.0.ffn_norm.bias": np.zeros(hidden, np.float32),
        "blk.0.ffn_gate.weight": matrix(256, "gaussian", "all_positive", "heavy_tailed", "uniform"),
        "blk.0.ffn_up.weight": matrix(256, "mixed_signs", "gaussian", "single_spike", "tiny"),
        "blk.0.ffn_down.weight": matrix(256, "uniform", "heavy_tailed", "gaussian", "integers"),
        "output_norm.weight": np.ones(hidden, np.float32),
        "output_norm.bias": np.zeros(hidden, np.float32),
        "output.weight": matrix(n_vocab, "heavy_tailed"),
    }


def write_tiny_stablelm(path: Path, tensors: dict[str, np.ndarray]) -> None:
    writer = GGUFWriter(str(path), "stablelm")
    writer.add_name("tiny-stablelm-golden")
    writer.add_context_length(64)
    writer.add_embedding_length(256)
    writer.add_block_count(1)
    writer.add_feed_forward_length(256)
    writer.add_rope_dimension_count(16)
    writer.add_head_count(4)
    writer.add_head_count_kv(1)
    writer.add_layer_norm_eps(1e-5)
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("stablelm2")
    writer.add_token_list([f"<t{i}>" for i in range(64)])
    writer.add_token_types([1] * 64)
    writer.add_token_merges([])
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_quantize(src: Path, dst: Path, qtype: T) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(FILE_TYPES[qtype])
    params.pure = True
    params.nthread = 1
    params.quantize_output_tensor = True
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {qtype.name}")


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    for old in GOLDEN.glob("tiny_stablelm.*.gguf"):
        old.unlink()
    rng = np.random.default_rng(20261128)
    np.savez_compressed(GOLDEN / "quant_rows.npz", **make_row_golden(rng))
    src = GOLDEN / "tiny_stablelm.F32.gguf"
    write_tiny_stablelm(src, tiny_stablelm_tensors(rng))
    for qtype in FILE_TYPES:
        llama_quantize(src, GOLDEN / f"tiny_stablelm.{qtype.name}.gguf", qtype)
    for p in sorted(GOLDEN.iterdir()):
        print(f"{p.stat().st_size / 1e6:8.2f} MB  {p.relative_to(GOLDEN.parent.parent)}")


if __name__ == "__main__":
    main()
