"""Make the golden files that check stablelm_lab.mixes.rules and quantize_gguf against llama-quantize itself.

    .venv/bin/python tools/make_golden_mixes.py [--fma-bound LLAMA_CPP_SOURCE]

(this package's environment with llama-cpp-python, built from source without FMA contraction, importable:
tools/make_golden_quants.py shows how). Two small StableLM files, stablelm_lab.testing's GOLDEN_SOURCES:
- "stablelm16": StableLM-3B-4E1T's design in small, F16 like a converted release: 16 layers, so every
  layer rule shows (first/last eighth, every third layer, first sixteenth), no grouped KV heads;
- "gqa12": F32, 12 layers (n/16 = 0), 4 query heads per KV head, and an FFN width of 288 (ffn_down
  rows do not fit 256-weight blocks: the fallbacks),
each quantized by llama.cpp's llama_model_quantize with each mix (no imatrix, not pure: the real
recipes), one thread. Written under tests/golden/mixes/:
- mixes.json: per model, the spec and the sha256 of the source file (the tests rebuild it and check);
  per mix, the sha256 and size of llama.cpp's output file and, per tensor in the file's order,
  "TYPE NBYTES SHA256_PREFIX"; llama-cpp-python's version; with --fma-bound, the FMA measurement;
- tensors.npz: a few whole tensors as llama.cpp wrote them, to show which blocks differ if a hash
  does not match.
With --fma-bound, it also compiles ggml-quants.c from the llama.cpp source tree with FMA contraction
(gcc -march=haswell -ffp-contract=fast, as a native x86 or any ARM build does) and records in
mixes.json how that build's blocks differ from the reference build's on stablelm16's matrices.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import subprocess
import tempfile
from pathlib import Path

# ggml_ref: a sibling in tools/ (Python puts the folder of the script it runs first on sys.path)
import ggml_ref
import numpy as np
from gguf import GGML_QUANT_SIZES, GGUFReader, LlamaFileType
from gguf import GGMLQuantizationType as T

from stablelm_lab.testing import GOLDEN_SOURCES, sha256, write_golden_source

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "mixes"
MIXES = [
    "Q4_0",
    "Q4_1",
    "Q5_0",
    "Q5_1",
    "Q8_0",
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
]
#: (model, mix, tensor) kept whole in tensors.npz: one of each kind of rule.
WHOLE_TENSORS = [
    ("stablelm16", "Q4_K_M", "blk.0.attn_v.weight"),  # use_more_bits -> Q6_K
    ("stablelm16", "Q3_K_M", "blk.0.ffn_down.weight"),  # first sixteenth -> Q5_K
    ("stablelm16", "Q2_K", "blk.5.attn_output.weight"),  # Q2_K's attn_output -> Q3_K
    ("stablelm16", "Q4_0", "output.weight"),  # output head -> Q6_K
    ("gqa12", "Q4_K_M", "blk.0.ffn_down.weight"),
]  # Q6_K falls back to Q8_0


def llama_quantize(src: Path, dst: Path, mix: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(LlamaFileType[f"MOSTLY_{mix}"])
    params.nthread = 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {dst.name}")


def check_llama_cpp_loads(path: Path, n_vocab: int) -> None:
    """llama.cpp loads the file and its logits for a few tokens are finite."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=32, n_threads=1, logits_all=True, verbose=False)
    llm.eval(list(range(1, 9)))
    logits = np.array(llm.scores[:8], dtype=np.float32)
    llm.close()
    assert logits.shape == (8, n_vocab) and np.isfinite(logits).all(), path


