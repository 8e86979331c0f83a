"""Figures: pure functions from arrays to plotly figures (no state, no widgets, testable without a browser)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from .anatomy import block_fields, byte_owner, sub_block_size
from .quants import QuantFormat

# JupyterLab draws the mimetype; exported HTML (nbviewer, nbconvert) needs the connected-HTML copy.
pio.renderers.default = "plotly_mimetype+notebook_connected"

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
    z = np.full((n_rows, BYTES_PER_ROW), None, dtype=object)  # None, not NaN: widgets send JSON
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
    fig.add_trace(go.Heatmap(z=z.tolist(), text=text.tolist(), texttemplate="%{text}",
                             hovertext=hover.tolist(), hoverinfo="text", colorscale=colorscale,
                             zmin=-0.5, zmax=len(names) - 0.5, showscale=False, xgap=2, ygap=2), row=1, col=1)
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


# ---- the model ---------------------------------------------------------------------------------------
def rotary_figure(head_dim: int, n_rot: int, base: float, n_positions: int = 32) -> go.Figure:
    """The angle each dim pair of one head turns by, per position: only the first n_rot dims turn."""
    half = n_rot // 2
    inv_freq = base ** (-np.arange(half) * 2 / n_rot)
    angle = np.outer(np.arange(n_positions), inv_freq) % (2 * np.pi)      # (positions, pairs)
    z = np.full((n_positions, head_dim), np.nan)
    z[:, :half] = angle
    z[:, half:n_rot] = angle                                               # dim i + n_rot/2 turns with dim i
    fig = go.Figure(go.Heatmap(z=z, colorscale="Twilight", zmin=0, zmax=2 * np.pi,
                               colorbar=dict(title="angle"),
                               hovertemplate="position %{y}<br>dim %{x}<br>angle %{z:.2f} rad<extra></extra>"))
    fig.add_vline(x=n_rot - 0.5, line=dict(color="black", dash="dash"))
    fig.update_xaxes(title_text=f"dim of the head (dims {n_rot}..{head_dim - 1}: not rotated)")
    fig.update_yaxes(title_text="position", autorange="reversed")
    return _layout(fig, f"Partial rotary: {n_rot} of {head_dim} dims turn, in pairs (i, i + {half})", 420)


def attention_figure(probs: np.ndarray, tokens: list[str], title: str) -> go.Figure:
    """Attention probabilities of one head: query positions (rows) over key positions (columns)."""
    labels = [f"{i}:{t}" for i, t in enumerate(tokens)]
    fig = go.Figure(go.Heatmap(z=probs, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1,
                               hovertemplate="query %{y}<br>key %{x}<br>p = %{z:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="key", tickangle=-60, showticklabels=len(tokens) <= 48)
    fig.update_yaxes(title_text="query", autorange="reversed", showticklabels=len(tokens) <= 48)
    return _layout(fig, title, 520)


def layer_lines_figure(series: dict[str, np.ndarray], title: str, y_title: str, log: bool = False) -> go.Figure:
    """One line per named series over the layers (x = layer index)."""
    fig = go.Figure()
    for k, (name, values) in enumerate(series.items()):
        fig.add_trace(go.Scatter(x=np.arange(len(values)), y=values, mode="lines+markers", name=name,
                                 line=dict(color=PALETTE[k % len(PALETTE)])))
    fig.update_xaxes(title_text="layer", dtick=1)
    fig.update_yaxes(title_text=y_title, type="log" if log else "linear")
    return _layout(fig, title, 380)


def logit_lens_figure(top_prob: np.ndarray, top_token: list[list[str]], tokens: list[str]) -> go.Figure:
    """Per layer (rows) and position (columns): the top next token read from the residual stream."""
    fig = go.Figure(go.Heatmap(z=top_prob, text=top_token, texttemplate="%{text}", colorscale="Greens",
                               zmin=0, zmax=1, x=[f"{i}:{t}" for i, t in enumerate(tokens)],
                               hovertemplate="after layer %{y}<br>position %{x}<br>top: %{text} "
                                             "(p = %{z:.2f})<extra></extra>"))
    fig.update_yaxes(title_text="layer", autorange="reversed", dtick=1)
    fig.update_xaxes(title_text="input position", tickangle=-60)
    return _layout(fig, "Logit lens: the next token each layer would predict", 420)


SAMPLING_Y_FLOOR = 1e-4   # the log axis starts here, fixed: bars keep their height from one setting to the next


def sampling_orders_figure(tokens: list[str], panels: dict[str, tuple[np.ndarray, np.ndarray]],
                           title: str) -> go.Figure:
    """The same next tokens under each sampler, one panel per sampler (``panels``: name -> (drawn, tempered)).

    ``drawn`` is the probability each token is drawn with (0 where the sampler dropped it), ``tempered``
    softmax(logits / temperature). A kept token's bar is its drawn probability, in colour; a dropped token's
    bar is its tempered probability, in grey, so dropped tokens stay in sight. The log axis is fixed
    (1e-4 to 1) so that bars can be compared across settings and panels.
    """
    names = list(panels)
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=names)
    labels = [repr(t) for t in tokens]
    for k, (name, (drawn, tempered)) in enumerate(panels.items()):
        bars = sampling_bars(drawn, tempered, PALETTE[k % len(PALETTE)])
        fig.add_trace(go.Bar(x=labels, name=name, showlegend=False, **bars,
                             hovertemplate="%{x}<br>p = %{y:.4f}<br>%{customdata}<extra></extra>"),
                      row=1, col=k + 1)
        fig.update_xaxes(tickangle=-60, title_text="next token (most likely first)", row=1, col=k + 1)
    ticks = [10.0 ** e for e in range(int(np.log10(SAMPLING_Y_FLOOR)), 1)]
    fig.update_yaxes(type="log", range=[np.log10(SAMPLING_Y_FLOOR), 0], tickvals=ticks,
                     ticktext=[f"{t:g}" for t in ticks])
    fig.update_yaxes(title_text="probability (log scale)", row=1, col=1)
    fig = _layout(fig, title, 460)
    fig.update_layout(margin=dict(t=110))
    return fig


def sampling_bars(drawn: np.ndarray, tempered: np.ndarray, color: str) -> dict:
    """Heights, colours and hover notes of one sampler's bars (kept: drawn probability; dropped: grey)."""
    drawn, tempered = np.asarray(drawn, dtype=float), np.asarray(tempered, dtype=float)
    kept = drawn > 0
    return {"y": np.where(kept, drawn, tempered),
            "marker": {"color": [color if k else "#BBBBBB" for k in kept]},
            "customdata": ["kept" if k else "dropped (grey: its probability before the cut)" for k in kept]}


def kept_by_temperature_figure(temperatures: np.ndarray, kept: dict[str, np.ndarray], title: str) -> go.Figure:
    """How many tokens each sampler leaves in play (y) as the temperature changes (x), one line per sampler."""
    fig = go.Figure()
    for k, (name, counts) in enumerate(kept.items()):
        fig.add_trace(go.Scatter(x=temperatures, y=counts, mode="lines+markers", name=name,
                                 line=dict(color=PALETTE[k % len(PALETTE)])))
    fig.update_xaxes(title_text="temperature")
    fig.update_yaxes(title_text="tokens that can be drawn", rangemode="tozero")
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return _layout(fig, title, 400)


def per_position_figure(values: np.ndarray, tokens: list[str], title: str, y_title: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=[f"{i}:{t}" for i, t in enumerate(tokens)], y=values, marker_color=PALETTE[3]))
    fig.update_xaxes(tickangle=-60)
    fig.update_yaxes(title_text=y_title)
    return _layout(fig, title, 360)
