"""Re-execute every notebook in notebooks/ and save it with fresh outputs (what nbval then checks).

    .venv/bin/python tools/run_notebooks.py [notebooks/03_legacy_quants.ipynb ...]

Each runs from its own folder (as nbval and JupyterLab run it), and widget state is dropped: stored
widget state makes notebooks megabytes large and is not what nbval compares.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def run(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
        store_widget_state=False,
    ).execute()
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)
    print(f"{time.perf_counter() - start:6.1f} s  {path.name}")


def main(argv: list[str]) -> None:
    paths = [Path(p).resolve() for p in argv] or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        run(path)


if __name__ == "__main__":
    main(sys.argv[1:])
