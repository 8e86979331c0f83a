"""Notebook hygiene: nbval compares stored outputs, so every notebook must be stored executed, in order,
without widget state, small, and without paths of the machine that ran it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
MAX_BYTES = 3 << 20


def test_the_workbook_has_its_guided_path():
    assert len(NOTEBOOKS) >= 9, [p.name for p in NOTEBOOKS]


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    return request.param, json.loads(request.param.read_text())


def code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_every_code_cell_was_executed_in_order(notebook):
    path, nb = notebook
    counts = [c["execution_count"] for c in code_cells(nb)]
    assert counts == list(range(1, len(counts) + 1)), f"{path.name}: re-run tools/run_notebooks.py"


def test_no_stored_widget_state_and_small(notebook):
    path, nb = notebook
    assert "widgets" not in nb.get("metadata", {}), path.name
    assert path.stat().st_size < MAX_BYTES, f"{path.name} is {path.stat().st_size} bytes"


def test_no_cell_shows_an_error(notebook):
    path, nb = notebook
    for cell in code_cells(nb):
        assert not [o for o in cell["outputs"] if o["output_type"] == "error"], path.name
        assert not [o for o in cell["outputs"] if o.get("name") == "stderr" and "Traceback" in o.get("text", "")]


def test_notebook_opens_with_an_objective_and_imports_the_package(notebook):
    path, nb = notebook
    first = "".join(nb["cells"][0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and first.startswith("# "), path.name
    source = "\n".join("".join(c["source"]) for c in code_cells(nb))
    assert "stablelm_lab" in source, f"{path.name} must import the package, not redefine it"
    assert not re.search(r"^class \w+", source, re.M), f"{path.name} defines a class: it belongs in the package"


def test_no_machine_specific_paths(notebook):
    path, _ = notebook
    text = path.read_text()
    for pattern in (r"/work/", r"/home/\w+", r"/root/", r"/tmp/(?!ipykernel)", r"C:\\\\Users"):
        assert not re.search(pattern, text), f"{path.name} mentions {pattern}"
