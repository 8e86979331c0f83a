"""Make the golden files that prove quantizing with an importance matrix equal to llama.cpp, byte for byte.

    GGML_BASE_LIB=/work/llama/build/bin/libggml-base.so LLAMA_QUANTIZE=/work/llama/build/bin/llama-quantize \\
        .venv/bin/python tools/make_golden_imatrix.py

(llama.cpp built with -DGGML_NATIVE=OFF, so that ggml-quants.c rounds every float operation on its own, as
numpy does; see RECIPES.) Writes, under tests/golden/quantize_imatrix/:
- importance.npz: five importance vectors of 512 columns (uniform, random positive, spiky, one zero,
  log-normal);
- rows.json: for each of the 11 types whose ggml quantizer reads an importance matrix, each of the twelve
  row characters of tests/golden/quant_rows.npz (8 rows of 512) and each vector, the sha256 (first 32 hex
  digits) of the bytes ggml_quantize_chunk(type, rows, 0, 8, 512, imatrix) wrote;
- stablelm16.imatrix.gguf: an imatrix for the "stablelm16" model (stablelm_lab.testing.GOLDEN_SOURCES) in
  llama.cpp's imatrix GGUF format (``<tensor>.in_sum2``, ``<tensor>.counts``, ``imatrix.*`` keys), as
  llama-imatrix writes one, written here with gguf-py from a seeded generator (the model's tokenizer is a
  placeholder, so llama-imatrix cannot read text with it); blk.3.attn_k.weight is left out, as a
  tensor that text never reached would be;
- mixes.json: for each of the 14 mixes, the sha256 and size of the file ``llama-quantize --imatrix``
  wrote from stablelm16, and per tensor "TYPE NBYTES SHA256_PREFIX"; and the same for the embedded
  default (data/tiny-stablelm.F16.gguf) in Q4_K_M with
- default.imatrix.gguf: an imatrix llama-imatrix collected on the embedded default over the first 8
  chunks of 128 tokens of data/heldout.txt (output.weight included: --process-output), one thread.
The tests read these files only; they never need llama.cpp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# ggml_ref, make_golden_mixes: siblings in tools/ (Python puts the folder of the script it runs first on sys.path)
import ggml_ref
import make_golden_mixes
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter

from stablelm_lab.testing import sha256, write_golden_source

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "quantize_imatrix"
#: The types whose quantize_<type> reads quant_weights (ggml-quants.c).
WEIGHTED_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS]
#: The imatrix file's name as given to llama-quantize: it is recorded in quantize.imatrix.file.
IMATRIX_NAME = "stablelm16.imatrix.gguf"
DATASET = "stablelm16 (seeded sums)"
CHUNKS, CHUNK_SIZE, TOKENS = 4, 128, 512
LEFT_OUT = "blk.3.attn_k.weight"
DEFAULT_MODEL = "data/tiny-stablelm.F16.gguf"


def importance_vectors(n: int = 512) -> dict[str, np.ndarray]:
    """The importance vectors the row tests use, float32 (n,)."""
    rng = np.random.default_rng(20261206)
    one_zero = np.ones(n)
    one_zero[37] = 0  # one column that never carries a signal
    return {
        name: v.astype(np.float32)
        for name, v in {
            "uniform": np.ones(n),
            "random": rng.uniform(0.01, 10.0, n),
            "spiky": np.where(rng.random(n) < 0.05, 1000.0, 0.0),  # a few outlier channels, the rest silent
            "one_zero": one_zero,
            "lognormal": rng.lognormal(0.0, 2.0, n),  # the spread of real activations
        }.items()
    }


def row_goldens(vectors: dict[str, np.ndarray]) -> dict:
    """type -> row character -> importance vector -> sha256 (first 32 hex digits) of ggml's bytes."""
    with np.load(ROOT / "tests" / "golden" / "quant_rows.npz") as npz:
        rows = {key.split("/", 1)[1]: npz[key] for key in npz.files if key.startswith("rows/")}
    return {
        qtype.name: {
            character: {name: sha256(ggml_ref.quantize_chunk(x, qtype, v))[:32] for name, v in vectors.items()}
            for character, x in rows.items()
        }
        for qtype in WEIGHTED_TYPES
    }


# ---- an imatrix for stablelm16, and llama-quantize --imatrix ------------------------------------------
def collected_tensors(source: Path) -> dict[str, int]:
    """The matrices llama-imatrix collects (every one a matmul multiplies, not token_embd): name -> columns."""
    return {
        t.name: int(t.shape[0])
        for t in GGUFReader(str(source)).tensors
        if len(t.shape) == 2 and t.name.endswith(".weight") and t.name != "token_embd.weight" and t.name != LEFT_OUT
    }


