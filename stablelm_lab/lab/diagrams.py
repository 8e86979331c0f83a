"""Teaching diagrams: pure functions from numbers a notebook computed to plotly figures.

    file_layout_figure([("header", 0, 24), ("key/values", 24, 9100), ...], file_size)   # notebook 02
    bit_map_figure(quants.get("Q4_K"), raw_block)      # which bit serves which sub-block (03, 04)
    mix_grid_figure({"Q4_K_M": types}, roles, notes)   # layer x tensor grid of a mix (06)
    block_dataflow_figure(config)                      # one StableLM block, boxes named as llama.cpp (07)

Every figure is meant to be read from the back of a classroom: text of at least 12 px, axis titles.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..model.config import StableLMConfig
from ..quants import QuantFormat
from ..quants.anatomy import bit_map
from . import viz  # noqa: F401  (importing viz sets the renderer that stores a PNG beside each figure)

FONT = 14
GROUP_COLOURS = qualitative.Light24[:8] + qualitative.Pastel[:8]
SHARED_COLOUR = "#BBBBBB"
#: type names in order of bits per weight, so the colours of a mix grid run from few bits to many
TYPE_ORDER = [
    "Q2_K",
    "Q3_K",
    "IQ4_XS",
    "Q4_0",
    "IQ4_NL",
    "Q4_K",
    "Q4_1",
    "Q5_0",
    "Q5_K",
    "Q5_1",
    "Q6_K",
    "Q8_0",
    "F16",
    "BF16",
    "F32",
]
TYPE_COLOURS = [
    "#d73027",
    "#f46d43",
    "#fdae61",
    "#fee08b",
    "#e6f598",
    "#d9ef8b",
    "#a6d96a",
    "#66bd63",
    "#1a9850",
    "#35978f",
    "#4575b4",
    "#313695",
    "#762a83",
    "#9970ab",
    "#c2a5cf",
]


def _layout(fig: go.Figure, title: str, height: int, width: int | None = None) -> go.Figure:
    fig.update_layout(
        title=dict(text=title, x=0.01, font=dict(size=FONT + 4)),
        height=height,
        width=width,
        template="plotly_white",
        font=dict(size=FONT),
        margin=dict(l=70, r=20, t=80, b=50),
    )
    return fig


def _discrete(colours: list[str]) -> list:
    n = len(colours)
    scale = []
    for k, colour in enumerate(colours):
        scale += [[k / n, colour], [(k + 1) / n, colour]]
    return scale


def _legend_square(fig: go.Figure, name: str, colour: str, **where) -> None:
    fig.add_trace(
        go.Scatter(
            x=[None],
            y=[None],
            mode="markers",
            name=name,
            showlegend=True,
            marker=dict(size=14, symbol="square", color=colour),
        ),
        **where,
    )


# ---- 02: the file's sections ------------------------------------------------------------------------------
def file_layout_figure(sections: list[tuple[str, int, int]], file_size: int, title: str | None = None) -> go.Figure:
    """A GGUF file's sections: top, to scale (the data section dwarfs the rest); below, the same sections
    side by side with their byte ranges, not to scale, so the small ones can be read."""
    fig = make_subplots(
        rows=2,
        cols=1,
        vertical_spacing=0.3,
        row_heights=[0.4, 0.6],
        subplot_titles=("to scale", "not to scale: each section with its byte range"),
    )
    for k, (name, start, end) in enumerate(sections):
        colour = qualitative.Set2[k % len(qualitative.Set2)]
        share = (end - start) / file_size
        fig.add_trace(
            go.Bar(
                x=[end - start],
                y=["file"],
                base=[start],
                orientation="h",
                marker_color=colour,
                name=name,
                text=[name if share > 0.08 else ""],
                textposition="inside",
                insidetextanchor="middle",
                hovertemplate=f"{name}: bytes {start:,}–{end:,}<extra></extra>",
            ),
            row=1,
            col=1,
        )
        fig.add_trace(
            go.Bar(
                x=[1],
                y=["sections"],
                base=[k],
                orientation="h",
                marker_color=colour,
                showlegend=False,
                text=[f"{name}<br>{start:,}–{end:,}<br>{end - start:,} B"],
                textposition="inside",
                insidetextanchor="middle",
                textfont=dict(size=FONT - 1),
                hoverinfo="skip",
            ),
            row=2,
            col=1,
        )
    fig.update_layout(barmode="overlay", legend=dict(orientation="h", y=-0.12))
    fig.update_xaxes(title_text="byte offset in the file", range=[0, file_size], row=1, col=1)
    fig.update_xaxes(visible=False, range=[0, len(sections)], row=2, col=1)
    fig.update_yaxes(showticklabels=False, row=2, col=1)
    return _layout(fig, title or f"The file's {len(sections)} sections ({file_size:,} bytes)", 460)


# ---- 03, 04: which bit of a block serves which sub-block ---------------------------------------------------
_ROLE_TEXT = {"d": "d", "dmin": "dm", "m": "m", "scale": "s", "min": "m", "level": "q", "high": "h"}


def bit_map_figure(
    fmt: QuantFormat, raw_block: np.ndarray | None = None, title: str | None = None, bytes_per_row: int = 4
) -> go.Figure:
    """Every bit of one block, coloured by the sub-block it serves (grey: shared by the whole block).
    Text: d/dm (the block's scales), sN/mN (sub-block N's scale or min), q (a low bit of a weight's
    level), h (a high bit kept apart, in hmask or qh). Hover a bit for its byte, field, weight and value."""
    m = bit_map(fmt)
    raw = None if raw_block is None else np.asarray(raw_block, dtype=np.uint8).reshape(-1)
    owner = {}
    for name in fmt.block_dtype.names:
        dtype, offset = fmt.block_dtype.fields[name][:2]
        for b in range(offset, offset + dtype.itemsize):
            owner[b] = name
    n_rows = -(-fmt.type_size // bytes_per_row)
    shape = (n_rows, 8 * bytes_per_row)
    z, text, hover = (
        np.full(shape, None, dtype=object),
        np.full(shape, "", dtype=object),
        np.full(shape, "", dtype=object),
    )
    for byte in range(fmt.type_size):
        for bit in range(8):
            r, c = divmod(byte, bytes_per_row)
            col = 8 * c + (7 - bit)  # most significant bit first, as binary is written
            g, role, w = int(m.group[byte, bit]), m.role[byte, bit], int(m.weight[byte, bit])
            z[r, col] = g + 1  # 0: shared
            label = _ROLE_TEXT.get(role, "")
            text[r, col] = f"{label}{g}" if role in ("scale", "min") else label
            value = "" if raw is None else f"<br>value {(raw[byte] >> bit) & 1}"
            target = f"weight {w}" if w >= 0 else ("sub-block " + str(g) if g >= 0 else "whole block")
            hover[r, col] = f"byte {byte} ({owner[byte]}), bit {bit}<br>{role or 'unused'}: {target}{value}"
    n_groups = int(m.group.max()) + 1
    colours = [SHARED_COLOUR] + GROUP_COLOURS[:n_groups]
    fig = go.Figure(
        go.Heatmap(
            z=z.tolist(),
            text=text.tolist(),
            texttemplate="%{text}",
            textfont=dict(size=12),
            hovertext=hover.tolist(),
            hoverinfo="text",
            colorscale=_discrete(colours),
            zmin=-0.5,
            zmax=len(colours) - 0.5,
            showscale=False,
            xgap=1,
            ygap=3,
        )
    )
    unit = "sub-block" if fmt.block_size == 256 else "weights"
    _legend_square(fig, "whole block (d, dmin, m)", SHARED_COLOUR)
    for g in range(n_groups):
        lo, hi = g * m.group_size, (g + 1) * m.group_size - 1
        name = f"sub-block {g} (weights {lo}–{hi})" if unit == "sub-block" else f"weights {lo}–{hi}"
        _legend_square(fig, name, GROUP_COLOURS[g])
    ticks = []
    for r in range(n_rows):
        first, last = r * bytes_per_row, min(fmt.type_size, (r + 1) * bytes_per_row) - 1
        fields = sorted({owner[b] for b in range(first, last + 1)}, key=list(fmt.block_dtype.names).index)
        ticks.append(f"{first}–{last} {'/'.join(fields)}")
    fig.update_yaxes(
        autorange="reversed", tickvals=list(range(n_rows)), ticktext=ticks, title_text="bytes", tickfont=dict(size=12)
    )
    fig.update_xaxes(
        tickvals=[8 * c + 3.5 for c in range(bytes_per_row)],
        ticktext=[f"byte +{c}: bits 7…0" for c in range(bytes_per_row)],
        side="top",
    )
    fig.update_layout(legend=dict(font=dict(size=12)))
    return _layout(fig, title or f"{fmt.name}: which bit serves which sub-block", 140 + 22 * n_rows, 1150)


# ---- 05, 07: boxes and arrows --------------------------------------------------------------------------------
def flow_figure(
    boxes: dict[str, tuple[float, float, str]],
    arrows: list[tuple[str, str]],
    title: str,
    height: int = 600,
    width: int = 900,
    x_range: tuple[float, float] | None = None,
) -> go.Figure:
    """Boxes at (x, y) with text, and arrows between them by box name: a data flow on one page."""
    xs = [x for x, _, _ in boxes.values()]
    ys = [y for _, y, _ in boxes.values()]
    x_range = x_range or (min(xs) - 0.8, max(xs) + 0.8)
    y_range = (min(ys) - 0.6, max(ys) + 0.6)
    px_x = (width - 90) / (x_range[1] - x_range[0])  # pixels per data unit (margins l + r = 90)
    px_y = (height - 130) / (y_range[1] - y_range[0])  # (margins t + b = 130)

    def edge(name: str, dx: float, dy: float) -> float:
        """Pixels from a box's centre to its border along (dx, dy) (in pixels), with a little air."""
        lines = boxes[name][2].split("<br>")
        half_w = 0.48 * FONT * max(len(line) for line in lines) / 2 + 8
        half_h = 0.6 * FONT * len(lines) + 6
        return min(half_w / abs(dx) if dx else np.inf, half_h / abs(dy) if dy else np.inf) * np.hypot(dx, dy)

    fig = go.Figure()
    for a, b in arrows:  # first, so that the boxes are drawn over them
        (xa, ya, _), (xb, yb, _) = boxes[a], boxes[b]
        dx, dy = (xb - xa) * px_x, (yb - ya) * px_y
        fig.add_annotation(
            x=xb,
            y=yb,
            ax=xa,
            ay=ya,
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            text="",
            showarrow=True,
            arrowhead=3,
            arrowsize=1.4,
            arrowwidth=2,
            arrowcolor="#555555",
            standoff=edge(b, dx, dy),
            startstandoff=edge(a, dx, dy),
        )
    for x, y, label in boxes.values():
        fig.add_annotation(
            x=x,
            y=y,
            text=label,
            showarrow=False,
            font=dict(size=FONT),
            align="center",
            bgcolor="#EEF3FA",
            bordercolor="#4C78A8",
            borderwidth=2,
            borderpad=6,
        )
    fig.update_xaxes(visible=False, range=list(x_range))
    fig.update_yaxes(visible=False, range=list(y_range))
    fig.update_layout(margin=dict(l=70, r=20, t=80, b=50))
    return _layout(fig, title, height, width)


