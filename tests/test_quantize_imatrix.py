"""Quantizing with an importance matrix, against llama.cpp itself.

Rows: for the 11 types whose ggml quantizer reads quant_weights, the twelve row characters of
tests/golden/quant_rows.npz and five importance vectors, ``fmt.quantize(rows, imatrix=v)`` gives the
bytes ggml_quantize_chunk(type, rows, ..., v) wrote (their sha256 is in tests/golden/quantize_imatrix/rows.json).
Files: ``quantize_gguf(..., imatrix=...)`` writes, for each of the 14 mixes, the file
``llama-quantize --imatrix`` wrote (tests/golden/quantize_imatrix/mixes.json). Both made by
tools/make_golden_imatrix.py from llama.cpp built without FMA contraction (see test_quantize_file.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from golden_files import fail_unless_same_file, sha256

from stablelm_lab import GGUFFile, quants
from stablelm_lab.mixes.quantize_file import quantize_gguf
from stablelm_lab.mixes.rules import MIXES, explain_mix
from stablelm_lab.testing import write_golden_source

GOLDEN_DIR = Path(__file__).parent / "golden" / "quantize_imatrix"
ROW_HASHES = json.loads((GOLDEN_DIR / "rows.json").read_text())
WEIGHTED = list(ROW_HASHES)


def sha256_prefix(data: np.ndarray) -> str:
    return sha256(data)[:32]


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
    assert all(
        set(by_row) == set(rows) and all(set(v) == set(importance) for v in by_row.values())
        for by_row in ROW_HASHES.values()
    )
    assert len(rows) == 12 and len(importance) == 5


@pytest.mark.parametrize("name", WEIGHTED)
def test_quantize_with_imatrix_equals_ggml(name, rows, importance):
    fmt = quants.get(name)
    wrong = [
        f"{character}/{vector}"
        for character, x in rows.items()
        for vector, v in importance.items()
        if sha256_prefix(fmt.quantize(x, imatrix=v)) != ROW_HASHES[name][character][vector]
    ]
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
            assert np.array_equal(
                quants.get(name).quantize(x, imatrix=importance["spiky"]), npz[f"quantized/{name}/heavy_tailed"]
            ), name


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.ones(256, np.float32), "shape \\(512,\\)"),
        (np.ones((2, 512), np.float32), "shape \\(512,\\)"),
        (np.r_[np.ones(511), np.nan].astype(np.float32), "column 511"),
    ],
)
def test_a_bad_importance_vector_gets_one_clear_error(rows, bad, message):
    with pytest.raises(ValueError, match=message):
        quants.get("Q4_K").quantize(rows["gaussian"], imatrix=bad)


# ---- whole files: llama-quantize --imatrix ---------------------------------------------------------
MIXES_GOLDEN = json.loads((GOLDEN_DIR / "mixes.json").read_text())
IMATRIX_FILE = GOLDEN_DIR / MIXES_GOLDEN["imatrix_file"]


def read_importance(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The importance vectors llama-quantize computes from an imatrix GGUF file, read with gguf-py:
    in_sum2 / counts in float32 (tools/quantize/quantize.cpp, load_imatrix), and the provenance it
    records (the first dataset, the chunk count)."""
    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: np.array(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    importance = {}
    for name in tensors:
        if name.endswith(".in_sum2"):
            base = name[: -len(".in_sum2")]
            count = np.float32(np.round(tensors[base + ".counts"][0]))
            importance[base] = tensors[name] / count if count > 0 else np.ones_like(tensors[name])
    datasets = reader.fields["imatrix.datasets"]
    provenance = {
        "imatrix_dataset": bytes(datasets.parts[datasets.data[0]]).decode(),
        "imatrix_chunks": int(reader.fields["imatrix.chunk_count"].parts[-1][0]),
    }
    return importance, provenance


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = write_golden_source(tmp_path_factory.mktemp("imatrix_source") / "stablelm16.gguf", "stablelm16")
    assert sha256(np.fromfile(path, np.uint8)) == MIXES_GOLDEN["source_sha256"]
    return path


@pytest.fixture(scope="module")
def imatrix():
    return read_importance(IMATRIX_FILE)


def quantize_with_imatrix(source, dst, mix, imatrix):
    importance, provenance = imatrix
    return quantize_gguf(
        source, dst, mix, progress=False, imatrix=importance, imatrix_file=MIXES_GOLDEN["imatrix_file"], **provenance
    )


@pytest.mark.parametrize("mix", list(MIXES))
def test_types_with_an_imatrix_are_llama_quantizes(source, mix):
    """The rules, has_imatrix included: Q4_0 and Q5_0 give ffn_down of the first eighth a min."""
    ours = {c.name: c.qtype.name for c in explain_mix(source, mix, has_imatrix=True)}
    theirs = {name: record.split()[0] for name, record in MIXES_GOLDEN["mixes"][mix]["tensors"].items()}
    assert ours == theirs


def test_the_imatrix_rule_shows_in_the_golden_files(source):
    assert MIXES_GOLDEN["mixes"]["Q4_0"]["tensors"]["blk.1.ffn_down.weight"].startswith("Q4_1 ")
    assert MIXES_GOLDEN["mixes"]["Q5_0"]["tensors"]["blk.0.ffn_down.weight"].startswith("Q5_1 ")
    plain = {c.name: c.qtype for c in explain_mix(source, "Q4_0")}
    assert plain["blk.1.ffn_down.weight"] == T.Q4_0 and plain["blk.2.ffn_down.weight"] == T.Q4_0


@pytest.mark.parametrize("mix", list(MIXES))
def test_output_is_llama_quantize_imatrix_file_byte_for_byte(source, imatrix, mix, tmp_path):
    path, golden = tmp_path / f"{mix}.gguf", MIXES_GOLDEN["mixes"][mix]
    quantize_with_imatrix(source, path, mix, imatrix)
    fail_unless_same_file(path, golden, f"{mix} with an imatrix (llama-quantize --imatrix)")


def test_imatrix_metadata_appended_after_the_file_type(source, imatrix, tmp_path):
    quantize_with_imatrix(source, tmp_path / "q.gguf", "Q6_K", imatrix)
    out = GGUFFile(tmp_path / "q.gguf")
    assert list(out.metadata)[-6:] == [
        "general.quantization_version",
        "general.file_type",
        "quantize.imatrix.file",
        "quantize.imatrix.dataset",
        "quantize.imatrix.entries_count",
        "quantize.imatrix.chunks_count",
    ]
    assert out.metadata["quantize.imatrix.entries_count"] == len(imatrix[0])
    assert out.metadata["quantize.imatrix.file"] == MIXES_GOLDEN["imatrix_file"]


def test_an_imatrix_entry_of_the_wrong_length_is_refused(source, imatrix, tmp_path):
    importance = dict(imatrix[0], **{"blk.2.ffn_up.weight": np.ones(100, np.float32)})
    with pytest.raises(ValueError, match="blk.2.ffn_up.weight has 100 values"):
        quantize_gguf(source, tmp_path / "q.gguf", "Q4_K_M", progress=False, imatrix=importance)
    importance = dict(imatrix[0], **{"blk.2.ffn_up.weight": np.full(256, np.inf, np.float32)})
    with pytest.raises(ValueError, match="blk.2.ffn_up.weight holds a non-finite value"):
        quantize_gguf(source, tmp_path / "q.gguf", "Q4_K_M", progress=False, imatrix=importance)
    assert not (tmp_path / "q.gguf").exists()


def test_the_embedded_default_with_an_imatrix_llama_imatrix_collected(tmp_path):
    """A real imatrix: llama-imatrix on the embedded default over held-out text; quantize_gguf with it
    writes the Q4_K_M file llama-quantize --imatrix wrote."""
    golden = MIXES_GOLDEN["default"]
    root = Path(__file__).resolve().parent.parent
    importance, provenance = read_importance(root / golden["imatrix_file"])
    assert provenance["imatrix_dataset"] == "data/heldout.txt" and "output.weight" in importance
    path = tmp_path / "default.Q4_K_M.gguf"
    quantize_gguf(
        root / golden["source"],
        path,
        golden["mix"],
        progress=False,
        imatrix=importance,
        imatrix_file=golden["imatrix_file"],
        **provenance,
    )
    if sha256(np.fromfile(path, np.uint8)) != golden["file_sha256"]:
        g = GGUFFile(path)
        ours = {t.name: f"{t.qtype.name} {t.nbytes} {sha256(g.raw(t.name))[:16]}" for t in g.tensors}
        pytest.fail(
            f"differs from llama-quantize --imatrix: "
            f"{ {n: (ours.get(n), r) for n, r in golden['tensors'].items() if ours.get(n) != r} }"
        )