def write_imatrix(path: Path, columns: dict[str, int]) -> None:
    """Sums of squared activations with the spread of real ones (log-normal, a few outlier columns, one
    silent column), over TOKENS tokens, in the layout of llama-imatrix's save_imatrix."""
    rng = np.random.default_rng(1606)
    writer = GGUFWriter(str(path), arch="imatrix")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", [DATASET])
    writer.add_uint32("imatrix.chunk_count", CHUNKS)
    writer.add_uint32("imatrix.chunk_size", CHUNK_SIZE)
    for i, (name, n) in enumerate(sorted(columns.items())):
        mean_square = rng.lognormal(-2.0, 1.0, n)
        mean_square[rng.random(n) < 0.02] *= 100.0
        mean_square[i % n] = 0.0
        # 2-D as llama-imatrix writes them: ne = (n, 1) and (1, 1), one matrix (no experts)
        writer.add_tensor(f"{name}.in_sum2", (mean_square * TOKENS).astype(np.float32).reshape(1, n))
        writer.add_tensor(f"{name}.counts", np.array([[TOKENS]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def llama_quantize(src: Path, dst: Path, mix: str, cwd: Path) -> None:
    binary = os.environ.get("LLAMA_QUANTIZE", "/work/llama/build/bin/llama-quantize")
    subprocess.run(
        [binary, "--imatrix", IMATRIX_NAME, str(src), str(dst), mix, "1"],
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def mix_goldens(tmp: Path) -> dict:
    src = write_golden_source(tmp / "stablelm16.gguf", "stablelm16")
    write_imatrix(GOLDEN / IMATRIX_NAME, collected_tensors(src))
    os.link(GOLDEN / IMATRIX_NAME, tmp / IMATRIX_NAME)
    golden = {"source_sha256": sha256(np.fromfile(src, np.uint8)), "imatrix_file": IMATRIX_NAME, "mixes": {}}
    for mix in make_golden_mixes.MIXES:
        dst = tmp / f"stablelm16.{mix}.gguf"
        llama_quantize(src, dst, mix, tmp)
        golden["mixes"][mix] = {
            "file_sha256": sha256(np.fromfile(dst, np.uint8)),
            "file_size": dst.stat().st_size,
            "tensors": make_golden_mixes.tensor_records(dst),
        }
    return golden


def default_golden(tmp: Path) -> dict:
    """llama-imatrix on the embedded default, then llama-quantize --imatrix Q4_K_M; run from the
    repository root, so that the paths recorded in the files are relative."""
    tools = Path(os.environ.get("LLAMA_QUANTIZE", "/work/llama/build/bin/llama-quantize")).parent
    imatrix = (GOLDEN / "default.imatrix.gguf").relative_to(ROOT)
    subprocess.run(
        [
            str(tools / "llama-imatrix"),
            "-m",
            DEFAULT_MODEL,
            "-f",
            "data/heldout.txt",
            "-o",
            str(imatrix),
            "-c",
            "128",
            "--chunks",
            "8",
            "--no-ppl",
            "--process-output",
            "-t",
            "1",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    dst = tmp / "default.Q4_K_M.gguf"
    subprocess.run(
        [str(tools / "llama-quantize"), "--imatrix", str(imatrix), DEFAULT_MODEL, str(dst), "Q4_K_M", "1"],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return {
        "source": DEFAULT_MODEL,
        "imatrix_file": str(imatrix),
        "mix": "Q4_K_M",
        "file_sha256": sha256(np.fromfile(dst, np.uint8)),
        "file_size": dst.stat().st_size,
        "tensors": make_golden_mixes.tensor_records(dst),
    }


def main() -> None:
    GOLDEN.mkdir(parents=True, exist_ok=True)
    vectors = importance_vectors()
    np.savez_compressed(GOLDEN / "importance.npz", **vectors)
    (GOLDEN / "rows.json").write_text(json.dumps(row_goldens(vectors), indent=0) + "\n")
    if "--rows-only" not in sys.argv:
        with tempfile.TemporaryDirectory() as tmp:
            golden = mix_goldens(Path(tmp))
            golden["default"] = default_golden(Path(tmp))
        (GOLDEN / "mixes.json").write_text(json.dumps(golden, indent=1) + "\n")
    for p in sorted(GOLDEN.iterdir()):
        print(f"{p.stat().st_size / 1e3:8.1f} kB  {p.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
