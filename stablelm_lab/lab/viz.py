"""Figures: pure functions from arrays to plotly figures (no state, no widgets, testable without a browser)."""

from __future__ import annotations

import base64
import os
import warnings
from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.io._base_renderers import PlotlyRenderer
from plotly.subplots import make_subplots

from ..quants import QuantFormat
from ..quants.anatomy import block_fields, byte_owner

#: the size of the stored picture of a figure (pixels); about the width of a notebook's output area
PICTURE_WIDTH = 900


_kaleido = {"started": False, "failed": False}


def picture(fig: go.Figure | go.FigureWidget | dict) -> bytes | None:
    """A PNG of ``fig`` (a figure or its dict) drawn by kaleido in Chromium, offline; None where kaleido or a
    Chrome binary is missing (the interactive figure still shows in JupyterLab). ``BROWSER_PATH`` names the
    binary if it is not found on its own (/usr/bin/chromium is). One Chromium serves every picture of the
    process (kaleido's sync server, closed at exit): half a second a picture instead of several seconds.
    ``STABLELM_PICTURES=0`` turns pictures off (a live session that will not store its outputs)."""
    if _kaleido["failed"] or os.environ.get("STABLELM_PICTURES") == "0":
        return None
    try:
        import kaleido

        if not _kaleido["started"]:
            kaleido.start_sync_server(silence_warnings=True)
            _kaleido["started"] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # plotly's kopts, which kaleido's server ignores
            return pio.to_image(fig, format="png", width=PICTURE_WIDTH, scale=1, validate=False)
    except Exception:  # kaleido absent, no Chrome, or Chrome failed to start: the picture is a bonus
        _kaleido["failed"] = True
        return None


class FigureAndPicture(PlotlyRenderer):
    """plotly's JSON for JupyterLab (interactive, offline: plotly.js ships with its extension) and, beside it,
    a PNG of the same figure for every place that cannot run plotly.js from the notebook file: exported HTML
    (nbconvert shows the PNG), GitHub's preview, an untrusted notebook in JupyterLab. plotly's own
    ``notebook_connected`` HTML loads plotly.js from the internet, and ``notebook`` embeds 4.6 MB of it."""

    def to_mimebundle(self, fig_dict: dict) -> dict:
        bundle = super().to_mimebundle(fig_dict)
        png = picture(fig_dict)
        if png is not None:
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
        return bundle


pio.renderers["stablelm"] = FigureAndPicture()
pio.renderers.default = "stablelm"
# every figure's look; as the default it is applied once per figure shown, not validated again at each
# redraw of a control's figure (what that saved: docs/benchmarks.md)
pio.templates.default = "plotly_white"

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#EECA3B", "#9D755D"]
SUB_BLOCK_TONES = ["#4C78A8", "#9ECAE9"]
BYTES_PER_ROW = 32


def _layout(fig: go.Figure, title: str, height: int) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01), height=height, margin=dict(l=50, r=20, t=60, b=40), font=dict(size=12)
    )
    return fig


def byte_map_width(fmt: QuantFormat) -> int:
    """Bytes per row of a block's byte map: a small block on one row (Q8_0's 34 bytes do not wrap 2 bytes
    onto a second row), a K-quant's super-block in rows of 32."""
    return fmt.type_size if fmt.type_size <= 48 else BYTES_PER_ROW


