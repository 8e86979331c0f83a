"""How long one step of every control takes, measured in the kernel's process: the callback a control change
runs, including the FigureWidget's update message. On the embedded default and on a 3B-shaped file.

    .venv/bin/python tools/make_3b_gguf.py --out /tmp/3b --mixes Q4_K_M --layers 2 --random-blocks
    .venv/bin/python tools/bench_widgets.py --big /tmp/3b/stablelm-3b-shaped-2L-random-blocks.Q4_K_M.gguf

Per control: the median of ``--steps`` steps to new values (the quant-error explorer's caches miss on each,
so its median is an uncached step). Baseline, measured in the same run: the same step the way the widgets
worked before (the figure computed, then a new FigureWidget built for it). Targets: 250 ms a step on the
embedded default, 1 s on the 3B file. The attention viewer's step does not depend on the file, only on the
recorded probabilities: on the 3B row it reads probabilities of the 3B's shape (32 layers x 32 heads x 64
tokens), random, since a 3B forward pass is not what is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
import torch

from stablelm_lab import GGUFFile, StableLM, StableLMConfig, default_gguf, embedded_gguf, load_tokenizer
from stablelm_lab.lab import widgets


def step_values(control, steps: int) -> list:
    """``steps`` values the control has not shown yet, spread over its range."""
    if isinstance(control, W.Dropdown):
        options = [o for o in control.options if o != control.value]
        return [options[i % len(options)] for i in np.linspace(0, len(options) - 1, steps).astype(int)]
    lo, hi = control.min, control.max
    values = [type(control.value)(v) for v in np.linspace(lo, hi, steps + 1)[1:]]
    return [v for v in values if v != control.value] or [lo]


def controls_of(box) -> list:
    found = []
    for child in box.children:
        if isinstance(child, (W.Dropdown, W.IntSlider, W.FloatSlider)):
            found.append(child)
        elif isinstance(child, W.Box):
            found += controls_of(child)
    return found


def time_steps(box, index: int, steps: int) -> tuple[float, float]:
    """Median ms of a step of the box's ``index``-th control now, and of the baseline step (the same figure
    drawn, then a new FigureWidget made of it). The control is looked up at each step: the block explorer
    makes new sliders when its tensor changes."""
    new, old = [], []
    for value in step_values(controls_of(box)[index], steps):
        control = controls_of(box)[index]
        start = time.perf_counter()
        control.value = value
        new.append(time.perf_counter() - start)
        draw = getattr(box, "_draw", None)
        if draw is not None:
            start = time.perf_counter()
            go.FigureWidget(draw())
            old.append(time.perf_counter() - start)
    return 1e3 * statistics.median(new), 1e3 * statistics.median(old) if old else float("nan")


def explorers(path: str, big: bool):
    """(notebook, control name, explorer) for every explorer, on the file at ``path``."""
    g = GGUFFile(path)
    q8 = g if big else GGUFFile(embedded_gguf("Q8_0"))
    q4km = g if big else GGUFFile(embedded_gguf("Q4_K_M"))
    yield "03", "block explorer", widgets.block_explorer(q8, tensor="blk.0.attn_q.weight")
    yield "04", "block explorer", widgets.block_explorer(q4km, tensor="blk.0.ffn_down.weight")
    yield "06", "quant-error explorer", widgets.quant_error_explorer(g, tensor="blk.0.ffn_down.weight")
    cfg = StableLMConfig.from_gguf(g)
    if big:
        probs = torch.softmax(torch.randn(1, cfg.n_head, 64, 64), -1)
        acts = {f"blk.{i}.kq_soft_max": probs for i in range(cfg.n_layer)}
        tokens = [f"t{i}" for i in range(64)]
    else:
        tok, model = load_tokenizer(path), StableLM.from_gguf(path)
        ids = tok.encode("import os\n\ndef read_file(path):\n    with open(path) as f:\n").ids
        tokens = [tok.id_to_token(i) for i in ids]
        _, acts = model.run_with_cache(torch.tensor([ids]))
    yield "09", "attention viewer", widgets.attention_viewer(acts, tokens, cfg.n_layer, cfg.n_head)
    if big:  # a forward of the 3B shape is not what is timed: logits of its vocabulary's width are
        logits = 3 * torch.randn(cfg.n_vocab, generator=torch.Generator().manual_seed(0))
        yield "08", "next-token explorer", widgets.next_token_explorer(logits, NumberedTokens())
    else:
        logits = model(torch.tensor([ids]))[0, -1]
        yield "08", "next-token explorer", widgets.next_token_explorer(logits, tok)


class NumberedTokens:
    """Names token i "t<i>": the explorer decodes only the 30 it shows; the cost is in the whole vocabulary."""

    def decode(self, ids: list[int]) -> str:
        return "".join(f"t{i}" for i in ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", help="a 3B-shaped GGUF (tools/make_3b_gguf.py --random-blocks)")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = [("embedded default", str(default_gguf()), False, 250)]
    if args.big:
        files.append(("3B-shaped", args.big, True, 1000))
    print(
        "| file | notebook | explorer | control | median step (ms) | target (ms) | before: new figure "
        "(ms) | step / before |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|")
    for label, path, big, target in files:
        for notebook, name, box in explorers(path, big):
            sliders_first = sorted(enumerate(controls_of(box)), key=lambda c: isinstance(c[1], W.Dropdown))
            for index, control in sliders_first:  # a dropdown's step may change which sliders there are
                if control.layout.display == "none":
                    continue  # a hidden slider (one value): nothing to move
                ms, before = time_steps(box, index, args.steps)
                ratio = f"{before:.0f} | {ms / before:.2f}" if before == before else "– | –"  # NaN: no baseline
                print(
                    f"| {label} | {notebook} | {name} | {control.description} | {ms:.0f} | {target} | {ratio} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
