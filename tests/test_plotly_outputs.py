"""The tolerant figure comparison nbval uses (tests/plotly_outputs.py): it passes on last-bit noise and fails
on every real change. The figures are made by plotly itself, the noise by numpy's nextafter."""

from __future__ import annotations

import copy
import json

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
from plotly_outputs import PLOTLY_JSON, figures_match, html_match, tolerant_outputs


def figure(y, names=("residual", "attention"), title="mean L2 norm", z=None):
    fig = go.Figure(
        [go.Scatter(x=np.arange(len(y)), y=y * (i + 1), name=n, mode="lines+markers") for i, n in enumerate(names)]
    )
    if z is not None:
        fig.add_trace(go.Heatmap(z=z, text=[["a", "b"], ["c", "d"]], name="heat"))
    fig.update_layout(yaxis_title=title, title="Residual stream norms")
    return json.loads(pio.to_json(fig))


Y = np.array([54.97, 71.99, 87.36, 111.78])
Z = np.array([[0.25, 0.5], [0.125, 1.0]], dtype=np.float32)


def one_ulp(y):
    return np.nextafter(y, np.inf, dtype=y.dtype)


def test_payloads_are_the_base64_arrays_plotly_writes():
    stored = figure(Y, z=Z)
    assert "bdata" in stored["data"][0]["y"] and "bdata" in stored["data"][2]["z"]


def test_one_ulp_of_noise_passes():
    assert figures_match(figure(Y, z=Z), figure(one_ulp(Y), z=one_ulp(Z))) is None


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda: figure(Y + np.array([0, 0, 1e-3 * 111.78, 0]), z=Z), "differs by up to"),
        (lambda: figure(Y, z=Z + np.float32(1e-3)), "differs by up to"),
        (lambda: figure(Y, names=("residual",), z=Z), "items stored"),
        (lambda: figure(Y[:3], z=Z), "shape"),
        (lambda: figure(Y, z=Z.T.copy().reshape(1, 4)), "shape"),
        (lambda: figure(Y, title="mean L1 norm", z=Z), "mean L2 norm"),
        (lambda: figure(Y, names=("residual", "MLP"), z=Z), "attention"),
        (lambda: figure(Y.astype(np.float32), z=Z), "dtype"),
    ],
)
def test_a_real_change_fails(change, expected):
    problem = figures_match(figure(Y, z=Z), change())
    assert problem is not None and expected in problem, problem


def test_trace_type_is_compared_exactly():
    changed = figure(Y, z=Z)
    changed["data"][2]["type"] = "contour"
    assert "contour" in figures_match(figure(Y, z=Z), changed)


def test_nan_and_infinity_must_stay_where_they_were():
    y = Y.copy()
    y[1] = np.nan
    assert figures_match(figure(y), figure(one_ulp(y))) is None
    z = Y.copy()
    z[2] = np.nan
    assert "NaN" in figures_match(figure(y), figure(z))


def html_of(fig_dict, div_id):
    html = pio.to_html(go.Figure(fig_dict), include_plotlyjs="cdn", full_html=False, div_id=div_id)
    return html


def test_html_divs_compare_their_payload_with_tolerance_and_the_rest_exactly():
    uuid = "185e4848-f76a-45e5-a05f-fb928859afc7"
    other = "0b0e4848-f76a-45e5-a05f-fb928859a000"
    sanitize = lambda s: s.replace(uuid, "UUID").replace(other, "UUID")  # noqa: E731 (nbval's regex)
    stored = html_of(figure(Y), uuid)
    assert html_match(stored, html_of(figure(one_ulp(Y)), other), sanitize=sanitize) is None
    assert "differs by up to" in html_match(stored, html_of(figure(Y * 1.001), other), sanitize=sanitize)
    assert "HTML around" in html_match(stored, stored.replace("plotly-graph-div", "plotly-div"), sanitize=sanitize)


def test_nbval_outputs_take_the_stored_payload_only_when_it_matches():
    def outputs(fig):
        return [{"output_type": "display_data", "metadata": {}, "data": {PLOTLY_JSON: fig, "text/plain": "Figure"}}]

    stored = outputs(figure(Y))
    noisy, problems = tolerant_outputs(stored, outputs(figure(one_ulp(Y))))
    assert noisy == stored and problems == []
    changed = outputs(figure(Y * 1.001))
    kept, problems = tolerant_outputs(stored, copy.deepcopy(changed))
    assert kept == changed and len(problems) == 1
