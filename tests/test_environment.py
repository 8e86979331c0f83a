"""environment.yml (for conda users) lists the same packages as pyproject.toml."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
#: pip name -> conda-forge name, where they differ.
CONDA_NAMES = {"torch": "pytorch-cpu", "kaleido": "python-kaleido"}
#: Only on PyPI: conda users get them through the pip section.
PIP_ONLY = {"gguf"}


def requirement_name(req: str) -> str:
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].strip().lower()


def pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    return {requirement_name(r): r.replace(" ", "") for r in reqs}


def environment_requirements() -> tuple[dict[str, str], dict[str, str]]:
    conda, pip, in_pip = {}, {}, False
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("\ndependencies:\n", 1)[1].splitlines():
        item = re.match(r"^(\s*)- (.+?)\s*$", line)
        if not item:
            continue
        indent, spec = len(item.group(1)), item.group(2)
        if spec == "pip:":
            in_pip = True
        elif in_pip and indent > 2:
            if not spec.startswith("-e"):
                pip[requirement_name(spec)] = spec.replace(" ", "")
        else:
            in_pip = False
            conda[requirement_name(spec)] = spec.replace(" ", "")
    return conda, pip


def test_environment_yml_lists_every_pyproject_requirement_with_the_same_bound():
    conda, pip = environment_requirements()
    for name, req in pyproject_requirements().items():
        bound = req[len(name) :]
        if name in PIP_ONLY:
            assert pip.get(name) == name + bound, f"{name} belongs in the pip section of environment.yml"
        else:
            conda_name = CONDA_NAMES.get(name, name)
            assert conda.get(conda_name) == conda_name + bound, f"environment.yml lacks {conda_name}{bound}"


def test_environment_yml_has_nothing_pyproject_lacks():
    conda, pip = environment_requirements()
    known = {CONDA_NAMES.get(n, n) for n in pyproject_requirements()} | {"python", "pip"}
    assert set(conda) <= known and set(pip) <= set(pyproject_requirements())


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bin/test" in readme and "bin/lab" in readme
    assert "bin/test" in (ROOT / ".ci" / "run").read_text()