def block_dataflow_figure(config: StableLMConfig) -> go.Figure:
    """One StableLM block, top to bottom, each box named by the activation llama.cpp's graph gives it
    (src/models/stablelm.cpp and build_attn/build_ffn in llama-graph.cpp; run_with_cache records all but
    ffn_gate, ffn_up and ffn_swiglu as blk.N.<name>). The residual stream runs down the right: sequential
    when the file has ffn_norm, parallel otherwise."""
    c = config
    rot = f"rope on {c.n_rot} of {c.head_dim} dims"
    boxes = {
        "inp": (3, 10, f"residual stream x<br>(T, {c.n_embd})"),
        "attn_norm": (1, 9, "attn_norm<br>LayerNorm with bias"),
        "Qcur": (0, 8, f"Qcur = attn_q · h<br>{rot}"),
        "Kcur": (1, 8, f"Kcur = attn_k · h<br>{rot}"),
        "Vcur": (2, 8, "Vcur = attn_v · h"),
        "kq": (0.5, 7, f"kq<br>q·k / √{c.head_dim}, causal mask"),
        "kq_soft_max": (0.5, 6, "kq_soft_max<br>softmax over keys"),
        "kqv_out": (1.5, 5, "kqv_out<br>Σ probabilities · V, heads joined"),
        "attn_out": (1.5, 4, "attn_out = attn_output · kqv_out"),
        "ffn_inp": (3, 3, "ffn_inp<br>x + attn_out"),
        "ffn_norm": (1, 2.5, "ffn_norm<br>LayerNorm with bias"),
        "ffn_gate": (0.3, 1.5, f"ffn_gate<br>(T, {c.n_ff})"),
        "ffn_up": (1.7, 1.5, f"ffn_up<br>(T, {c.n_ff})"),
        "ffn_swiglu": (1, 0.5, "ffn_swiglu<br>silu(gate) · up"),
        "ffn_out": (1, -0.5, "ffn_out = ffn_down · swiglu"),
        "l_out": (3, -1.5, "l_out<br>ffn_inp + ffn_out"),
    }
    arrows = [
        ("inp", "attn_norm"),
        ("attn_norm", "Qcur"),
        ("attn_norm", "Kcur"),
        ("attn_norm", "Vcur"),
        ("Qcur", "kq"),
        ("Kcur", "kq"),
        ("kq", "kq_soft_max"),
        ("kq_soft_max", "kqv_out"),
        ("Vcur", "kqv_out"),
        ("kqv_out", "attn_out"),
        ("attn_out", "ffn_inp"),
        ("inp", "ffn_inp"),
        ("ffn_gate", "ffn_swiglu"),
        ("ffn_up", "ffn_swiglu"),
        ("ffn_swiglu", "ffn_out"),
        ("ffn_out", "l_out"),
        ("ffn_inp", "l_out"),
    ]
    if c.parallel_residual:  # no ffn_norm: the MLP reads attn_norm's output
        del boxes["ffn_norm"]
        arrows += [("attn_norm", "ffn_gate"), ("attn_norm", "ffn_up")]
        kind = "parallel residual (no ffn_norm: the MLP reads attn_norm)"
    else:
        arrows += [("ffn_inp", "ffn_norm"), ("ffn_norm", "ffn_gate"), ("ffn_norm", "ffn_up")]
        kind = "sequential residual"
    return flow_figure(
        boxes,
        arrows,
        f"One StableLM block, {kind}: boxes carry llama.cpp's activation names",
        height=1000,
        width=1100,
        x_range=(-0.9, 3.9),
    )


