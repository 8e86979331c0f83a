"""Figures and widgets, checked without a browser: what they draw must be the data they were given."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stablelm_lab import GGUFFile, quants
from stablelm_lab.lab import viz, widgets
from stablelm_lab.quants.anatomy import block_fields, byte_owner
from stablelm_lab.testing import TinySpec, uniform, write_gguf


def test_byte_owner_follows_the_c_structs():
    # ggml-common.h: block_q2_K { uint8_t scales[16]; uint8_t qs[64]; ggml_half d; ggml_half dmin; }
    owner = byte_owner(quants.get("Q2_K"))
    assert owner[:16] == ["scales"] * 16 and owner[16:80] == ["qs"] * 64
    assert owner[80:] == ["d", "d", "dmin", "dmin"]
    # block_q6_K { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; ggml_half d; }
    assert byte_owner(quants.get("Q6_K"))[208:] == ["d", "d"]


def test_block_fields_read_the_bytes_at_their_offsets():
    fmt = quants.get("Q4_K")
    raw = fmt.quantize(np.random.default_rng(0).standard_normal((1, 256)).astype(np.float32))[0]
    fields = {f.name: f for f in block_fields(fmt, raw)}
    assert fields["d"].value[0] == np.frombuffer(raw[0:2].tobytes(), "<f2")[0]
    assert fields["dmin"].value[0] == np.frombuffer(raw[2:4].tobytes(), "<f2")[0]
    assert np.array_equal(fields["qs"].value, raw[16:144]) and fields["scales"].ctype == "uint8_t[12]"
    with pytest.raises(ValueError, match="144 bytes; got 10"):
        block_fields(fmt, raw[:10])


def test_block_figure_shows_every_byte_and_the_decoded_weights():
    fmt = quants.get("Q5_0")
    raw = fmt.quantize(np.linspace(-1, 1, 32, dtype=np.float32))
    fig = viz.block_figure(fmt, raw)
    heatmap, bars = fig.data[0], fig.data[-1]
    shown = [t for row in heatmap.text for t in row if t]
    assert shown == [f"{b:02x}" for b in raw]
    assert np.array_equal(np.asarray(bars.y, np.float32), fmt.dequantize(raw))


def test_fields_table_names_every_field():
    fmt = quants.get("Q3_K")
    html = viz.fields_table(fmt, np.zeros(fmt.type_size, np.uint8))
    assert all(f"<b>{name}</b>" in html for name in fmt.block_dtype.names)


@pytest.fixture(scope="module")
def q8_file(tmp_path_factory):
    path = write_gguf(tmp_path_factory.mktemp("viz") / "q8.gguf", TinySpec(), types=uniform(quants.get("Q8_0").qtype))
    return GGUFFile(path)


def test_block_explorer_follows_its_controls(q8_file):
    box = widgets.block_explorer(q8_file, tensor="blk.0.attn_q.weight")
    tensor_box, row_box, block_box = box.children[0].children
    block_box.value = 3
    fig = box.children[-1]
    raw = q8_file.raw("blk.0.attn_q.weight")[0].reshape(-1, 34)[3]
    assert np.array_equal(np.asarray(fig.data[-1].y, np.float32), quants.get("Q8_0").dequantize(raw))
    assert "block 3" in box.children[1].value


def test_quant_error_explorer_reports_what_metrics_measure(q8_file):
    box = widgets.quant_error_explorer(q8_file, tensor="blk.0.ffn_up.weight", type_name="Q4_0")
    original = q8_file.dequantize("blk.0.ffn_up.weight")
    fmt = quants.get("Q4_0")
    rmse = np.sqrt(np.mean((fmt.dequantize(fmt.quantize(original)).astype(np.float64) - original) ** 2))
    assert f"RMSE {rmse:.4g}" in box.children[1].value
    type_box = box.children[0].children[1]
    type_box.value = "Q8_0"
    assert "Q8_0" in box.children[1].value and box.figure.data[-1].type == "scattergl"  # per-block error


class Letters:
    def decode(self, ids):
        return "".join(chr(97 + i) for i in ids)


def test_next_token_explorer_shows_both_orders_in_place():
    # probabilities [.6, .3, .1] at temperature 2 and top_p 0.85 (by hand): tempered, [.473, .334, .193], the
    # first two hold .807 < .85, so transformers' top-p keeps all three; llama.cpp cuts first (.6 + .3) and
    # keeps two
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    box = widgets.next_token_explorer(logits, Letters(), top=3, temperature=1.0, top_k=0, top_p=1.0)
    figure = box.children[-1]
    t_box, k_box, p_box, m_box = box.children[0].children
    t_box.value, p_box.value = 2.0, 0.85
    assert box.children[-1] is figure  # updated in place, not redrawn
    card, llama = ([c != "#BBBBBB" for c in trace.marker.color] for trace in figure.data)
    assert card == [True, True, True] and llama == [True, True, False]
    summary = box.children[1].value
    assert "(the card)</b> keeps 3 tokens" in summary and "llama.cpp</b> keeps 2 tokens" in summary
    # a dropped token keeps a visible bar: its tempered probability, on the fixed log axis
    tempered = torch.softmax(logits / 2.0, -1)
    assert np.isclose(figure.data[1].y[2], tempered[2].item())
    assert all(tuple(figure.layout[f"yaxis{n}"].range) == (-4, 0) for n in ("", "2"))
    assert box.settings() == {"temperature": 2.0, "top_k": None, "top_p": 0.85}
    p_box.value = 0.3
    assert "keeps 1 token " in box.children[1].value  # one token, not "1 tokens"


def test_sampling_figures_have_axis_titles():
    panels = {"a": (np.array([0.7, 0.3, 0.0]), np.array([0.6, 0.3, 0.1])), "b": (np.ones(3) / 3, np.ones(3) / 3)}
    fig = viz.sampling_orders_figure(list("xyz"), panels, "t")
    assert fig.layout.xaxis.title.text and fig.layout.xaxis2.title.text and fig.layout.yaxis.title.text
    assert list(fig.data[0].y) == [0.7, 0.3, 0.1]  # the dropped token drawn at its tempered height
    fig = viz.kept_by_temperature_figure(np.array([0.5, 1.0]), {"a": np.array([3, 5])}, "t")
    assert fig.layout.xaxis.title.text == "temperature" and fig.layout.yaxis.title.text


def test_attention_viewer_draws_the_recorded_probabilities():
    probs = torch.softmax(torch.randn(1, 2, 5, 5), -1)
    acts = {"blk.0.kq_soft_max": probs, "blk.1.kq_soft_max": probs.flip(1)}
    box = widgets.attention_viewer(acts, list("abcde"), n_layer=2, n_head=2)
    box.children[0].children[0].value = 1
    box.children[0].children[1].value = 1
    assert np.allclose(np.asarray(box.children[-1].data[0].z), probs[0, 0].numpy())
