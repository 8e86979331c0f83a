"""What a learner sees: figures readable at the notebook's width, controls whose ranges follow their data,
figures redrawn in place, and a stored picture of every figure and control (checked without a browser)."""

from __future__ import annotations

import base64

import numpy as np
import plotly.io as pio
import pytest
import torch

from stablelm_lab import GGUFFile, quants
from stablelm_lab.lab import viz, widgets
from stablelm_lab.testing import TinySpec, uniform, write_gguf

TOKENS = ["import", "Ġos", "Ċ", "Ċ", "def", "Ġread", "_", "file", "(", "path", "):", "Ċ", "ĠĠĠ"]


def every_figure():
    """One of each figure the workbook draws (the sampling figures of notebook 08 are tested with it)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 256)).astype(np.float32)
    q4 = quants.get("Q4_K")
    decoded = q4.dequantize(q4.quantize(w))
    n = len(TOKENS)
    yield "block Q8_0", viz.block_figure(quants.get("Q8_0"), quants.get("Q8_0").quantize(w[0, :32]))
    yield "block Q6_K", viz.block_figure(quants.get("Q6_K"), quants.get("Q6_K").quantize(w[0]))
    yield "histogram", viz.error_histogram(w, decoded, "w")
    yield "quant error", viz.quant_error_figure(w, decoded, np.ones(8), np.ones(8), "w", 1.0)
    yield "quant error, no scale", viz.quant_error_figure(w, decoded, None, np.ones(8), "w", 1.0)
    yield (
        "frontier",
        viz.frontier_figure(["Q2_K", "IQ4_XS", "Q4_K", "Q8_0"], [2.625, 4.25, 4.5, 8.5], [0.2, 0.06, 0.055, 0.004]),
    )
    yield "block error", viz.block_error_figure(np.ones(8), np.ones(8), "w")
    yield "rotary", viz.rotary_figure(80, 20, 10000.0)
    yield "attention", viz.attention_figure(np.eye(n), TOKENS, "attention")
    yield "layer lines", viz.layer_lines_figure({"a": np.arange(1, 5.0)}, "lines", "norm")
    yield "logit lens", viz.logit_lens_figure(rng.random((4, n)), [TOKENS] * 4, TOKENS)
    yield "per position", viz.per_position_figure(np.ones(n), TOKENS, "KL", "nats")


FIGURES = list(every_figure())


@pytest.mark.parametrize("name,fig", FIGURES, ids=[f[0] for f in FIGURES])
def test_every_axis_has_a_title(name, fig):
    used = {ref[0] + "axis" + ref[1:] for t in fig.data for ref in (t.xaxis or "x", t.yaxis or "y")}
    for key in used:
        assert fig.layout[key].title.text, f"{name}: {key} has no title"


@pytest.mark.parametrize("name,fig", FIGURES, ids=[f[0] for f in FIGURES])
def test_text_is_at_least_10_px(name, fig):
    layout = fig.to_plotly_json()["layout"]
    assert layout["font"]["size"] >= 10
    for annotation in layout.get("annotations", []):
        assert (annotation.get("font") or {}).get("size", layout["font"]["size"]) >= 10, name
    for trace in fig.to_plotly_json()["data"]:
        if trace.get("texttemplate") or "text" in trace.get("mode", ""):
            # unset, plotly shrinks cell text to fit: the logit lens drew its tokens at about 5 px
            assert (trace.get("textfont") or {}).get("size", 0) >= 10, f"{name}: {trace['type']} text size"


def test_heatmaps_with_a_colour_bar_name_it():
    for name, fig in FIGURES:
        for trace in fig.data:
            if trace.type == "heatmap" and trace.showscale is not False:
                assert trace.colorbar.title.text, name


def test_q8_0_bytes_fit_one_row_and_k_quants_rows_of_32():
    q8 = dict(FIGURES)["block Q8_0"].data[0]
    assert np.array(q8.z).shape == (1, 34)  # ggml-common.h: block_q8_0 is 2 + 32 bytes
    q6 = dict(FIGURES)["block Q6_K"].data[0]
    assert np.array(q6.z).shape == (7, 32) and sum(v is not None for row in q6.z for v in row) == 210


def test_logit_lens_shows_whitespace_tokens():
    fig = dict(FIGURES)["logit lens"]
    shown = {t for row in fig.data[0].text for t in row}
    assert "↵" in shown and "·os" in shown and "" not in shown
    assert viz.visible_token("\t  x") == "→··x" and viz.visible_token("") == "∅"
    assert viz.visible_token("abcdefghijklmnop", 6) == "abcde…"


def test_frontier_labels_of_a_cluster_take_different_places():
    # notebook 06's cluster: IQ4_XS and MXFP4 at 4.25 bits, Q4_0, IQ4_NL and Q4_K at 4.5, errors within 20%
    names = ["Q2_K", "IQ4_XS", "MXFP4", "Q4_0", "IQ4_NL", "Q4_K", "Q8_0"]
    bpw = [2.625, 4.25, 4.25, 4.5, 4.5, 4.5, 8.5]
    err = [0.2, 0.052, 0.06, 0.058, 0.05, 0.049, 0.004]
    positions = viz.label_positions(bpw, err, names)
    assert positions[1] != positions[2] and positions[4] != positions[5]  # same bits, errors 2-15% apart
    assert positions.count("middle right") < 6  # the old figure put every label at the same place
    assert positions[0] == positions[-1] == "middle right"  # a point alone keeps the first choice


def test_a_log_axis_over_decades_labels_powers_of_ten_only():
    fig = dict(FIGURES)["frontier"]
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis.dtick == 1
    narrow = viz.frontier_figure(["a", "b"], [4, 5], [0.05, 0.06])
    assert narrow.layout.yaxis.dtick is None  # inside one decade the default ticks are the only labels


def test_sample_rows_stay_under_the_budget_and_span_the_tensor():
    rows = widgets.sample_rows(6912, 2560)
    assert rows[0] == 0 and rows[-1] == 6911 and len(rows) * 2560 <= widgets.MAX_WEIGHTS
    assert np.array_equal(widgets.sample_rows(100, 256), np.arange(100))


# ---- the explorers -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def q8_file(tmp_path_factory):
    path = write_gguf(
        tmp_path_factory.mktemp("widgets") / "q8.gguf", TinySpec(), types=uniform(quants.get("Q8_0").qtype)
    )
    return GGUFFile(path)


@pytest.fixture(scope="module")
def q4_k_file(tmp_path_factory):
    path = write_gguf(
        tmp_path_factory.mktemp("widgets") / "q4k.gguf", TinySpec(), types=uniform(quants.get("Q4_K").qtype)
    )
    return GGUFFile(path)


def visible(slider):
    return slider.layout.display != "none"


def test_block_explorer_slider_ranges_follow_the_tensor(q8_file):
    box = widgets.block_explorer(q8_file, tensor="token_embd.weight")
    tensor_box, row_box, block_box = box.controls
    row_box.value = row_box.max
    assert row_box.max == 511  # TinySpec: 512 tokens
    tensor_box.value = "blk.0.attn_k.weight"  # n_head_kv 2 x head_dim 64 = 128 rows
    row_box = box.controls[1]  # a new slider: the browser's End key needs one
    assert (row_box.max, row_box.value) == (127, 127) and box.children[0].children[1] is row_box
    tensor_box.value = "blk.0.ffn_down.weight"  # 256 rows of 512 weights: 16 Q8_0 blocks
    _, row_box, block_box = box.controls
    assert (row_box.max, block_box.max) == (255, 15)
    row_box.value, block_box.value = 255, 15
    raw = q8_file.raw("blk.0.ffn_down.weight")[255].reshape(-1, 34)[15]
    assert np.array_equal(np.asarray(box.figure.data[-1].y, np.float32), quants.get("Q8_0").dequantize(raw))


def test_no_visible_slider_has_an_empty_range(q4_k_file):
    box = widgets.block_explorer(q4_k_file, tensor="blk.0.attn_q.weight")  # 256 weights a row: one block
    _, row_box, block_box = box.controls
    assert not visible(block_box) and "each row is this one block" in box.notes[0].value
    assert visible(row_box) and row_box.max > row_box.min
    box.controls[0].value = "blk.0.ffn_down.weight"  # 512 a row: two blocks
    assert visible(box.controls[2]) and box.controls[2].max == 1


def test_controls_redraw_one_figure_in_place(q8_file):
    box = widgets.quant_error_explorer(q8_file, tensor="blk.0.ffn_up.weight", type_name="Q4_0")
    figure, before = box.figure, np.array(box.figure.data[0].y, dtype=float)
    assert box.children[-1] is figure
    box.controls[1].value = "Q8_0"
    assert box.figure is figure and box.children[-1] is figure
    assert not np.array_equal(np.array(figure.data[0].y, dtype=float), before, equal_nan=True)


def test_error_histogram_keeps_its_range_when_the_format_changes(q8_file):
    box = widgets.quant_error_explorer(q8_file, tensor="blk.0.ffn_up.weight", type_name="Q2_K")
    w = q8_file.dequantize("blk.0.ffn_up.weight")
    limit = float(np.abs(w).max()) / 4
    for name in ["Q2_K", "Q8_0", "IQ4_XS", "MXFP4"]:
        box.controls[1].value = name
        assert np.allclose(box.figure.layout.xaxis.range, [-limit, limit]), name


def test_mxfp4_draws_its_scatter_against_its_exponent(q8_file):
    box = widgets.quant_error_explorer(q8_file, tensor="blk.0.ffn_up.weight", type_name="MXFP4")
    w = q8_file.dequantize("blk.0.ffn_up.weight")
    raw = quants.get("MXFP4").quantize(w).reshape(-1, 17)
    scatter = box.figure.data[-1]
    assert scatter.type == "scattergl" and "2^(e" in box.figure.layout.xaxis2.title.text
    drawn = np.linspace(0, len(raw) - 1, widgets.MAX_BLOCKS_DRAWN).astype(int)  # 4096 blocks: 4000 drawn
    assert np.array_equal(np.asarray(scatter.x), 2.0 ** (raw[drawn, 0].astype(np.float64) - 127))  # byte 0: e


def test_a_large_tensor_is_sampled_and_the_figure_says_so(q8_file, monkeypatch):
    monkeypatch.setattr(widgets, "MAX_WEIGHTS", 64 * 256)
    box = widgets.quant_error_explorer(q8_file, tensor="token_embd.weight", type_name="Q4_K")
    assert "64 of 512 rows" in box.figure.layout.title.text and "64 of 512 rows" in box.notes[0].value
    box.controls[1].value = "IQ4_XS"  # a quantizer 4x slower: a quarter of the rows
    assert "16 of 512 rows" in box.notes[0].value


def test_attention_viewer_hides_a_slider_with_one_value():
    probs = torch.softmax(torch.randn(1, 1, 3, 3), -1)
    box = widgets.attention_viewer({"blk.0.kq_soft_max": probs}, list("abc"), n_layer=1, n_head=1)
    assert all(not visible(c) for c in box.controls)


# ---- the stored view --------------------------------------------------------------------------------------------
needs_chromium = pytest.mark.skipif(
    viz.picture({"data": [], "layout": {}}) is None, reason="kaleido cannot draw here (no Chrome/Chromium)"
)


def png_size(data: str) -> tuple[int, int]:
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


@needs_chromium
def test_a_figure_carries_a_picture_beside_its_json():
    fig = dict(FIGURES)["frontier"]
    bundle = pio.renderers["stablelm"].to_mimebundle(fig.to_dict())
    assert bundle["application/vnd.plotly.v1+json"]["data"][0]["text"] == ["Q2_K", "IQ4_XS", "Q4_K", "Q8_0"]
    assert png_size(bundle["image/png"]) == (viz.PICTURE_WIDTH, 460)
    assert pio.renderers.default == "stablelm"


@needs_chromium
def test_a_stored_control_shows_a_picture_not_python_text(q8_file):
    box = widgets.block_explorer(q8_file, tensor="blk.0.attn_q.weight")
    bundle = box._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert png_size(bundle["image/png"]) == (viz.PICTURE_WIDTH, 560)
    assert "VBox" not in bundle["text/plain"] and "block explorer" in bundle["text/plain"]