# ---- 06: a mix as a layer x tensor grid ----------------------------------------------------------------------
def mix_grid_figure(
    grids: dict[str, list[list[str]]],
    roles: list[str],
    notes: dict[str, str] | None = None,
    title: str = "Which type each matrix gets, layer by layer",
) -> go.Figure:
    """One grid per mix: rows are the tensor roles of a block, columns the layers, colour the ggml type
    (few bits red, many blue). ``grids[mix][r][l]`` is the type name of role r in layer l; ``notes[mix]``
    a line under the mix's name (its size and bits per weight, the types of output and token_embd)."""
    notes = notes or {}
    names = list(grids)
    fig = make_subplots(
        rows=len(names),
        cols=1,
        vertical_spacing=0.35 / len(names),
        subplot_titles=[f"<b>{m}</b>  {notes.get(m, '')}" for m in names],
    )
    used = sorted({t for g in grids.values() for row in g for t in row}, key=TYPE_ORDER.index)
    for k, mix in enumerate(names):
        types = grids[mix]
        z = [[TYPE_ORDER.index(t) for t in row] for row in types]
        hover = [
            [f"{mix}<br>blk.{layer}.{role}: {t}" for layer, t in enumerate(row)] for role, row in zip(roles, types)
        ]
        fig.add_trace(
            go.Heatmap(
                z=z,
                y=roles,
                hovertext=hover,
                hoverinfo="text",
                showscale=False,
                xgap=1,
                ygap=1,
                colorscale=_discrete(TYPE_COLOURS),
                zmin=-0.5,
                zmax=len(TYPE_ORDER) - 0.5,
            ),
            row=k + 1,
            col=1,
        )
        fig.update_yaxes(autorange="reversed", tickfont=dict(size=12), row=k + 1, col=1)
        fig.update_xaxes(showticklabels=k == len(names) - 1, dtick=4, row=k + 1, col=1)
    fig.update_xaxes(title_text="layer", row=len(names), col=1)
    for t in used:
        _legend_square(fig, t, TYPE_COLOURS[TYPE_ORDER.index(t)])
    fig.update_annotations(font=dict(size=FONT))
    _layout(fig, title, 140 + 190 * len(names), 1150)
    fig.update_layout(legend=dict(x=1.01, y=1, yanchor="top", title_text="type"), margin=dict(r=120))
    return fig


