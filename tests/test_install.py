"""A regular (non-editable) install carries the embedded default: the wheel holds data/, and the installed
package finds it outside any checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def source_copy(dest: Path) -> Path:
    """What a wheel is built from, copied (setuptools leaves build/ and *.egg-info in the tree it builds)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("stablelm_lab", "data"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_a_wheel_install_finds_the_embedded_default(tmp_path):
    source = source_copy(tmp_path / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", tmp_path / "dist", source],
        check=True,
        capture_output=True,
    )
    wheel = next((tmp_path / "dist").glob("stablelm_lab-*.whl"))
    prefix = tmp_path / "prefix"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--ignore-installed",
            "--quiet",
            "--prefix",
            prefix,
            wheel,
        ],
        check=True,
        capture_output=True,
    )
    site = Path(sysconfig.get_path("purelib", vars={"base": str(prefix), "platbase": str(prefix)}))
    code = (
        "import stablelm_lab, stablelm_lab.container.default_model as d; "
        "from stablelm_lab import GGUFFile, StableLMConfig; "
        "print(stablelm_lab.__file__); print(d.default_gguf()); "
        "print(StableLMConfig.from_gguf(GGUFFile(d.default_gguf())).n_layer); "
        "print(','.join(d.embedded_variants()))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    package, default, n_layer, variants = done.stdout.split()
    assert Path(package).is_relative_to(site)  # the installed copy, not the checkout
    assert Path(default) == (prefix / "share/stablelm-lab/data/tiny-stablelm.F16.gguf").resolve()
    assert Path(default).read_bytes() == (ROOT / "data/tiny-stablelm.F16.gguf").read_bytes()
    assert int(n_layer) > 0 and "Q4_K_M" in variants.split(",")
