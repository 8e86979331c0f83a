"""The package's parts import one way only, in the order the data flows (stablelm_lab/__init__.py):

    quants -> container -> model -> mixes -> text -> analysis -> lab -> train -> testing -> cli

A module may import from its own part and from the parts before it, never from a later one; no import
circle between modules; and the dependencies every user has (torch, numpy, ...) are imported at the top of
a module, not inside a function, so a reader sees at once what a module stands on.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stablelm_lab

PACKAGE = Path(stablelm_lab.__file__).parent
PARTS = ["quants", "container", "model", "mixes", "text", "analysis", "lab", "train", "testing", "cli"]
HARD_DEPENDENCIES = {"numpy", "torch", "gguf", "tokenizers", "tqdm", "plotly", "ipywidgets", "anywidget"}
# where an import inside a function is the point, and why
LAZY_IMPORTS_ALLOWED = {
    "stablelm_lab.cli": "each command imports what it needs, so `stablelm-lab --help` answers without torch"
}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def part_of(module: str) -> int | None:
    """The index in PARTS of the part a module belongs to; None for the package root."""
    pieces = module.split(".")
    if len(pieces) == 1:
        return None
    return PARTS.index(pieces[1])


def imports_of(module: str, source: str, is_package: bool, names: bool = True) -> list[tuple[str, bool]]:
    """(imported module, inside a function?) for every import of a module's source, relative ones resolved.
    With ``names``, ``from x import y`` also counts as importing x.y, in case y is a module (the caller
    keeps what exists)."""
    found = []
    package = module if is_package else module.rsplit(".", 1)[0]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, nested) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                found.append((base, nested))
                if names:
                    found.extend((f"{base}.{alias.name}", nested) for alias in child.names)
            visit(child, nested)

    visit(ast.parse(source), False)
    return found


def package_modules(root: Path = PACKAGE) -> dict[str, tuple[Path, bool]]:
    return {module_name(p, root): (p, p.name == "__init__.py") for p in sorted(root.rglob("*.py"))}


def import_graph(modules: dict[str, tuple[Path, bool]]) -> dict[str, list[tuple[str, bool]]]:
    """module -> the package modules it imports, each with whether the import sits in a function. Importing
    a.b.c runs the package a.b too, so that counts as an import of a.b, unless the importer is itself inside
    a.b (then a.b is already running)."""
    graph = {}
    for name, (path, is_package) in modules.items():
        edges = []
        for target, nested in imports_of(name, path.read_text(), is_package):
            pieces = target.split(".")
            for depth in range(2, len(pieces) + 1):
                prefix = ".".join(pieces[:depth])
                is_own_package = name == prefix or name.startswith(prefix + ".")
                if prefix in modules and not is_own_package:
                    edges.append((prefix, nested))
        graph[name] = edges
    return graph


def upward_imports(graph) -> list[str]:
    bad = []
    for name, edges in graph.items():
        here = part_of(name)
        for target, _ in edges:
            there = part_of(target)
            if here is not None and there is not None and there > here:
                bad.append(f"{name} ({PARTS[here]}) imports {target} ({PARTS[there]})")
    return sorted(set(bad))


def import_circles(graph) -> list[list[str]]:
    """Every strongly connected set of more than one module (Tarjan)."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph.get(v, []):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            strong(v)
    return circles


def lazy_imports(modules) -> list[str]:
    bad = []
    for name, (path, is_package) in modules.items():
        if name in LAZY_IMPORTS_ALLOWED:
            continue
        for target, nested in imports_of(name, path.read_text(), is_package, names=False):
            top = target.split(".")[0]
            if nested and (top in HARD_DEPENDENCIES or top == "stablelm_lab"):
                bad.append(f"{name} imports {target} inside a function")
    return sorted(set(bad))


GRAPH = import_graph(package_modules())


def test_every_module_belongs_to_a_part():
    assert {name.split(".")[1] for name in GRAPH if "." in name} == set(PARTS)


def test_no_part_imports_a_later_part():
    assert upward_imports(GRAPH) == []


def test_no_import_circle():
    assert import_circles(GRAPH) == []


def test_dependencies_are_imported_at_the_top():
    assert lazy_imports(package_modules()) == []


# ---- the checks themselves can fail --------------------------------------------------------------
@pytest.fixture
def toy_package(tmp_path):
    """A package shaped like ours with one upward import, one circle and one lazy torch import."""
    root = tmp_path / "stablelm_lab"
    files = {
        "__init__.py": "",
        "container/__init__.py": "",
        "quants/__init__.py": "",
        "container/reader.py": "from ..model.net import Net\n",  # upward: container -> model
        "model/__init__.py": "",
        "model/net.py": "from .layers import Layer\nclass Net: pass\n",
        "model/layers.py": "def f():\n    import torch\n    from .net import Net\n",  # circle, lazy torch
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_the_checks_find_a_planted_violation_of_each_rule(toy_package):
    modules = package_modules(toy_package)
    graph = import_graph(modules)
    assert upward_imports(graph) == [
        "stablelm_lab.container.reader (container) imports stablelm_lab.model (model)",
        "stablelm_lab.container.reader (container) imports stablelm_lab.model.net (model)",
    ]
    assert import_circles(graph) == [["stablelm_lab.model.layers", "stablelm_lab.model.net"]]
    assert lazy_imports(modules) == [
        "stablelm_lab.model.layers imports stablelm_lab.model.net inside a function",
        "stablelm_lab.model.layers imports torch inside a function",
    ]
