"""Quantizing with an importance matrix, against llama.cpp itself.

Rows: for the 11 types whose ggml quantizer reads quant_weights, the twelve row characters of
tests/golden/quant_rows.npz and five importance vectors, ``fmt.quantize(rows, imatrix=v)`` gives the
bytes ggml_quantize_chunk(type, rows, ..., v) wrote (their sha256 is in tests/golden/imatrix/rows.json).
Files: ``quantize_gguf(..., imatrix=...)`` writes, for each of the 14 mixes, the file
``llama-quantize --imatrix`` wrote (tests/golden/imatrix/mixes.json). Both made by
tools/make_golden_imatrix.py from llama.cpp built without FMA contraction (see test_quantize_file.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from stablelm_lab import quants

GOLDEN_DIR = Path(__file__).parent / "golden" / "imatrix"
ROW_HASHES = json.loads((GOLDEN_DIR / "rows.json").read_text())
WEIGHTED = list(ROW_HASHES)


def sha256_prefix(data: np.ndarray) -> str:
    return hashlib.sha256(memoryview(np.ascontiguousarray(data)).cast("B")).hexdigest()[:32]


@pytest.fixture(scope="module")
def importance():
    with np.load(GOLDEN_DIR / "importance.npz") as npz:
        return {name: npz[name] for name in npz.files}


@pytest.fixture(scope="module")
def rows():
    with np.load(Path(__file__).parent / "golden" / "quant_rows.npz") as npz:
        return {key.split("/", 1)[1]: npz[key] for key in npz.files if key.startswith("rows/")}


# ---- rows -----------------------------------------------------------------------------------------
def test_golden_covers_the_eleven_types_twelve_characters_five_vectors(rows, importance):
    assert WEIGHTED == ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS"]
    assert all(set(by_row) == set(rows) and all(set(v) == set(importance) for v in by_row.values())
               for by_row in ROW_HASHES.values())
    assert len(rows) == 12 and len(importance) == 5


@pytest.mark.parametrize("name", WEIGHTED)
def test_quantize_with_imatrix_equals_ggml(name, rows, importance):
    fmt = quants.get(name)
    wrong = [f"{character}/{vector}" for character, x in rows.items() for vector, v in importance.items()
             if sha256_prefix(fmt.quantize(x, imatrix=v)) != ROW_HASHES[name][character][vector]]
    assert not wrong, f"{name}: {len(wrong)} of 60 cases differ from ggml_quantize_chunk: {wrong}"


@pytest.mark.parametrize("name", WEIGHTED)
def test_the_importance_changes_the_blocks(name, rows, importance):
    """The golden bytes depend on the vector, and differ from quantizing without one: a wrong weighting
    could not pass the test above by accident."""
    x = rows["gaussian"]
    assert len(set(ROW_HASHES[name]["gaussian"].values())) >= 4
    assert sha256_prefix(quants.get(name).quantize(x)) != ROW_HASHES[name]["gaussian"]["random"]


def test_types_whose_ggml_quantizer_ignores_the_imatrix(rows, importance):
    """quantize_q8_0, quantize_tq1_0, quantize_tq2_0 and quantize_mxfp4 never read quant_weights: the
    bytes are those of tests/golden/quant_rows.npz, made without one."""
    with np.load(Path(__file__).parent / "golden" / "quant_rows.npz") as npz:
        for name in ["Q8_0", "TQ1_0", "TQ2_0", "MXFP4"]:
            x = rows["heavy_tailed"]
            assert np.array_equal(quants.get(name).quantize(x, imatrix=importance["spiky"]),
                                  npz[f"quantized/{name}/heavy_tailed"]), name


@pytest.mark.parametrize("bad, message", [(np.ones(256, np.float32), "shape \\(512,\\)"),
                                          (np.ones((2, 512), np.float32), "shape \\(512,\\)"),
                                          (np.r_[np.ones(511), np.nan].astype(np.float32), "column 511")])
def test_a_bad_importance_vector_gets_one_clear_error(rows, bad, message):
    with pytest.raises(ValueError, match=message):
        quants.get("Q4_K").quantize(rows["gaussian"], imatrix=bad)
