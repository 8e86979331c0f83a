"""Every notebook teaches the same way: objective first, ending on a picture, and the numbers its prose quotes
(bits per weight, dB, sizes) are numbers its own stored outputs show, so the text cannot drift from the code.

The stored outputs are what nbval compares against a fresh run, so prose checked against them is prose
checked against the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))
FIGURE_MIMES = {"application/vnd.plotly.v1+json", "image/png", "image/svg+xml"}

#: a number followed by a unit the prose quotes
QUOTED = re.compile(
    r"(?<![\w.])(\d[\d,]*(?:\.\d+)?)\s*(bits per weight|bits/weight|bits/w|bpw|dB|bytes|GB|MB|GiB|MiB)\b"
)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")

#: numbers the prose may quote without an output showing them, each with where it comes from
FROM_SOURCES = {("6", "dB"): "20·log10(2) = 6.02 dB per bit: a hand derivation"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def source(cell) -> str:
    return "".join(cell["source"])


def output_text(nb) -> str:
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append("".join(out["text"]))
            for mime in ("text/plain", "text/markdown"):
                if mime in out.get("data", {}):
                    parts.append("".join(out["data"][mime]))
    return "\n".join(parts)


def output_numbers(nb) -> list[float]:
    numbers = []
    for token in NUMBER.findall(output_text(nb)):
        try:
            numbers.append(float(token.replace(",", "")))
        except ValueError:
            pass
    return numbers


def quoted_numbers(nb) -> list[tuple[str, str]]:
    found = []
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            text = re.sub(r"`[^`]*`", "", source(cell))  # code in backticks is not a quoted measurement
            found += QUOTED.findall(text)
    return found


def shown(quoted: str, numbers: list[float]) -> bool:
    """Some output shows the quoted number, to the precision it is quoted with."""
    value = float(quoted.replace(",", ""))
    decimals = len(quoted.split(".")[1]) if "." in quoted else 0
    return any(abs(x - value) <= 0.5 * 10**-decimals + 1e-9 for x in numbers)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_starts_with_its_objective(path):
    first = load(path)["cells"][0]
    assert first["cell_type"] == "markdown" and "**Objective.**" in source(first), (
        f"{path.name}: the first cell must state the objective (**Objective.** ...)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_ends_on_a_picture(path):
    last = load(path)["cells"][-1]
    assert last["cell_type"] == "code", f"{path.name} ends on a {last['cell_type']} cell, not on a picture"
    mimes = {mime for out in last.get("outputs", []) for mime in out.get("data", {})}
    assert mimes & FIGURE_MIMES, f"{path.name}: the last cell shows no figure (outputs: {sorted(mimes)})"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_prose_numbers_are_shown_by_the_code(path):
    nb = load(path)
    numbers = output_numbers(nb)
    stale = [f"{q} {unit}" for q, unit in quoted_numbers(nb) if (q, unit) not in FROM_SOURCES and not shown(q, numbers)]
    assert not stale, f"{path.name}: the prose quotes numbers no output shows: {stale}"


def test_the_check_catches_a_stale_number():
    nb = {
        "cells": [
            {"cell_type": "markdown", "source": ["Q4_K gives 22.9 dB at 4.5 bits per weight."]},
            {
                "cell_type": "code",
                "source": [],
                "outputs": [{"output_type": "stream", "text": ["Q4_K 4.5000 23.41\n"]}],
            },
        ]
    }
    numbers = output_numbers(nb)
    assert [q for q, _ in quoted_numbers(nb) if not shown(q, numbers)] == ["22.9"]
