"""Make tests/golden/iquant_blocks.npz: i-quant blocks written and decoded by llama.cpp's own C code.

    GGML_BASE_LIB=/work/llama/build/bin/libggml-base.so python tools/make_golden_iquants.py

For each of IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S and IQ1_M:
- quantized/<TYPE>/<character>: rows of several characters (tools/make_golden_quants.row_characters)
  quantized by ggml_quantize_chunk with an importance vector (IQ2_XXS, IQ2_XS and IQ1_S cannot be
  made without one: ggml_quantize_requires_imatrix), i.e. blocks the way llama-quantize writes them;
  dequantized/<TYPE>/<character>: the same bytes decoded by ggml's dequantize_row_<type>.
- random_bytes/<TYPE>, random_decoded/<TYPE>: random blocks decoded by dequantize_row_<type>; the
  first blocks are random in every bit (NaN, inf and subnormal fp16 scales included), the others have
  a finite scale, and their grid indices run through every point of the grid.
- imatrix/<character>: the importance vector each character was quantized with.

The tests read this file only; they never need llama.cpp.
"""

from __future__ import annotations

from pathlib import Path

# ggml_ref, make_golden_quants: siblings in tools/ (Python puts the folder of the script it runs first on sys.path)
import ggml_ref
import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from make_golden_quants import row_characters

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden" / "iquant_blocks.npz"
TYPES = [T.IQ2_XXS, T.IQ2_XS, T.IQ2_S, T.IQ3_XXS, T.IQ3_S, T.IQ1_S, T.IQ1_M]
CHARACTERS = ["gaussian", "heavy_tailed", "uniform", "single_spike", "all_positive"]
N_ROWS, N_PER_ROW = 4, 512
FULLY_RANDOM_BLOCKS = 8

#: The sweep blocks: the byte offset of the fp16 d (IQ1_M has none: see random_blocks), and the bytes
#: that hold the low 8 bits of the grid indices (first byte, count), written with a counter so that
#: every low byte value appears; the high index bits, signs and sub-block scales stay random.
D_OFFSET = {T.IQ2_XXS: 0, T.IQ2_XS: 0, T.IQ2_S: 0, T.IQ3_XXS: 0, T.IQ3_S: 0, T.IQ1_S: 0}
INDEX_BYTES = {T.IQ2_S: (2, 32), T.IQ3_XXS: (2, 64), T.IQ3_S: (2, 64), T.IQ1_S: (2, 32), T.IQ1_M: (0, 32)}
N_SWEEP_BLOCKS = {T.IQ2_XXS: 64, T.IQ2_XS: 64, T.IQ2_S: 64, T.IQ3_XXS: 32, T.IQ3_S: 32, T.IQ1_S: 64, T.IQ1_M: 64}


def importance(rng: np.random.Generator, character: str) -> np.ndarray:
    """A positive importance vector, one value per column: spiky for some characters, smooth for others."""
    w = rng.uniform(0.1, 1.0, N_PER_ROW)
    if character in ("heavy_tailed", "single_spike"):
        w[rng.integers(0, N_PER_ROW, 8)] *= 100.0
    return w.astype(np.float32)


def random_blocks(rng: np.random.Generator, qtype: T) -> np.ndarray:
    """FULLY_RANDOM_BLOCKS blocks of random bits, then sweep blocks with finite scales whose index bytes
    count up (every low index byte value appears)."""
    _, type_size = GGML_QUANT_SIZES[qtype]
    n_sweep = N_SWEEP_BLOCKS[qtype]
    raw = rng.integers(0, 256, (FULLY_RANDOM_BLOCKS + n_sweep, type_size), dtype=np.uint8)
    sweep = raw[FULLY_RANDOM_BLOCKS:]
    if qtype in D_OFFSET:
        o = D_OFFSET[qtype]
        sweep[:, o : o + 2] = rng.uniform(1e-3, 1e-1, (n_sweep, 1)).astype(np.float16).view(np.uint8)
    else:  # IQ1_M: d's 16 bits are the top nibbles of the four uint16 scales
        d_bits = rng.uniform(1e-3, 1e-1, n_sweep).astype(np.float16).view(np.uint16)
        sc = sweep[:, 48:56].copy().view("<u2")
        for k in range(4):
            sc[:, k] = (sc[:, k] & 0x0FFF) | (((d_bits >> 4 * k) & 0xF) << 12)
        sweep[:, 48:56] = sc.view(np.uint8)
    if qtype == T.IQ2_XXS:  # grid indices: bytes 0-3 of each 8-byte pair of words after d
        counter = np.arange(n_sweep * 32, dtype=np.uint32) % 256
        sweep[:, 2:].reshape(n_sweep, 8, 8)[:, :, :4] = counter.reshape(n_sweep, 8, 4)
    elif qtype == T.IQ2_XS:  # the low byte of each uint16: grid index bits 0-7
        sweep[:, 2:66].reshape(n_sweep, 32, 2)[:, :, 0] = (np.arange(n_sweep * 32) % 256).reshape(n_sweep, 32)
    else:
        start, count = INDEX_BYTES[qtype]
        sweep[:, start : start + count] = (np.arange(n_sweep * count) % 256).reshape(n_sweep, count)
    return raw


def main() -> None:
    rng = np.random.default_rng(20261206)
    rows = row_characters(rng, n_rows=N_ROWS, n=N_PER_ROW)
    golden: dict[str, np.ndarray] = {}
    weights = {c: importance(rng, c) for c in CHARACTERS}
    for c in CHARACTERS:
        golden[f"imatrix/{c}"] = weights[c]
    for qtype in TYPES:
        for c in CHARACTERS:
            raw = ggml_ref.quantize_chunk(rows[c], qtype, weights[c])
            golden[f"quantized/{qtype.name}/{c}"] = raw
            golden[f"dequantized/{qtype.name}/{c}"] = ggml_ref.dequantize_row(raw, qtype)
        raw = random_blocks(rng, qtype).reshape(1, -1)
        golden[f"random_bytes/{qtype.name}"] = raw
        golden[f"random_decoded/{qtype.name}"] = ggml_ref.dequantize_row(raw, qtype)
        print(qtype.name, "ok")
    np.savez_compressed(GOLDEN, **golden)
    print(f"wrote {GOLDEN} ({GOLDEN.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