# ---- 06: concepts ----------------------------------------------------------------------------------------------
def codebook_figure(
    codebooks: dict[str, np.ndarray], title: str = "The values a 4-bit (or ternary) code can take"
) -> go.Figure:
    """Each format's grid of representable values, scaled to [-1, 1] by its largest magnitude: uniform
    (Q4_0), denser near zero (IQ4_NL), floating point (MXFP4's e2m1), ternary (TQ1_0/TQ2_0)."""
    fig = go.Figure()
    for k, (name, values) in enumerate(codebooks.items()):
        v = np.asarray(values, dtype=np.float64)
        v = np.round(v / np.abs(v).max(), 4)
        fig.add_trace(
            go.Scatter(
                x=v,
                y=[name] * len(v),
                mode="markers",
                name=name,
                showlegend=False,
                marker=dict(size=16, symbol="line-ns-open", line=dict(width=3), color=qualitative.D3[k % 10]),
                hovertemplate="%{x}<extra>" + name + "</extra>",
            )
        )
    fig.update_xaxes(title_text="value / largest magnitude", range=[-1.1, 1.1], zeroline=True)
    fig.update_yaxes(title_text="format", autorange="reversed")
    return _layout(fig, title, 120 + 70 * len(codebooks))


def steps_figure(labels: list[str], snr_db: list[float], bits_per_weight: list[float], title: str) -> go.Figure:
    """One bar per step of an argument (e.g. Q4_0 -> + a min -> + quantized sub-block scales -> + search):
    its SNR in dB, with its bits per weight written on the bar."""
    snr = [round(float(s), 2) for s in snr_db]
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=snr,
            marker_color=qualitative.D3[: len(labels)],
            text=[f"{s:.2f} dB<br>{b:.2f} bits/w" for s, b in zip(snr, bits_per_weight)],
            textposition="outside",
            textfont=dict(size=FONT),
            cliponaxis=False,
        )
    )
    fig.update_yaxes(title_text="SNR (dB), higher is better", range=[min(snr) - 3, max(snr) + 2])
    fig.update_xaxes(title_text="quantizer", tickfont=dict(size=12))
    return _layout(fig, title, 520)


