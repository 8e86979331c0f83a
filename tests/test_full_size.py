"""The real model's shapes, at full width: the path a user's stablelm-3b-4e1t.Q4_K_M.gguf takes.

One layer of StableLM-3B-4E1T at its true size (2560 wide, 32 heads of 80 with rotary on 20, FFN 6912,
vocabulary 50304), matrices in random Q4_K/Q6_K blocks (the Q4_K_M mix), against transformers holding
the weights gguf-py decodes from the same file. The 32-layer file is the benchmarks' (tools/bench_3b.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from devices import TORCH_DEVICES

from stablelm_lab import GGUFFile, StableLM, StableLMConfig
from stablelm_lab.testing import TinySpec, q4_k_m_mix, transformers_model, write_gguf

SPEC = TinySpec(
    n_vocab=50304, n_embd=2560, n_layer=1, n_head=32, n_head_kv=32, n_ff=6912, n_ctx=4096, n_rot=20, rope_base=10000.0
)
# float32 sums over 2560- and 6912-wide rows in another order (torch's and transformers' kernels split
# them differently): |error| ~ sqrt(n) * 2^-24 * |logits|, about 1e-5 of the largest logit; the tiny
# models' 1e-4 absolute is 1e-5 relative as well. Measured here: 1.3e-4 on logits up to 12.
LOGITS_RTOL = 2e-5


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("full") / "3b-1layer.Q4_K_M.gguf", SPEC, types=q4_k_m_mix)


@pytest.fixture(scope="module")
def transformers_logits(path):
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, SPEC.n_vocab, (1, 6)))
    with torch.no_grad():
        return ids, transformers_model(path, SPEC)(ids).logits


def test_the_file_reads_as_stablelm_3b(path):
    config = StableLMConfig.from_gguf(GGUFFile(path))
    assert (config.n_embd, config.n_head, config.head_dim, config.n_rot, config.n_ff, config.n_vocab) == (
        2560,
        32,
        80,
        20,
        6912,
        50304,
    )
    assert config.partial_rotary_factor == 0.25 and not config.parallel_residual


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("lean", [False, True], ids=["dense", "lean"])
def test_full_width_logits_match_transformers(path, transformers_logits, lean, device):
    ids, expected = transformers_logits
    model = StableLM.from_gguf(path, lean=lean, device=device)
    with torch.no_grad():
        ours = model(ids).cpu()
    assert ours.shape == (1, 6, 50304)
    assert (ours - expected).abs().max().item() < LOGITS_RTOL * expected.abs().max().item()
    assert torch.equal(ours.argmax(-1), expected.argmax(-1))
    assert model.weight_types["blk.0.ffn_down.weight"].name == "Q6_K"