def block_figure(fmt: QuantFormat, raw_block: np.ndarray, title: str | None = None) -> go.Figure:
    """One block: its bytes coloured by struct field (top), and the weights they decode to (bottom)."""
    raw_block = np.asarray(raw_block, dtype=np.uint8)
    owner = byte_owner(fmt)
    names = list(fmt.block_dtype.names)
    width = byte_map_width(fmt)
    n_rows = -(-fmt.type_size // width)
    z = np.full((n_rows, width), None, dtype=object)  # None, not NaN: widgets send JSON
    text = np.full((n_rows, width), "", dtype=object)
    hover = np.full((n_rows, width), "", dtype=object)
    for i, (field, byte) in enumerate(zip(owner, raw_block)):
        r, c = divmod(i, width)
        z[r, c] = names.index(field)
        text[r, c] = f"{byte:02x}"
        hover[r, c] = f"byte {i}<br>{field}<br>0x{byte:02x} = {byte} = {byte:08b}"
    weights = fmt.dequantize(raw_block)
    fig = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.45, 0.55],
        vertical_spacing=0.16,
        subplot_titles=(
            f"{fmt.type_size} bytes, coloured by field (hex in each cell)",
            f"{fmt.block_size} weights it decodes to",
        ),
    )
    colorscale = _discrete_colorscale(len(names))
    fig.add_trace(
        go.Heatmap(
            z=z.tolist(),
            text=text.tolist(),
            texttemplate="%{text}",
            textfont=dict(size=11),
            hovertext=hover.tolist(),
            hoverinfo="text",
            colorscale=colorscale,
            zmin=-0.5,
            zmax=len(names) - 0.5,
            showscale=False,
            xgap=2,
            ygap=2,
        ),
        row=1,
        col=1,
    )
    for k, name in enumerate(names):  # a legend entry per field
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=name,
                marker=dict(size=12, symbol="square", color=PALETTE[k % len(PALETTE)]),
            ),
            row=1,
            col=1,
        )
    sub = fmt.sub_block_size
    tones = [SUB_BLOCK_TONES[(i // sub) % 2] for i in range(fmt.block_size)]
    fig.add_trace(
        go.Bar(
            x=np.arange(fmt.block_size),
            y=weights,
            marker_color=tones,
            showlegend=False,
            hovertemplate="weight %{x}<br>%{y:.6g}<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.update_yaxes(
        autorange="reversed",
        tickvals=list(range(n_rows)),
        ticktext=[str(r * width) for r in range(n_rows)],
        title_text="first byte",
        row=1,
        col=1,
    )
    fig.update_xaxes(title_text="byte within the row", dtick=8 if width > 16 else 2, row=1, col=1)
    fig.update_xaxes(title_text=f"weight index (sub-blocks of {sub} alternate in shade)", row=2, col=1)
    fig.update_yaxes(title_text="weight value", row=2, col=1)
    return _layout(fig, title or f"One {fmt.name} block", 560)


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
        rows.append(
            f"<tr><td><b>{f.name}</b></td><td>{f.offset}–{f.end - 1}</td><td><code>{f.ctype}</code>"
            f"</td><td>{values}{more}</td></tr>"
        )
    return "<table><tr><th>field</th><th>bytes</th><th>C type</th><th>value</th></tr>" + "".join(rows) + "</table>"


def error_histogram(original: np.ndarray, decoded: np.ndarray, name: str, limit: float | None = None) -> go.Figure:
    """The distribution of decoded - original over a tensor, counted here (bars, not every weight sent to the
    browser). ``limit``: the x-axis spans ±limit whatever the format, so formats compare by eye."""
    fig = go.Figure()
    _add_error_histogram(fig, original, decoded, limit)
    fig.update_xaxes(title_text="decoded − original")
    fig.update_yaxes(title_text="weights", **_log_axis(fig.data[0].y))
    return _layout(fig, f"Quantization error of {name}", 360)


def error_limit(original: np.ndarray) -> float:
    """The x range of a tensor's error histogram, the same for every format: a quarter of the largest
    weight (Q2_K's errors reach about that; errors beyond it land in the edge bars)."""
    return float(np.max(np.abs(original))) / 4 or 1.0


def _add_error_histogram(fig: go.Figure, original, decoded, limit: float | None, **where) -> None:
    err = (np.asarray(decoded, np.float64) - np.asarray(original, np.float64)).ravel()
    err = err[np.isfinite(err)]
    limit = limit or float(np.max(np.abs(err), initial=0)) or 1.0
    edges = np.linspace(-limit, limit, 122)
    counts, _ = np.histogram(np.clip(err, -limit, limit), edges)
    centers = (edges[:-1] + edges[1:]) / 2
    fig.add_trace(
        go.Bar(
            x=centers,
            y=np.where(counts > 0, counts, None),
            width=edges[1] - edges[0],
            marker_color=PALETTE[0],
            showlegend=False,
            hovertemplate="error %{x:.3g}<br>%{y} weights<extra></extra>",
        ),
        **where,
    )
    fig.update_xaxes(range=[-limit, limit], **where)


def quant_error_figure(
    original: np.ndarray,
    decoded: np.ndarray,
    block_scale: np.ndarray | None,
    block_rmse: np.ndarray,
    name: str,
    limit: float,
    scale_name: str = "block scale d",
    note: str = "",
) -> go.Figure:
    """Left: the error histogram on a fixed x range (±limit, the same for every format). Right: each block's
    RMSE against its scale, where the format has one per block. ``note`` says what was sampled."""
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.5, 0.5],
        horizontal_spacing=0.12,
        subplot_titles=("error of each weight", f"error per block vs its {scale_name}"),
    )
    _add_error_histogram(fig, original, decoded, limit, row=1, col=1)
    fig.update_xaxes(title_text="decoded − original", row=1, col=1)
    fig.update_yaxes(title_text="weights", row=1, col=1, **_log_axis(fig.data[0].y))
    if block_scale is not None:
        fig.add_trace(
            go.Scattergl(
                x=block_scale,
                y=block_rmse,
                mode="markers",
                showlegend=False,
                marker=dict(size=4, opacity=0.5, color=PALETTE[0]),
                hovertemplate="scale %{x:.3g}<br>RMSE %{y:.3g}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    else:
        fig.add_annotation(
            text="no per-block scale in this format",
            showarrow=False,
            font=dict(size=13),
            xref="x2 domain",
            yref="y2 domain",
            x=0.5,
            y=0.5,
        )
    fig.update_xaxes(title_text=scale_name, row=1, col=2, **_log_axis(block_scale if block_scale is not None else []))
    fig.update_yaxes(title_text="block RMSE", row=1, col=2, **_log_axis(block_rmse))
    title = f"Quantization error of {name}" + (f"<br><sup>{note}</sup>" if note else "")
    return _layout(fig, title, 420)


def frontier_figure(
    formats: list[str], bits_per_weight: list[float], errors: list[float], error_name: str = "relative RMSE"
) -> go.Figure:
    """Bits per weight against error, one point per format: the price of each bit. Each label takes the first
    place around its point (right, left, above, below, ...) where it covers no other label and no other point,
    so the cluster at 4.25–4.5 bits stays readable."""
    height = 460
    fig = go.Figure(
        go.Scatter(
            x=bits_per_weight,
            y=errors,
            mode="markers+text",
            text=formats,
            textposition=label_positions(bits_per_weight, errors, formats, height=height),
            textfont=dict(size=LABEL_PX),
            marker=dict(size=9, color=PALETTE[1]),
            hovertemplate="%{text}<br>%{x:.4g} bits/weight<br>%{y:.3g}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="bits per weight", range=_padded(bits_per_weight))
    fig.update_yaxes(title_text=error_name, **_log_axis(errors))
    return _layout(fig, "Bits per weight vs error", height)


LABEL_PX = 11
#: where a point's label may go, in order of preference: (plotly textposition, dx, dy) in label units
_PLACES = [
    ("middle right", 0.5, 0),
    ("middle left", -0.5, 0),
    ("top center", 0, 1),
    ("bottom center", 0, -1),
    ("top right", 0.5, 1),
    ("bottom right", 0.5, -1),
    ("top left", -0.5, 1),
    ("bottom left", -0.5, -1),
]


def _padded(values, pad: float = 0.08) -> list[float]:
    lo, hi = float(np.min(values)), float(np.max(values))
    return [lo - pad * (hi - lo or 1), hi + pad * (hi - lo or 1)]


def label_positions(
    x: Sequence[float], y: Sequence[float], labels: Sequence[str], width: int = 700, height: int = 460
) -> list[str]:
    """A plotly textposition per point, chosen greedily (left to right) so that no label box overlaps another
    label or a marker, in pixels of a plot ``width`` x ``height`` with a linear x and a log y axis (700 px:
    narrower than the stored picture and a notebook in JupyterLab, so labels apart there are apart in both)."""
    x, y = np.asarray(x, np.float64), np.log10(np.asarray(y, np.float64))
    (x0, x1), (y0, y1) = _padded(x), _padded(y)
    px = (x - x0) / (x1 - x0) * (width - 150)  # the plot area, less margins and axis labels
    py = (y - y0) / (y1 - y0 or 1) * (height - 100)
    boxes, positions = [], [""] * len(x)
    markers = [(a - 5, b - 5, a + 5, b + 5) for a, b in zip(px, py)]
    for i in np.argsort(px, kind="stable"):
        w, h = 0.62 * LABEL_PX * len(labels[i]) + 4, LABEL_PX + 4
        others = boxes + [m for j, m in enumerate(markers) if j != i]
        best = None
        for place, dx, dy in _PLACES:  # the first free place; where none is free, the least covered
            cx, cy = px[i] + dx * (w + 14), py[i] + dy * (h + 4)
            box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
            covered = sum(_overlap(box, o) for o in others)
            if best is None or covered < best[0]:
                best = (covered, place, box)
            if covered == 0:
                break
        positions[i] = best[1]
        boxes.append(best[2])
    return positions


def _overlap(a, b) -> float:
    """The area two boxes (x0, y0, x1, y1) share."""
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _log_axis(values) -> dict:
    """A log axis labelled at powers of ten only (no '2' and '5' minor labels crowding it), unless the values
    span less than a decade."""
    v = np.asarray([np.nan if e is None else e for e in np.ravel(values)], np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    wide = v.size and np.log10(v.max() / v.min()) >= 1
    return dict(type="log", dtick=1, exponentformat="power") if wide else dict(type="log")


def block_error_figure(block_scale: np.ndarray, block_rmse: np.ndarray, name: str) -> go.Figure:
    """Each block's RMSE against its scale d: the error grows with the scale, block by block."""
    fig = go.Figure(
        go.Scattergl(x=block_scale, y=block_rmse, mode="markers", marker=dict(size=4, opacity=0.5, color=PALETTE[0]))
    )
    fig.update_xaxes(title_text="block scale d", **_log_axis(block_scale))
    fig.update_yaxes(title_text="block RMSE", **_log_axis(block_rmse))
    return _layout(fig, f"Error per block vs its scale: {name}", 380)


# ---- the model ---------------------------------------------------------------------------------------
def rotary_figure(head_dim: int, n_rot: int, base: float, n_positions: int = 32) -> go.Figure:
    """The angle each dim pair of one head turns by, per position: only the first n_rot dims turn."""
    half = n_rot // 2
    inv_freq = base ** (-np.arange(half) * 2 / n_rot)
    angle = np.outer(np.arange(n_positions), inv_freq) % (2 * np.pi)  # (positions, pairs)
    z = np.full((n_positions, head_dim), np.nan)
    z[:, :half] = angle
    z[:, half:n_rot] = angle  # dim i + n_rot/2 turns with dim i
    fig = go.Figure(
        go.Heatmap(
            z=z,
            colorscale="Twilight",
            zmin=0,
            zmax=2 * np.pi,
            colorbar=dict(title="angle"),
            hovertemplate="position %{y}<br>dim %{x}<br>angle %{z:.2f} rad<extra></extra>",
        )
    )
    fig.add_vline(x=n_rot - 0.5, line=dict(color="black", dash="dash"))
    fig.update_xaxes(title_text=f"dim of the head (dims {n_rot}..{head_dim - 1}: not rotated)")
    fig.update_yaxes(title_text="position", autorange="reversed")
    return _layout(fig, f"Partial rotary: {n_rot} of {head_dim} dims turn, in pairs (i, i + {half})", 420)


def attention_figure(probs: np.ndarray, tokens: list[str], title: str) -> go.Figure:
    """Attention probabilities of one head: query positions (rows) over key positions (columns)."""
    labels = [f"{i}:{visible_token(t)}" for i, t in enumerate(tokens)]
    fig = go.Figure(
        go.Heatmap(
            z=probs,
            x=labels,
            y=labels,
            colorscale="Blues",
            zmin=0,
            zmax=1,
            colorbar=dict(title=dict(text="p", side="right")),
            hovertemplate="query %{y}<br>key %{x}<br>p = %{z:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="key", tickangle=-60, showticklabels=len(tokens) <= 48)
    fig.update_yaxes(title_text="query", autorange="reversed", showticklabels=len(tokens) <= 48)
    return _layout(fig, title, 520)


def layer_lines_figure(series: dict[str, np.ndarray], title: str, y_title: str, log: bool = False) -> go.Figure:
    """One line per named series over the layers (x = layer index)."""
    fig = go.Figure()
    for k, (name, values) in enumerate(series.items()):
        fig.add_trace(
            go.Scatter(
                x=np.arange(len(values)),
                y=values,
                mode="lines+markers",
                name=name,
                line=dict(color=PALETTE[k % len(PALETTE)]),
            )
        )
    fig.update_xaxes(title_text="layer", dtick=1)
    fig.update_yaxes(title_text=y_title, type="log" if log else "linear")
    return _layout(fig, title, 380)


def visible_token(text: str, limit: int = 10) -> str:
    """A token as a figure can show it: spaces as '·', newlines as '↵', tabs as '→', cut to ``limit``
    characters."""
    for raw, seen in ((" ", "·"), ("Ġ", "·"), ("\n", "↵"), ("Ċ", "↵"), ("\t", "→"), ("ĉ", "→")):
        text = text.replace(raw, seen)  # Ġ Ċ ĉ: how byte-level BPE vocabularies spell space, newline, tab
    shown = text or "∅"
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def logit_lens_figure(top_prob: np.ndarray, top_token: list[list[str]], tokens: list[str]) -> go.Figure:
    """Per input position (rows) and layer (columns): the top next token read from the residual stream,
    written in its cell at 11 px with its whitespace made visible, shaded by its probability."""
    top_prob = np.asarray(top_prob)  # (layers, positions)
    n_layer, n_pos = top_prob.shape
    text = [[visible_token(top_token[layer][pos]) for layer in range(n_layer)] for pos in range(n_pos)]
    fig = go.Figure(
        go.Heatmap(
            z=top_prob.T,
            text=text,
            texttemplate="%{text}",
            textfont=dict(size=11),
            colorscale="Greens",
            zmin=0,
            zmax=1,
            x=list(range(n_layer)),
            y=[f"{i}:{visible_token(t)}" for i, t in enumerate(tokens)],
            xgap=1,
            ygap=1,
            colorbar=dict(title=dict(text="p(top token)", side="right")),
            hovertemplate="position %{y}<br>after layer %{x}<br>top: %{text} (p = %{z:.2f})<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="after layer", dtick=1)
    fig.update_yaxes(title_text="input position: token (· space, ↵ newline)", autorange="reversed")
    return _layout(fig, "Logit lens: the next token each layer would predict", max(360, 80 + 22 * n_pos))


SAMPLING_Y_FLOOR = 1e-4  # the log axis starts here, fixed: bars keep their height from one setting to the next


def sampling_orders_figure(
    tokens: list[str], panels: dict[str, tuple[np.ndarray, np.ndarray]], title: str
) -> go.Figure:
    """The same next tokens under each sampler, one panel per sampler (``panels``: name -> (drawn, tempered)).

    ``drawn`` is the probability each token is drawn with (0 where the sampler dropped it), ``tempered``
    softmax(logits / temperature). A kept token's bar is its drawn probability, in colour; a dropped token's
    bar is its tempered probability, in grey, so dropped tokens stay in sight. The log axis is fixed
    (1e-4 to 1) so that bars can be compared across settings and panels.
    """
    names = list(panels)
    fig = make_subplots(rows=1, cols=len(names), shared_yaxes=True, horizontal_spacing=0.04, subplot_titles=names)
    labels = [repr(t) for t in tokens]
    for k, (name, (drawn, tempered)) in enumerate(panels.items()):
        bars = sampling_bars(drawn, tempered, PALETTE[k % len(PALETTE)])
        fig.add_trace(
            go.Bar(
                x=labels,
                name=name,
                showlegend=False,
                **bars,
                hovertemplate="%{x}<br>p = %{y:.4f}<br>%{customdata}<extra></extra>",
            ),
            row=1,
            col=k + 1,
        )
        fig.update_xaxes(tickangle=-60, title_text="next token (most likely first)", row=1, col=k + 1)
    ticks = [10.0**e for e in range(int(np.log10(SAMPLING_Y_FLOOR)), 1)]
    fig.update_yaxes(
        type="log", range=[np.log10(SAMPLING_Y_FLOOR), 0], tickvals=ticks, ticktext=[f"{t:g}" for t in ticks]
    )
    fig.update_yaxes(title_text="probability (log scale)", row=1, col=1)
    fig = _layout(fig, title, 460)
    fig.update_layout(margin=dict(t=110))
    return fig


def sampling_bars(drawn: np.ndarray, tempered: np.ndarray, color: str) -> dict:
    """Heights, colours and hover notes of one sampler's bars (kept: drawn probability; dropped: grey)."""
    drawn, tempered = np.asarray(drawn, dtype=float), np.asarray(tempered, dtype=float)
    kept = drawn > 0
    return {
        "y": np.where(kept, drawn, tempered),
        "marker": {"color": [color if k else "#BBBBBB" for k in kept]},
        "customdata": ["kept" if k else "dropped (grey: its probability before the cut)" for k in kept],
    }


def kept_by_temperature_figure(temperatures: np.ndarray, kept: dict[str, np.ndarray], title: str) -> go.Figure:
    """How many tokens each sampler leaves in play (y) as the temperature changes (x), one line per sampler."""
    fig = go.Figure()
    for k, (name, counts) in enumerate(kept.items()):
        fig.add_trace(
            go.Scatter(
                x=temperatures, y=counts, mode="lines+markers", name=name, line=dict(color=PALETTE[k % len(PALETTE)])
            )
        )
    fig.update_xaxes(title_text="temperature")
    fig.update_yaxes(title_text="tokens that can be drawn", rangemode="tozero")
    fig.update_layout(legend=dict(orientation="h", y=-0.25))
    return _layout(fig, title, 400)


def per_position_figure(values: np.ndarray, tokens: list[str], title: str, y_title: str) -> go.Figure:
    fig = go.Figure(
        go.Bar(x=[f"{i}:{visible_token(t)}" for i, t in enumerate(tokens)], y=values, marker_color=PALETTE[3])
    )
    fig.update_xaxes(title_text="input position: token", tickangle=-60)
    fig.update_yaxes(title_text=y_title)
    return _layout(fig, title, 360)
