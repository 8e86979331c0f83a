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


def _wired(box: W.Box, update, *controls) -> W.Box:
    """Run ``update`` now and whenever a control changes; keep it as ``box.update`` for notebooks and tests."""
    for control in controls:
        control.observe(update, names="value")
    update()
    box.update = update
    return box


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

    return _wired(box, update, tensor_box, row_box, block_box)


def next_token_explorer(logits, tokenizer, top: int = 30, temperature: float = 0.75, top_k: int = 50,
                        top_p: float = 0.95, min_p: float = 0.0) -> W.VBox:
    """Sampling settings over one row of next-token logits (n_vocab,), in both programs' orders side by side.

    Left, transformers' order (the model card's ``generate``; this package's ``generate`` too): temperature,
    top-k, top-p. Right, llama.cpp's default chain: top-k, top-p, min-p on the untempered logits, then
    temperature. The defaults are the card's settings (min_p 0, so that only the order differs). The
    ``top`` most likely tokens are shown, in a fixed order; ``box.settings()`` gives the sliders' values
    as ``generate`` keywords.
    """
    import torch

    from .sampling import card_probs, llama_cpp_probs

    logits = torch.as_tensor(logits).float()
    order = logits.argsort(descending=True)[:top]
    tokens = [tokenizer.decode([int(i)]) for i in order]
    wide = {"style": {"description_width": "initial"}, "layout": W.Layout(width="320px"),
            "continuous_update": False}
    t_box = W.FloatSlider(value=temperature, min=0.05, max=2.0, step=0.05, description="temperature", **wide)
    k_box = W.IntSlider(value=top_k, min=0, max=100, description="top_k (0: off)", **wide)
    p_box = W.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top_p", **wide)
    m_box = W.FloatSlider(value=min_p, min=0.0, max=0.5, step=0.01, description="min_p (llama.cpp)", **wide)
    summary = W.HTML()
    names = ["transformers (the card)<br>temperature, top-k, top-p", "llama.cpp<br>top-k, top-p, min-p, temperature"]

    def panels() -> dict[str, tuple]:
        tempered = torch.softmax(logits / t_box.value, -1)[order].numpy()
        card = card_probs(logits, t_box.value, k_box.value or None, p_box.value)
        llama = llama_cpp_probs(logits, k_box.value, p_box.value, m_box.value, t_box.value)
        summary.value = " &nbsp; ".join(f"<b>{name.split('<br>')[0]}</b> keeps {_count(int((q > 0).sum()), 'token')}"
                                        f" (the most likely drawn with p = {float(q.max()):.3f})"
                                        for name, q in zip(names, (card, llama)))
        return {names[0]: (card[order].numpy(), tempered), names[1]: (llama[order].numpy(), tempered)}

    def title() -> str:
        return (f"The {top} most likely next tokens at temperature {t_box.value:.2f}, top_k {k_box.value}, "
                f"top_p {p_box.value:.2f}, min_p {m_box.value:.2f}")

    figure = go.FigureWidget(viz.sampling_orders_figure(tokens, panels(), title()))
    box = W.VBox([W.HBox([t_box, k_box, p_box, m_box], layout=W.Layout(flex_flow="row wrap")), summary, figure])

    def update(*_):
        with figure.batch_update():
            for k, (trace, (drawn, tempered)) in enumerate(zip(figure.data, panels().values())):
                bars = viz.sampling_bars(drawn, tempered, viz.PALETTE[k])
                trace.y, trace.marker.color, trace.customdata = bars["y"], bars["marker"]["color"], bars["customdata"]
            figure.layout.title.text = title()

    box.settings = lambda: {"temperature": t_box.value, "top_k": k_box.value or None, "top_p": p_box.value}
    return _wired(box, update, t_box, k_box, p_box, m_box)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def attention_viewer(acts: dict, tokens: list[str], n_layer: int, n_head: int) -> W.VBox:
    """Layer and head sliders over the attention probabilities recorded by ``run_with_cache``."""
    layer_box = W.IntSlider(value=0, min=0, max=n_layer - 1, description="layer", continuous_update=False)
    head_box = W.IntSlider(value=0, min=0, max=n_head - 1, description="head", continuous_update=False)
    box = W.VBox([W.HBox([layer_box, head_box])])

    def update(*_):
        probs = acts[f"blk.{layer_box.value}.kq_soft_max"][0, head_box.value].float().numpy()
        fig = viz.attention_figure(probs, tokens, f"Layer {layer_box.value}, head {head_box.value}")
        box.children = box.children[:1] + (_figure_widget(fig),)

    return _wired(box, update, layer_box, head_box)


def quant_error_explorer(gguf, tensor: str | None = None, type_name: str = "Q4_K") -> W.VBox:
    """Pick a tensor of a (preferably unquantized) file and a format: the error that format adds to it.

    The tensor is decoded to float32, quantized with the package's reference quantizer, decoded again and
    compared: a summary line (RMSE, SNR, max error, blocks that decode to inf/NaN), the error histogram and
    each block's error against its scale.
    """
    from . import metrics
    from .tensor_stats import nonfinite_blocks

    names = [t.name for t in gguf.tensors if len(t.shape) == 2]
    formats = [f.name for f in quants.FORMATS.values() if f.block_size > 1 and f.can_quantize]
    tensor_box = W.Dropdown(options=names, value=tensor or names[0], description="tensor",
                            layout=W.Layout(width="420px"))
    type_box = W.Dropdown(options=formats, value=type_name, description="format")
    summary = W.HTML()
    box = W.VBox([W.HBox([tensor_box, type_box]), summary])

    def update(*_):
        fmt = quants.get(type_box.value)
        original = gguf.dequantize(tensor_box.value)
        if original.shape[-1] % fmt.block_size:
            summary.value = (f"<b>{tensor_box.value}</b> rows have {original.shape[-1]} weights: not a multiple "
                             f"of {fmt.name}'s {fmt.block_size}, so llama.cpp would not use {fmt.name} here.")
            box.children = box.children[:2]
            return
        raw = fmt.quantize(original)
        decoded = fmt.dequantize(raw)
        bad = nonfinite_blocks(raw, fmt.qtype)
        err = metrics.tensor_error(original, decoded)
        summary.value = (f"<b>{tensor_box.value}</b> in <b>{fmt.name}</b> ({fmt.bits_per_weight:g} bits/weight): "
                         f"{err}" + (f"; <b>{len(bad)} blocks decode to inf/NaN</b>" if len(bad) else ""))
        figures = [viz.error_histogram(original, decoded, f"{tensor_box.value} as {fmt.name}")]
        if "d" in fmt.block_dtype.names:
            blocks = raw.reshape(-1, fmt.type_size).view(fmt.block_dtype)[:, 0]
            diff = (decoded - original).reshape(-1, fmt.block_size).astype(np.float64)
            block_rmse = np.sqrt(np.mean(diff ** 2, axis=1))
            figures.append(viz.block_error_figure(np.abs(blocks["d"].astype(np.float32)), block_rmse,
                                                  f"{tensor_box.value} as {fmt.name}"))
        box.children = box.children[:2] + tuple(_figure_widget(f) for f in figures)

    return _wired(box, update, tensor_box, type_box)
