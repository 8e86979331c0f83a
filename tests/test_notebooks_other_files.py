"""Every notebook runs top to bottom on a learner's own file: `STABLELM_GGUF` pointing at StableLM files of
other shapes than the embedded default (4 layers, 256 wide, 4 heads). Executed with nbclient, outputs not
compared (they are another model's): a cell that raises fails the test.

(a) 2 layers, 512 wide, 8 query heads sharing 2 key/value heads (grouped-query attention), written by the
    tests' GGUF writer in a Q4_K_M-like mix; (b) StableLM-3B-4E1T's full width (2560, 32 heads of 80, FFN
    6912, vocabulary 50304) with 2 layers of random Q4_K_M blocks, from tools/make_3b_gguf.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from stablelm_lab.testing import TinySpec, q4_k_m_mix, train_neox_tokenizer, write_gguf

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
GQA_512 = TinySpec(n_vocab=512, n_embd=512, n_layer=2, n_head=8, n_head_kv=2, n_ff=1536, n_rot=16, rope_base=10000.0)


@pytest.fixture(scope="module", params=["gqa-512-2L", "3b-width-2L"])
def other_file(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    if request.param == "gqa-512-2L":
        return write_gguf(folder / "gqa-512-2L.gguf", GQA_512, types=q4_k_m_mix, tokenizer=train_neox_tokenizer(400))
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "make_3b_gguf.py"),
            "--out",
            str(folder),
            "--mixes",
            "Q4_K_M",
            "--random-blocks",
            "--layers",
            "2",
            "--tokenizer",
            "neox",
        ],
        check=True,
        capture_output=True,
    )
    return next(folder.glob("*.gguf"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name[:2] for p in NOTEBOOKS])
def test_notebook_runs_on_another_file(notebook, other_file, monkeypatch):
    monkeypatch.setenv("STABLELM_GGUF", str(other_file))  # the kernel inherits the environment
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook.parent)}},
        store_widget_state=False,
    ).execute()
    printed = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    if notebook.name.startswith("01"):
        assert other_file.name in printed, "notebook 01 names the file it opened"
    if notebook.name.startswith("09"):  # its section 4 compares the embedded default with its own mixes
        assert f"{other_file.name} is not the embedded default" in printed and "skipped" in printed
