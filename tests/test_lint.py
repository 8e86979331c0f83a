"""ruff's lint and format checks (configured in pyproject.toml) hold over the whole repository."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUFF = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "format"])
def test_ruff(command):
    assert RUFF, "ruff is not installed: bin/setup installs it (pyproject's [test] extra)"
    done = subprocess.run([RUFF, *command, str(ROOT)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"ruff {' '.join(command)} found:\n{done.stdout}{done.stderr}"


def unannotated_public_functions(path: Path, root: Path = ROOT) -> list[str]:
    """Functions and methods a user may call (no leading underscore, not nested in a function) that lack
    a type for a parameter or for what they return (``__init__`` returns nothing, ``self``/``cls`` go
    without)."""
    missing = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                visit(child, f"{where}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                public = not child.name.startswith("_") or child.name == "__init__"
                if not public:
                    continue
                args = child.args
                params = args.posonlyargs + args.args + args.kwonlyargs
                params += [a for a in (args.vararg, args.kwarg) if a is not None]
                untyped = [a.arg for a in params if a.annotation is None and a.arg not in ("self", "cls")]
                no_return = child.returns is None and child.name != "__init__"
                if untyped or no_return:
                    what = ", ".join(untyped + (["return"] if no_return else []))
                    missing.append(f"{path.relative_to(root)}:{child.lineno} {where}{child.name}: {what}")

    visit(ast.parse(path.read_text()), "")
    return missing


def test_public_functions_are_annotated():
    package = ROOT / "stablelm_lab"
    missing = [m for p in sorted(package.rglob("*.py")) for m in unannotated_public_functions(p)]
    assert missing == [], f"{len(missing)} public functions lack types:\n" + "\n".join(missing)


def test_the_annotation_check_finds_a_missing_type(tmp_path):
    source = tmp_path / "toy.py"
    source.write_text(
        "def typed(x: int) -> int: ...\n"
        "def untyped(x, y: int): ...\n"
        "def _private(x): ...\n"
        "class Block:\n"
        "    def __init__(self, n): ...\n"
        "    def decode(self, raw: bytes) -> bytes:\n"
        "        def inner(z): ...\n"
    )
    found = [m.split(" ", 1)[1] for m in unannotated_public_functions(source, root=tmp_path)]
    assert found == ["untyped: x, return", "Block.__init__: n"]
