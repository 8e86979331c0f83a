"""Forward-pass speed of stablelm_lab's StableLM against transformers' eager StableLM, same weights, one run,
both models in this process: the tiny test shape and a slice of StableLM-3B-4E1T (2 layers at full width);
a prompt at once, and generation (one cached forward per new token).

    .venv/bin/python tools/bench_model.py [--device cuda]

On a GPU (--device cuda) both models run there, and each time waits for the device's queued work.

The 3B shape is StableLM-3B-4E1T's: 2560 wide, 32 heads, rotary 20 of 80, 6912 FFN, vocab 50304.
Random weights are written with stablelm_lab.testing into a temporary float32 GGUF (never committed).
The whole 32-layer model, its load time and memory, lean mode and llama.cpp: tools/bench_3b.py.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from stablelm_lab import StableLM
from stablelm_lab.analysis.bench import device_sync
from stablelm_lab.testing import TinySpec, transformers_model, write_gguf


def shapes(layers: int) -> dict[str, TinySpec]:
    return {
        "tiny": TinySpec(),
        f"3B-shaped, {layers} layers": TinySpec(
            n_vocab=50304, n_embd=2560, n_layer=layers, n_head=32, n_head_kv=32, n_ff=6912, n_ctx=4096, n_rot=20
        ),
    }


@torch.no_grad()
def seconds(forward, ids) -> float:
    start = time.perf_counter()
    forward(ids)
    device_sync(ids.device)()
    return time.perf_counter() - start


def ours_generate(model, n_new: int):
    """A prompt, then n_new tokens one cached forward each (greedy): what generation costs per token."""

    def run(ids):
        cache = model.new_cache()
        token = model(ids, cache)[:, -1:].argmax(-1)
        for _ in range(n_new):
            token = model(token, cache)[:, -1:].argmax(-1)

    return run


def transformers_generate(model, n_new: int):
    def run(ids):
        out = model(ids, use_cache=True)
        for _ in range(n_new):
            token = out.logits[:, -1:].argmax(-1)
            out = model(token, past_key_values=out.past_key_values, use_cache=True)

    return run


def speed(spec, tmp: Path, n_tokens: int, repeats: int, device: str = "cpu", n_new: int = 32) -> dict:
    """Tokens/s of ours and of transformers, prompt (n_tokens at once) and generation (n_new cached steps
    after an 8-token prompt), best of ``repeats``, the runs interleaved (a shared machine's noise then
    hits both alike)."""
    path = write_gguf(tmp / "f32.gguf", spec)
    ids = torch.randint(0, spec.n_vocab, (1, n_tokens), device=device)
    ours = StableLM.from_gguf(path, device=device)
    hf = transformers_model(path, spec).to(device)
    runs = {
        ("prompt", "ours"): (ours, ids),
        ("prompt", "transformers"): (lambda x: hf(x).logits, ids),
        ("generate", "ours"): (ours_generate(ours, n_new), ids[:, :8]),
        ("generate", "transformers"): (transformers_generate(hf, n_new), ids[:, :8]),
    }
    best = {key: float("inf") for key in runs}
    for _ in range(repeats + 1):  # the first round warms up
        for key, (forward, x) in runs.items():
            best[key] = min(best[key], seconds(forward, x))
    path.unlink()
    return {key: (n_tokens if key[0] == "prompt" else n_new) / t for key, t in best.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128, help="prompt length")
    parser.add_argument("--new-tokens", type=int, default=32, help="cached generation steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    where = (
        torch.cuda.get_device_name(args.device)
        if args.device.startswith("cuda")
        else f"{torch.get_num_threads()} threads"
    )
    print(
        f"torch {torch.__version__}, {where}, float32, batch 1, prompt {args.tokens} tokens, "
        f"generation {args.new_tokens} cached steps, best of {args.repeats}"
    )
    print(f"{'model':28s} {'':8s} {'ours tok/s':>11s} {'transformers':>13s} {'ours/transformers':>18s}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        specs = shapes(args.layers)
        for name, spec in specs.items():
            rates = speed(spec, tmp, args.tokens, args.repeats, args.device, args.new_tokens)
            for what in ("prompt", "generate"):
                ours, hf = rates[what, "ours"], rates[what, "transformers"]
                print(f"{name:28s} {what:8s} {ours:11.1f} {hf:13.1f} {ours / hf:17.2f}x")


if __name__ == "__main__":
    main()
