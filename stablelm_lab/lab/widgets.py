"""Widgets: controls wired to the figures of ``viz``, for exploring instead of reading.

Each explorer is a ``FigureExplorer``: its controls redraw one plotly FigureWidget in place (one batched
message per step, no new figure, no flicker), and ``update()`` runs the same redraw the controls do, so a
notebook (and a test) can drive it without a browser. Stored in a notebook without widget state (as this
project stores them), it still shows its figure: its display carries a PNG of the figure as last drawn.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch
from tokenizers import Tokenizer

from .. import quants
from ..analysis import metrics
from ..analysis.tensor_stats import nonfinite_blocks
from ..container.gguf_file import GGUFFile
from ..text.sampling import card_probs, llama_cpp_probs
from . import viz

#: the quant-error explorer quantizes at most this many weights per step (whole rows, evenly spaced), so a
#: step stays quick: the reference quantizers take seconds over a whole 3B tensor (docs/benchmarks.md)
MAX_WEIGHTS = 1 << 17
#: formats whose quantizer is slower still: a smaller sample
SLOW_QUANTIZERS = {"IQ4_NL": 4, "IQ4_XS": 4}
#: and draws at most this many blocks in its scatter (the browser, not the kernel, is slow past that)
MAX_BLOCKS_DRAWN = 4000


def redraw(widget: go.FigureWidget, fig: go.Figure) -> None:
    """Turn ``widget`` into ``fig`` in place, in one batch of messages: traces of the same kinds keep their
    place and get the new properties; when the kinds differ (another format's fields) they are replaced."""
    with widget.batch_update():
        if [t.type for t in widget.data] == [t.type for t in fig.data]:
            for old, new in zip(widget.data, fig.data):
                props = new.to_plotly_json()
                props.pop("type", None), props.pop("uid", None)
                old.update(props, overwrite=True)
        else:
            widget.data = ()
            widget.add_traces(list(fig.data))
        layout = fig.layout.to_plotly_json()
        if widget.layout.template.layout.paper_bgcolor is not None:  # every viz figure has one template:
            layout.pop("template", None)  # validating it again is a large share of a step (docs/benchmarks.md)
        widget.layout.update(layout, overwrite=True)


class FigureExplorer(W.VBox):
    """Controls (top), HTML notes, and one FigureWidget that ``draw()`` redraws whenever a control moves.

    ``draw`` returns the figure for the controls' current values (a pure ``viz`` function, typically) and
    may write the notes. ``name`` is what a reader without a kernel is told this is."""

    def __init__(
        self,
        controls: list[W.ValueWidget],
        draw: Callable[[], go.Figure],
        notes: list[W.Widget] | None = None,
        name: str = "explorer",
    ):
        self.controls, self.notes, self.name, self._draw = list(controls), list(notes or []), name, draw
        self.figure = go.FigureWidget()
        self._held = False
        super().__init__([W.HBox(self.controls), *self.notes, self.figure])
        for control in self.controls:
            control.observe(self.update, names="value")
        self.update()

    def update(self, *_: object) -> None:
        if not self._held:
            redraw(self.figure, self._draw())

    @contextmanager
    def holding(self) -> Iterator[None]:
        """Change several controls (a range, then a value) and redraw once, after."""
        self._held = True
        try:
            yield
        finally:
            self._held = False
        self.update()

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs)
        png = viz.picture(self.figure)  # what the figure shows now: the stored view of this control
        if png is not None:
            bundle["image/png"] = base64.b64encode(png).decode("ascii")
        bundle["text/plain"] = f"[{self.name}: its controls answer when the notebook runs in Jupyter]"
        return bundle

    def replace_control(self, index: int, control: W.ValueWidget) -> None:
        """Put a new control in place of ``controls[index]`` (its observer moves with it)."""
        self.controls[index].unobserve(self.update, names="value")
        self.controls[index] = control
        control.observe(self.update, names="value")
        self.children[0].children = tuple(self.controls)


def range_slider(description: str, high: int, value: int = 0) -> W.IntSlider:
    """An integer slider over 0..high, hidden where that range holds a single value. Made anew whenever its
    range changes: the browser's slider (noUiSlider) answers the End key with the maximum it had when first
    drawn, so a slider whose maximum grows afterwards stops short of it (255 of a 768-row tensor)."""
    slider = W.IntSlider(
        value=min(max(value, 0), high), min=0, max=max(high, 0), description=description, continuous_update=False
    )
    slider.layout.display = None if high > 0 else "none"
    return slider


