"""The model the workbook opens: the embedded default in data/, or the file ``STABLELM_GGUF`` names.

    default_gguf()              # $STABLELM_GGUF if set, else data/tiny-stablelm.F16.gguf
    embedded_gguf("Q4_K_M")     # one of the shipped variants of the embedded default
    embedded_variants()         # ["F16", "Q8_0", "Q4_K_M", ...]: what data/ holds

The embedded default is a small StableLM-3B-4E1T-shaped model trained by ``python -m stablelm_lab.train``
on the Python standard library (data/README.md says how, and how well it does). data/ is found next to
the package in a checkout (or an editable install), and under the environment's share/stablelm-lab/data
in a regular install (pyproject's data-files), so the workbook opens it from any working directory.
"""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

ENV_VAR = "STABLELM_GGUF"
MODEL_NAME = "tiny-stablelm"
DEFAULT_VARIANT = "F16"
CHECKOUT_DATA = Path(__file__).resolve().parents[2] / "data"
INSTALLED_DATA = "share/stablelm-lab/data"  # where pyproject's data-files puts data/ in an install


def find_data_dir() -> Path:
    """data/ of the checkout when it holds the embedded default, else the installed copy (found through the
    distribution's file list, wherever --prefix or --user put it), else the checkout's path."""
    default = f"{MODEL_NAME}.{DEFAULT_VARIANT}.gguf"
    if (CHECKOUT_DATA / default).is_file():
        return CHECKOUT_DATA
    try:
        files = metadata.distribution("stablelm-lab").files or []
    except metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.as_posix().endswith(f"{INSTALLED_DATA}/{default}"):
            return Path(file.locate()).resolve().parent
    return CHECKOUT_DATA


DATA_DIR = find_data_dir()


def default_gguf() -> Path:
    """The GGUF file to open: ``$STABLELM_GGUF`` when set (it must name an existing file), else the
    embedded default in F16."""
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            what = "a directory, not a file" if path.is_dir() else "no file"
            raise FileNotFoundError(
                f"{ENV_VAR}={override!r} names {what}; point it at a .gguf file "
                f"or unset it to use the embedded default ({embedded_gguf()})"
            )
        return path
    return embedded_gguf()


def embedded_gguf(variant: str = DEFAULT_VARIANT) -> Path:
    """data/tiny-stablelm.{variant}.gguf: the embedded default as F16 or one of its quantized mixes."""
    path = DATA_DIR / f"{MODEL_NAME}.{variant.upper()}.gguf"
    if not path.is_file():
        shipped = ", ".join(embedded_variants()) or "none"
        raise FileNotFoundError(
            f"{path} does not exist (variants in {DATA_DIR}: {shipped}); `python -m stablelm_lab.train` rebuilds them"
        )
    return path


def embedded_variants() -> list[str]:
    """The variants data/ holds, the unquantized one first, then from most to fewest bytes."""
    files = sorted(DATA_DIR.glob(f"{MODEL_NAME}.*.gguf"), key=lambda p: -p.stat().st_size)
    return [p.name[len(MODEL_NAME) + 1 : -len(".gguf")] for p in files]


def held_out_text() -> str:
    """The held-out slice of the training corpus (data/heldout.txt), for perplexity and bits per byte."""
    return (DATA_DIR / "heldout.txt").read_text(encoding="utf-8")
