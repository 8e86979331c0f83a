"""Widgets: controls wired to the figures of ``viz``, for exploring instead of reading.

Each function returns an ipywidgets box; its ``update`` attribute runs the same callback the controls do,
so a notebook (and a test) can drive it without a browser.
"""

from __future__ import annotations

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from . import quants, viz


def _figure_widget(fig: go.Figure) -> go.FigureWidget:
    return go.FigureWidget(fig)


def block_explorer(gguf, tensor: str | None = None, row: int = 0, block: int = 0) -> W.VBox:
    """Pick a tensor, a row and a block: see the block's bytes, its fields and the weights they decode to.

    ``gguf`` is a GGUFFile (anything with ``tensors`` and ``raw(name)``); float tensors are left out.
    """
    names = [t.name for t in gguf.tensors if quants.get(t.qtype).block_size > 1 and len(t.shape) == 2]
    if not names:
        raise ValueError("this file has no quantized matrices to explore")
    tensor_box = W.Dropdown(options=names, value=tensor or names[0], description="tensor",
                            layout=W.Layout(width="420px"))
    row_box = W.IntSlider(value=row, min=0, max=0, description="row", continuous_update=False)
    block_box = W.IntSlider(value=block, min=0, max=0, description="block", continuous_update=False)
    heading, table = W.HTML(), W.HTML()
    box = W.VBox([W.HBox([tensor_box, row_box, block_box]), heading, table])

    def update(*_):
        info = next(t for t in gguf.tensors if t.name == tensor_box.value)
        fmt = quants.get(info.qtype)
        rows = gguf.raw(info.name).reshape(info.shape[0], -1)
        row_box.max, block_box.max = rows.shape[0] - 1, rows.shape[1] // fmt.type_size - 1
        raw_block = np.asarray(rows[row_box.value].reshape(-1, fmt.type_size)[block_box.value])
        heading.value = (f"<b>{info.name}</b>: {fmt.name}, {fmt.block_size} weights in {fmt.type_size} bytes "
                         f"({fmt.bits_per_weight:g} bits per weight); row {row_box.value}, "
                         f"block {block_box.value} = weights {block_box.value * fmt.block_size}…"
                         f"{(block_box.value + 1) * fmt.block_size - 1}")
        table.value = viz.fields_table(fmt, raw_block)
        title = f"{info.name}, row {row_box.value}, block {block_box.value}"
        box.children = box.children[:3] + (_figure_widget(viz.block_figure(fmt, raw_block, title)),)

    for control in (tensor_box, row_box, block_box):
        control.observe(update, names="value")
    update()
    box.update = update
    return box