def block_explorer(gguf: GGUFFile, tensor: str | None = None, row: int = 0, block: int = 0) -> FigureExplorer:
    """Pick a tensor, a row and a block: see the block's bytes, its fields and the weights they decode to.

    ``gguf`` is a GGUFFile (anything with ``tensors`` and ``raw(name)``); float tensors are left out. The
    row and block sliders span the chosen tensor (made anew when it changes); the block slider hides where
    each row is a single block (a K-quant row of 256 weights)."""
    names = [t.name for t in gguf.tensors if quants.get(t.qtype).block_size > 1 and len(t.shape) == 2]
    if not names:
        raise ValueError("this file has no quantized matrices to explore")
    tensor_box = W.Dropdown(
        options=names, value=tensor or names[0], description="tensor", layout=W.Layout(width="420px")
    )
    heading, table = W.HTML(), W.HTML()

    def info_of():
        return next(t for t in gguf.tensors if t.name == tensor_box.value)

    def sliders(row: int, block: int) -> list[W.IntSlider]:
        info = info_of()
        return [
            range_slider("row", info.shape[0] - 1, row),
            range_slider("block", info.shape[1] // quants.get(info.qtype).block_size - 1, block),
        ]

    def draw():
        info = info_of()
        fmt = quants.get(info.qtype)
        row_box, block_box = live
        rows = gguf.raw(info.name).reshape(info.shape[0], -1)
        raw_block = np.asarray(rows[row_box.value].reshape(-1, fmt.type_size)[block_box.value])
        n_blocks = block_box.max + 1
        heading.value = (
            f"<b>{info.name}</b>: {fmt.name}, {fmt.block_size} weights in {fmt.type_size} bytes "
            f"({fmt.bits_per_weight:g} bits per weight); row {row_box.value} of {info.shape[0]}, "
            f"block {block_box.value} = weights {block_box.value * fmt.block_size}…"
            f"{(block_box.value + 1) * fmt.block_size - 1}"
            + (" (each row is this one block)" if n_blocks == 1 else f" ({n_blocks} per row)")
        )
        table.value = viz.fields_table(fmt, raw_block)
        return viz.block_figure(fmt, raw_block, f"{info.name}, row {row_box.value}, block {block_box.value}")

    def tensor_changed(_):
        with box.holding():
            live[:] = sliders(live[0].value, live[1].value)
            for i, slider in enumerate(live, start=1):
                box.replace_control(i, slider)

    live = sliders(row, block)
    box = FigureExplorer([tensor_box, *live], draw, [heading, table], "block explorer")
    tensor_box.unobserve(box.update, names="value")
    tensor_box.observe(tensor_changed, names="value")
    return box


def attention_viewer(acts: dict, tokens: list[str], n_layer: int, n_head: int) -> FigureExplorer:
    """Layer and head sliders over the attention probabilities recorded by ``run_with_cache``."""
    layer_box = W.IntSlider(value=0, min=0, max=n_layer - 1, description="layer", continuous_update=False)
    head_box = W.IntSlider(value=0, min=0, max=n_head - 1, description="head", continuous_update=False)
    for box in (layer_box, head_box):
        box.layout.display = None if box.max > 0 else "none"

    def draw():
        probs = acts[f"blk.{layer_box.value}.kq_soft_max"][0, head_box.value].float().numpy()
        return viz.attention_figure(probs, tokens, f"Layer {layer_box.value}, head {head_box.value}")

    return FigureExplorer([layer_box, head_box], draw, name="attention viewer")


def sample_rows(n_rows: int, n_cols: int, max_weights: int | None = None) -> np.ndarray:
    """Row indices to quantize: all of them if the tensor is small enough, else evenly spaced whole rows
    (first and last included) holding at most ``max_weights`` weights."""
    keep = max(1, min(n_rows, (max_weights or MAX_WEIGHTS) // max(n_cols, 1)))
    return np.unique(np.linspace(0, n_rows - 1, keep).round().astype(np.int64))


def _block_scale(fmt: quants.QuantFormat, raw: np.ndarray) -> tuple[np.ndarray | None, str]:
    """Each block's scale and its name: d where the format stores one, 2^(e − 127) for MXFP4's exponent."""
    blocks = raw.reshape(-1, fmt.type_size).view(fmt.block_dtype)[:, 0]
    names = fmt.block_dtype.names
    if "d" in names:
        return np.abs(blocks["d"].astype(np.float32)), "block scale d"
    if "e" in names:  # mxfp4.py: "the block's scale is 2^(e - 127)"
        return np.ldexp(np.float32(1), blocks["e"].astype(np.int32) - 127), "block scale 2^(e − 127)"
    return None, "block scale"


def quant_error_explorer(gguf: GGUFFile, tensor: str | None = None, type_name: str = "Q4_K") -> FigureExplorer:
    """Pick a tensor of a (preferably unquantized) file and a format: the error that format adds to it.

    The tensor is decoded to float32, quantized with the package's reference quantizer, decoded again and
    compared: a summary line (RMSE, SNR, max error, blocks that decode to inf/NaN), the error histogram on
    an x range fixed per tensor (so formats compare by eye) and each block's error against its scale. A
    large tensor is sampled (whole rows, evenly spaced: ``MAX_WEIGHTS``) and the figure says so; results
    are cached, so going back to a format is instant.
    """
    names = [t.name for t in gguf.tensors if len(t.shape) == 2]
    formats = [f.name for f in quants.FORMATS.values() if f.block_size > 1 and f.can_quantize]
    tensor_box = W.Dropdown(
        options=names, value=tensor or names[0], description="tensor", layout=W.Layout(width="420px")
    )
    type_box = W.Dropdown(options=formats, value=type_name, description="format")
    summary = W.HTML()
    originals, results = {}, {}

    def original(name):
        if name not in originals:
            info = next(t for t in gguf.tensors if t.name == name)
            rows = sample_rows(*info.shape)
            raw = np.asarray(gguf.raw(name)[rows])
            originals.clear()  # one tensor at a time
            originals[name] = (quants.get(info.qtype).dequantize(raw).reshape(len(rows), -1), rows, info.shape)
        return originals[name]

    def quantized(name, fmt, w):
        if (name, fmt.name) not in results:
            if len(results) >= 8:
                results.pop(next(iter(results)))
            raw = fmt.quantize(w)
            results[name, fmt.name] = raw, fmt.dequantize(raw)
        return results[name, fmt.name]

    def draw():
        fmt, name = quants.get(type_box.value), tensor_box.value
        sample, rows, shape = original(name)
        if sample.shape[-1] % fmt.block_size:
            summary.value = (
                f"<b>{name}</b> rows have {sample.shape[-1]} weights: not a multiple of {fmt.name}'s "
                f"{fmt.block_size}, so llama.cpp would not use {fmt.name} here."
            )
            return go.Figure(layout=dict(title=f"{name}: {fmt.name} does not fit these rows", height=120))
        keep = sample_rows(len(rows), sample.shape[-1], MAX_WEIGHTS // SLOW_QUANTIZERS.get(fmt.name, 1))
        w, n_rows = sample[keep], len(keep)
        raw, decoded = quantized(name, fmt, w)
        bad = nonfinite_blocks(raw, fmt.qtype)
        err = metrics.tensor_error(w, decoded)
        sampled = n_rows < shape[0]
        note = f"{n_rows} of {shape[0]} rows, evenly spaced" if sampled else ""
        summary.value = (
            f"<b>{name}</b> in <b>{fmt.name}</b> ({fmt.bits_per_weight:g} bits/weight): {err}"
            + (f" (on {note})" if sampled else "")
            + (f"; <b>{len(bad)} blocks decode to inf/NaN</b>" if len(bad) else "")
        )
        scale, scale_name = _block_scale(fmt, raw)
        diff = (decoded - w).reshape(-1, fmt.block_size).astype(np.float64)
        block_rmse = np.sqrt(np.mean(diff**2, axis=1))
        if len(block_rmse) > MAX_BLOCKS_DRAWN:
            pick = np.linspace(0, len(block_rmse) - 1, MAX_BLOCKS_DRAWN).astype(np.int64)
            block_rmse, scale = block_rmse[pick], None if scale is None else scale[pick]
            note += ("; " if note else "") + f"{MAX_BLOCKS_DRAWN} blocks drawn of {len(diff)}"
        return viz.quant_error_figure(
            w, decoded, scale, block_rmse, f"{name} as {fmt.name}", viz.error_limit(sample), scale_name, note
        )

    return FigureExplorer([tensor_box, type_box], draw, [summary], "quantization-error explorer")


def next_token_explorer(
    logits: torch.Tensor | np.ndarray,
    tokenizer: Tokenizer,
    top: int = 30,
    temperature: float = 0.75,
    top_k: int = 50,
    top_p: float = 0.95,
    min_p: float = 0.0,
) -> FigureExplorer:
    """Sampling settings over one row of next-token logits (n_vocab,), in both programs' orders side by side.

    Left, transformers' order (the model card's ``generate``; this package's ``generate`` too): temperature,
    top-k, top-p. Right, llama.cpp's default chain: top-k, top-p, min-p on the untempered logits, then
    temperature. The defaults are the card's settings (min_p 0, so that only the order differs). The
    ``top`` most likely tokens are shown, in a fixed order; ``box.settings()`` gives the sliders' values
    as ``generate`` keywords.
    """
    logits = torch.as_tensor(logits).float()
    order = logits.argsort(descending=True)[:top]
    tokens = [tokenizer.decode([int(i)]) for i in order]
    wide = {"style": {"description_width": "initial"}, "layout": W.Layout(width="320px"), "continuous_update": False}
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
        summary.value = " &nbsp; ".join(
            f"<b>{name.split('<br>')[0]}</b> keeps {_count(int((q > 0).sum()), 'token')}"
            f" (the most likely drawn with p = {float(q.max()):.3f})"
            for name, q in zip(names, (card, llama))
        )
        return {names[0]: (card[order].numpy(), tempered), names[1]: (llama[order].numpy(), tempered)}

    def title() -> str:
        return (
            f"The {top} most likely next tokens at temperature {t_box.value:.2f}, top_k {k_box.value}, "
            f"top_p {p_box.value:.2f}, min_p {m_box.value:.2f}"
        )

    explorer = FigureExplorer(
        [t_box, k_box, p_box, m_box],
        lambda: viz.sampling_orders_figure(tokens, panels(), title()),
        [summary],
        "next-token explorer",
    )
    explorer.children[0].layout = W.Layout(flex_flow="row wrap")
    explorer.settings = lambda: {"temperature": t_box.value, "top_k": k_box.value or None, "top_p": p_box.value}
    return explorer


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
