"""Compare stored plotly figures with freshly computed ones: numbers with a tolerance, everything else exactly.

Another CPU (or torch with other SIMD kernels) computes other last bits, and plotly stores float arrays as
base64 (`bdata`), so an exact comparison fails on 1-ulp noise. Here every numeric array is decoded and
compared within `RTOL` of the largest magnitude in the stored array; trace types, names, shapes, dtypes,
axis titles, text and the rest of the figure must be equal. A figure stored inside a `text/html` plotly
div (`Plotly.newPlot("id", data, layout, config)`) is compared the same way, and the HTML around it
exactly.

conftest.py hands nbval's comparison these two MIME types through `tolerant_outputs`.
"""

from __future__ import annotations

import base64
import copy
import json
import math
import re

import numpy as np

#: relative to the largest magnitude of the stored array: float32 noise is ~1e-7, real changes 1e-3
RTOL = 1e-5
PLOTLY_JSON = "application/vnd.plotly.v1+json"
HTML = "text/html"
_NEW_PLOT = re.compile(r'Plotly\.newPlot\(\s*"[^"]*",\s*')


def figures_match(ref, test, rtol: float = RTOL) -> str | None:
    """None when two plotly figure dicts agree, else where and how they differ."""
    return _diff(ref, test, "figure", rtol)


def html_match(ref: str, test: str, rtol: float = RTOL, sanitize=lambda text: text) -> str | None:
    """None when two HTML outputs agree: plotly payloads within tolerance, the text around them exactly
    (after `sanitize`, nbval's regexes that replace the div's random id)."""
    ref_text, ref_figs = split_plotly_html(ref)
    test_text, test_figs = split_plotly_html(test)
    if sanitize(ref_text) != sanitize(test_text):
        return "the HTML around the figures differs"
    if len(ref_figs) != len(test_figs):
        return f"{len(ref_figs)} plotly payloads stored, {len(test_figs)} computed"
    for i, (a, b) in enumerate(zip(ref_figs, test_figs)):
        problem = _diff(a, b, f"html payload {i}", rtol)
        if problem:
            return problem
    return None


def split_plotly_html(html: str) -> tuple[str, list]:
    """The HTML with each `Plotly.newPlot` argument replaced by a placeholder, and the parsed arguments."""
    decoder = json.JSONDecoder()
    pieces, payloads, pos = [], [], 0
    for match in _NEW_PLOT.finditer(html):
        if match.start() < pos:
            continue
        pieces.append(html[pos : match.end()])
        pos = match.end()
        args = []
        while True:  # data, layout, config: JSON values separated by commas
            try:
                value, end = decoder.raw_decode(html, pos)
            except json.JSONDecodeError:
                break
            args.append(value)
            pieces.append(f"<plotly-argument {len(args)}>")
            rest = re.match(r"\s*,\s*", html[end:])
            pos = end + (rest.end() if rest else 0)
            if not rest:
                break
        payloads.append(args)
    pieces.append(html[pos:])
    return "".join(pieces), payloads


def _decode(value: dict) -> np.ndarray:
    array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    if "shape" in value:
        shape = value["shape"]
        array = array.reshape([int(s) for s in shape.split(",")] if isinstance(shape, str) else shape)
    return array


def _is_typed_array(value) -> bool:
    return isinstance(value, dict) and "bdata" in value and "dtype" in value


def _numeric_list(value) -> np.ndarray | None:
    """A rectangular (nested) list of plain numbers as a float array, or None when it holds anything else."""

    def is_number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def leaves_are_numbers(v):
        return all(leaves_are_numbers(x) for x in v) if isinstance(v, list) else is_number(v)

    if not isinstance(value, list) or not value or not leaves_are_numbers(value):
        return None
    try:
        return np.array(value, dtype=np.float64)
    except ValueError:  # ragged
        return None