def tensor_records(path: Path) -> dict[str, str]:
    """Tensor name -> "TYPE NBYTES SHA256_PREFIX", in the file's order."""
    return {
        t.name: f"{T(t.tensor_type).name} {int(t.n_bytes)} {sha256(t.data)[:16]}" for t in GGUFReader(str(path)).tensors
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--fma-bound",
        metavar="LLAMA_CPP_SOURCE",
        type=Path,
        help="also measure an FMA build of LLAMA_CPP_SOURCE/ggml/src/ggml-quants.c",
    )
    args = parser.parse_args()
    import llama_cpp

    GOLDEN.mkdir(parents=True, exist_ok=True)
    golden = {"llama_cpp_python": llama_cpp.__version__, "mixes": MIXES, "models": {}}
    whole = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, source in GOLDEN_SOURCES.items():
            src = write_golden_source(Path(tmp) / f"{model}.gguf", model)
            entry = {
                "spec": dataclasses.asdict(source.spec),
                "source_type": source.source_type.name,
                "source_sha256": sha256(np.fromfile(src, np.uint8)),
                "mixes": {},
            }
            for mix in MIXES:
                dst = Path(tmp) / f"{model}.{mix}.gguf"
                llama_quantize(src, dst, mix)
                check_llama_cpp_loads(dst, source.spec.n_vocab)
                entry["mixes"][mix] = {
                    "file_sha256": sha256(np.fromfile(dst, np.uint8)),
                    "file_size": dst.stat().st_size,
                    "tensors": tensor_records(dst),
                }
                for w_model, w_mix, name in WHOLE_TENSORS:
                    if (w_model, w_mix) == (model, mix):
                        t = next(t for t in GGUFReader(str(dst)).tensors if t.name == name)
                        whole[f"{model}/{mix}/{name}"] = np.array(t.data).view(np.uint8)
            golden["models"][model] = entry
        if args.fma_bound:
            src = write_golden_source(Path(tmp) / "fma.gguf", "stablelm16")
            golden["fma_bound"] = fma_bound(src, build_fma_quants(args.fma_bound / "ggml", Path(tmp)))
    (GOLDEN / "mixes.json").write_text(json.dumps(golden, indent=1) + "\n")
    np.savez_compressed(GOLDEN / "tensors.npz", **whole)
    for p in sorted(GOLDEN.iterdir()):
        print(f"{p.stat().st_size / 1e3:8.1f} kB  {p.relative_to(ROOT)}")


# ---- what an FMA build of llama.cpp would change ---------------------------------------------------------
def fma_bound(src: Path, fma_lib_path: Path) -> dict:
    """Quantize every matrix of ``src`` with ggml's quantize_<type> from the reference build and from an
    FMA build; per type: the share of blocks that differ, and how much their squared error changes."""
    fma_lib = ctypes.CDLL(str(fma_lib_path))
    matrices = [
        np.asarray(t.data, dtype=np.float32).reshape(int(t.shape[1]), int(t.shape[0]))
        for t in GGUFReader(str(src)).tensors
        if len(t.shape) == 2 and t.shape[1] > 1
    ]
    x = np.concatenate(matrices)
    out = {}
    for qtype in [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]:
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        ref, fma = ggml_ref.quantize_rows(x, qtype), quantize_with(fma_lib, x, qtype)
        differs = (ref.reshape(-1, type_size) != fma.reshape(-1, type_size)).any(axis=1)
        err_ref, err_fma = (
            ((ggml_ref.dequantize_row(q, qtype) - x) ** 2).reshape(-1, block_size).sum(axis=1) for q in (ref, fma)
        )
        change = np.abs(err_fma - err_ref)[differs] / np.maximum(err_ref[differs], 1e-30)
        out[qtype.name] = {
            "blocks": int(differs.size),
            "blocks_differing": int(differs.sum()),
            "squared_error_ratio": float(err_fma.sum() / err_ref.sum()),
            "max_block_squared_error_change": float(change.max()) if change.size else 0.0,
        }
    return out


def build_fma_quants(ggml: Path, tmp: Path) -> Path:
    """ggml-quants.c alone, compiled with FMA contraction and linked to the installed libggml-base."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    out = tmp / "libquants_fma.so"
    subprocess.run(
        [
            "gcc",
            "-O3",
            "-march=haswell",
            "-ffp-contract=fast",
            "-fPIC",
            "-shared",
            "-Wl,-Bsymbolic",
            f"-I{ggml / 'include'}",
            f"-I{ggml / 'src'}",
            str(ggml / "src" / "ggml-quants.c"),
            "-o",
            str(out),
            f"-L{lib_dir}",
            "-lggml-base",
            f"-Wl,-rpath,{lib_dir}",
        ],
        check=True,
    )
    return out


def quantize_with(lib, x: np.ndarray, qtype: T) -> np.ndarray:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    out = np.zeros(x.size // block_size * type_size, dtype=np.uint8)
    f = getattr(lib, f"quantize_{ggml_ref._ROW_NAME[qtype]}")
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    f(x.ctypes.data, out.ctypes.data, x.shape[0], x.shape[1], None)
    return out.reshape(x.shape[0], -1)


if __name__ == "__main__":
    main()
