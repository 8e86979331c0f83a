"""Figures: pure functions from arrays to plotly figures (no state, no widgets, testable without a browser)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from .anatomy import block_fields, byte_owner, sub_block_size
from .quants import QuantFormat

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#EECA3B", "#9D755D"]
SUB_BLOCK_TONES = ["#4C78A8", "#9ECAE9"]
BYTES_PER_ROW = 32


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(title=dict(text=title, x=0.01), height=height, template="plotly_white",
                      margin=dict(l=50, r=20, t=60, b=40), font=dict(size=12))
    return fig


def block_figure(fmt: QuantFormat, raw_block: np.ndarray, title: str | None = None) -> go.Figure:
    """One block: its bytes coloured by struct field (top), and the weights they decode to (bottom)."""
    raw_block = np.asarray(raw_block, dtype=np.uint8)
    owner = byte_owner(fmt)
    names = list(fmt.block_dtype.names)
    n_rows = -(-fmt.type_size // BYTES_PER_ROW)
    z = np.full((n_rows, BYTES_PER_ROW), np.nan)
    text = np.full((n_rows, BYTES_PER_ROW), "", dtype=object)
    hover = np.full((n_rows, BYTES_PER_ROW), "", dtype=object)
    for i, (field, byte) in enumerate(zip(owner, raw_block)):
        r, c = divmod(i, BYTES_PER_ROW)
        z[r, c] = names.index(field)
        text[r, c] = f"{byte:02x}"
        hover[r, c] = f"byte {i}<br>{field}<br>0x{byte:02x} = {byte} = {byte:08b}"
    weights = fmt.dequantize(raw_block)
    fig = make_subplots(rows=2, cols=1, row_heights=[0.45, 0.55], vertical_spacing=0.12,
                        subplot_titles=(f"{fmt.type_size} bytes, coloured by field",
                                        f"{fmt.block_size} weights it decodes to"))
    colorscale = _discrete_colorscale(len(names))
    fig.add_trace(go.Heatmap(z=z, text=text, texttemplate="%{text}", hovertext=hover, hoverinfo="text",
                             colorscale=colorscale, zmin=-0.5, zmax=len(names) - 0.5, showscale=False,
                             xgap=2, ygap=2), row=1, col=1)
    for k, name in enumerate(names):  # a legend entry per field
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=name,
                                 marker=dict(size=12, symbol="square", color=PALETTE[k % len(PALETTE)])),
                      row=1, col=1)
    sub = sub_block_size(fmt)
    tones = [SUB_BLOCK_TONES[(i // sub) % 2] for i in range(fmt.block_size)]
    fig.add_trace(go.Bar(x=np.arange(fmt.block_size), y=weights, marker_color=tones, showlegend=False,
                         hovertemplate="weight %{x}<br>%{y:.6g}<extra></extra>"), row=2, col=1)
    fig.update_yaxes(autorange="reversed", showticklabels=False, row=1, col=1)
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_xaxes(title_text=f"weight index (sub-blocks of {sub} alternate in shade)", row=2, col=1)
    return _layout(fig, title or f"One {fmt.name} block", 520)


def _discrete_colorscale(n: int) -> list:
    scale = []
    for k in range(n):
        color = PALETTE[k % len(PALETTE)]
        scale += [[k / n, color], [(k + 1) / n, color]]
    return scale


def fields_table(fmt: QuantFormat, raw_block: np.ndarray, max_values: int = 8) -> str:
    """An HTML table of a block's fields: bytes, C type and value, for display next to block_figure."""
    rows = []
    for f in block_fields(fmt, raw_block):
        values = ", ".join(f"{v:.6g}" if f.value.dtype.kind == "f" else str(v) for v in f.value[:max_values])
        more = " …" if f.value.size > max_values else ""
        rows.append(f"<tr><td><b>{f.name}</b></td><td>{f.offset}–{f.end - 1}</td><td><code>{f.ctype}</code>"
                    f"</td><td>{values}{more}</td></tr>")
    return ("<table><tr><th>field</th><th>bytes</th><th>C type</th><th>value</th></tr>" + "".join(rows)
            + "</table>")


def error_histogram(original: np.ndarray, decoded: np.ndarray, name: str) -> go.Figure:
    """The distribution of decoded - original over a tensor."""
    err = (np.asarray(decoded, np.float64) - np.asarray(original, np.float64)).ravel()
    err = err[np.isfinite(err)]
    fig = go.Figure(go.Histogram(x=err, nbinsx=121, marker_color=PALETTE[0]))
    fig.update_xaxes(title_text="decoded − original")
    fig.update_yaxes(title_text="weights", type="log")
    return _layout(fig, f"Quantization error of {name}", 360)


def frontier_figure(formats: list[str], bits_per_weight: list[float], errors: list[float],
                    error_name: str = "relative RMSE") -> go.Figure:
    """Bits per weight against error, one point per format: the price of each bit."""
    fig = go.Figure(go.Scatter(x=bits_per_weight, y=errors, mode="markers+text", text=formats,
                               textposition="top center", marker=dict(size=10, color=PALETTE[1]),
                               hovertemplate="%{text}<br>%{x:.4g} bits/weight<br>%{y:.3g}<extra></extra>"))
    fig.update_xaxes(title_text="bits per weight")
    fig.update_yaxes(title_text=error_name, type="log")
    return _layout(fig, "Bits per weight vs error", 420)


def block_error_figure(block_scale: np.ndarray, block_rmse: np.ndarray, name: str) -> go.Figure:
    """Each block's RMSE against its scale d: the error grows with the scale, block by block."""
    fig = go.Figure(go.Scattergl(x=block_scale, y=block_rmse, mode="markers",
                                 marker=dict(size=4, opacity=0.5, color=PALETTE[0])))
    fig.update_xaxes(title_text="block scale d", type="log")
    fig.update_yaxes(title_text="block RMSE", type="log")
    return _layout(fig, f"Error per block vs its scale: {name}", 380)