def _arrays_close(a: np.ndarray, b: np.ndarray, where: str, rtol: float) -> str | None:
    if a.shape != b.shape:
        return f"{where}: shape {a.shape} stored, {b.shape} computed"
    if a.dtype.kind not in "fc":
        if not np.array_equal(a, b):
            return f"{where}: {np.count_nonzero(a != b)} of {a.size} values differ"
        return None
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(a64)
    if not np.array_equal(finite, np.isfinite(b64)) or not np.array_equal(a64[~finite], b64[~finite], equal_nan=True):
        return f"{where}: NaN or infinity at other places"
    if not finite.any():
        return None
    scale = float(np.abs(a64[finite]).max())
    worst = float(np.abs(a64[finite] - b64[finite]).max())
    if worst > rtol * scale:
        return f"{where}: differs by up to {worst:.3g}, more than {rtol:g} x the largest magnitude {scale:.3g}"
    return None


def _diff(ref, test, where: str, rtol: float) -> str | None:
    if _is_typed_array(ref) or _is_typed_array(test):
        if not (_is_typed_array(ref) and _is_typed_array(test)):
            return f"{where}: a typed array on one side only"
        if ref["dtype"] != test["dtype"]:
            return f"{where}: dtype {ref['dtype']} stored, {test['dtype']} computed"
        return _arrays_close(_decode(ref), _decode(test), where, rtol)
    if isinstance(ref, dict) and isinstance(test, dict):
        if ref.keys() != test.keys():
            return f"{where}: keys {sorted(ref.keys() ^ test.keys())} on one side only"
        for key in ref:
            problem = _diff(ref[key], test[key], f"{where}.{key}", rtol)
            if problem:
                return problem
        return None
    if isinstance(ref, list) and isinstance(test, list):
        ref_numbers, test_numbers = _numeric_list(ref), _numeric_list(test)
        if ref_numbers is not None and test_numbers is not None:
            return _arrays_close(ref_numbers, test_numbers, where, rtol)
        if len(ref) != len(test):
            return f"{where}: {len(ref)} items stored, {len(test)} computed"
        for i, (a, b) in enumerate(zip(ref, test)):
            problem = _diff(a, b, f"{where}[{i}]", rtol)
            if problem:
                return problem
        return None
    if isinstance(ref, float) and isinstance(test, (int, float)) and not isinstance(test, bool):
        if math.isclose(ref, test, rel_tol=rtol, abs_tol=0.0) or (math.isnan(ref) and math.isnan(test)):
            return None
        return f"{where}: {ref!r} stored, {test!r} computed"
    if type(ref) is not type(test) or ref != test:
        return f"{where}: {ref!r:.80} stored, {test!r:.80} computed"
    return None


def tolerant_outputs(
    ref_outputs: list, test_outputs: list, rtol: float = RTOL, sanitize=lambda text: text
) -> tuple[list, list[str]]:
    """`test_outputs` with each plotly payload that matches its stored twin within tolerance replaced by the
    stored one, so an exact comparison afterwards passes on noise; and the reasons for those that differ."""
    problems = []
    result = [_with_own_data(o) for o in test_outputs]
    html = lambda a, b, tol: html_match(a, b, tol, sanitize)  # noqa: E731
    for mime, match in ((PLOTLY_JSON, figures_match), (HTML, html)):
        refs = [o for o in ref_outputs if mime in o.get("data", {})]
        tests = [o for o in result if mime in o.get("data", {})]
        if len(refs) != len(tests):
            continue  # nbval reports the different counts itself
        for r, t in zip(refs, tests):
            a, b = r["data"][mime], t["data"][mime]
            if mime == HTML:
                a, b = _text(a), _text(b)
                if "Plotly.newPlot" not in a:
                    continue  # plain HTML: nbval compares it exactly
            problem = match(a, b, rtol)
            if problem is None:
                t["data"][mime] = r["data"][mime]
            else:
                problems.append(f"{mime}: {problem}")
    return result, problems


def _with_own_data(output):
    """A shallow copy (nbformat's node type kept) whose data dict can be changed without touching the cell."""
    output = copy.copy(output)
    if "data" in output:
        output["data"] = copy.copy(output["data"])
    return output


def _text(value) -> str:
    return "".join(value) if isinstance(value, list) else value
