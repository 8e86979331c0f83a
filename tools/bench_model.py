"""Forward-pass speed of stablelm_lab's StableLM against transformers' eager StableLM, same weights, one run,
both models in this process: the tiny test shape and a slice of StableLM-3B-4E1T (2 layers at full width).

    .venv/bin/python tools/bench_model.py [--device cuda]

On a GPU (--device cuda) both models run there, and each time waits for the device's queued work.

The 3B shape is StableLM-3B-4E1T's: 2560 wide, 32 heads, rotary 20 of 80, 6912 FFN, vocab 50304.
Random weights are written with tests/ggufmaker.py into a temporary float32 GGUF (never committed).
The whole 32-layer model, its load time and memory, lean mode and llama.cpp: tools/bench_3b.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import ggufmaker  # noqa: E402

from stablelm_lab import StableLM  # noqa: E402


def shapes(layers: int) -> dict[str, ggufmaker.TinySpec]:
    return {"tiny": ggufmaker.TinySpec(),
            f"3B-shaped, {layers} layers": ggufmaker.TinySpec(n_vocab=50304, n_embd=2560, n_layer=layers, n_head=32,
                                                              n_head_kv=32, n_ff=6912, n_ctx=4096, n_rot=20)}


@torch.no_grad()
def seconds(forward, ids) -> float:
    start = time.perf_counter()
    forward(ids)
    if ids.device.type == "cuda":
        torch.cuda.synchronize(ids.device)
    return time.perf_counter() - start


def speed(spec, tmp: Path, n_tokens: int, repeats: int, device: str = "cpu") -> tuple[float, float]:
    """Tokens/s of ours and of transformers, best of ``repeats``, the two runs interleaved (a shared
    machine's noise then hits both alike)."""
    path = ggufmaker.write_gguf(tmp / "f32.gguf", spec)
    ids = torch.randint(0, spec.n_vocab, (1, n_tokens), device=device)
    ours = StableLM.from_gguf(path, device=device)
    hf = ggufmaker.transformers_model(path, spec).to(device)
    hf_forward = lambda x: hf(x).logits  # noqa: E731
    seconds(ours, ids), seconds(hf_forward, ids)  # warm-up
    best_ours = best_hf = float("inf")
    for _ in range(repeats):
        best_ours = min(best_ours, seconds(ours, ids))
        best_hf = min(best_hf, seconds(hf_forward, ids))
    path.unlink()
    return n_tokens / best_ours, n_tokens / best_hf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tmp", default=None)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else \
        f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, float32, batch 1, {args.tokens} tokens, best of {args.repeats}")
    print(f"{'model':28s} {'ours tok/s':>11s} {'transformers':>13s} {'ours/transformers':>18s}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        specs = shapes(args.layers)
        for name, spec in specs.items():
            ours, hf = speed(spec, tmp, args.tokens, args.repeats, args.device)
            print(f"{name:28s} {ours:11.1f} {hf:13.1f} {ours / hf:17.2f}x")


if __name__ == "__main__":
    main()