def bit_budget_figure(budgets: dict[str, dict[str, float]], title: str) -> go.Figure:
    """Where a file's bits per weight go: one stacked bar per model, one segment per tensor group, each
    segment 8·(its bytes) / (all weights of the model), so the segments add up to the file's bits per weight."""
    fig = go.Figure()
    groups = list(dict.fromkeys(g for b in budgets.values() for g in b))
    for k, group in enumerate(groups):
        values = [round(float(b.get(group, 0.0)), 3) for b in budgets.values()]
        fig.add_trace(
            go.Bar(
                y=list(budgets),
                x=values,
                name=group,
                orientation="h",
                marker_color=qualitative.Set2[k % len(qualitative.Set2)],
                text=[f"{v:.2f}" if v >= 0.15 else "" for v in values],
                textposition="inside",
                textangle=0,
                insidetextanchor="middle",
                hovertemplate=group + ": %{x:.3f} bits/w<extra></extra>",
            )
        )
    totals = [round(float(sum(b.values())), 3) for b in budgets.values()]
    for name, total in zip(budgets, totals):
        fig.add_annotation(
            x=total, y=name, text=f" {total:.2f} bits/w", showarrow=False, xanchor="left", font=dict(size=FONT)
        )
    fig.update_layout(barmode="stack", legend=dict(orientation="h", y=-0.25, yanchor="top"))
    fig.update_xaxes(title_text="bits per weight (share of the whole file)", range=[0, max(totals) * 1.2])
    fig.update_yaxes(title_text="model", autorange="reversed")
    _layout(fig, title, 280 + 80 * len(budgets))
    fig.update_layout(margin=dict(b=120))
    return fig
