"""Forward-pass speed of stablelm_lab's StableLM against transformers' eager StableLM, same weights, one run.

    .venv/bin/python tools/bench_model.py                  # tiny model and a 3B-shaped slice (2 layers)
    .venv/bin/python tools/bench_model.py --layers 32      # the full 3B shape (writes ~11 GB to --tmp)

The 3B shape is StableLM-3B-4E1T's: 2560 wide, 32 heads, rotary 20 of 80, 6912 FFN, vocab 50304.
Random weights are written with tests/ggufmaker.py into a temporary GGUF (never committed). Also
reports the peak RSS of loading that shape from a Q4_K_M-like file, dense and lean, in fresh processes.
"""

from __future__ import annotations

import argparse
import subprocess
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
    return time.perf_counter() - start


def speed(spec, tmp: Path, n_tokens: int, repeats: int) -> tuple[float, float]:
    """Tokens/s of ours and of transformers, best of ``repeats``, the two runs interleaved (a shared
    machine's noise then hits both alike)."""
    path = ggufmaker.write_gguf(tmp / "f32.gguf", spec)
    ids = torch.randint(0, spec.n_vocab, (1, n_tokens))
    ours = StableLM.from_gguf(path)
    hf = ggufmaker.transformers_model(path, spec)
    hf_forward = lambda x: hf(x).logits  # noqa: E731
    seconds(ours, ids), seconds(hf_forward, ids)  # warm-up
    best_ours = best_hf = float("inf")
    for _ in range(repeats):
        best_ours = min(best_ours, seconds(ours, ids))
        best_hf = min(best_hf, seconds(hf_forward, ids))
    path.unlink()
    return n_tokens / best_ours, n_tokens / best_hf


def peak_rss_mb(path: Path, lean: bool) -> float:
    # VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's size at fork
    code = (f"import torch; from stablelm_lab import StableLM; "
            f"m = StableLM.from_gguf({str(path)!r}, lean={lean}, progress=False); "
            f"torch.no_grad()(m)(torch.zeros(1, 16, dtype=torch.long)); "
            f"print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return int(out.stdout.split()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tmp", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, batch 1, "
          f"{args.tokens} tokens, best of {args.repeats}")
    print(f"{'model':28s} {'ours tok/s':>11s} {'transformers':>13s} {'ours/transformers':>18s}")
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        specs = shapes(args.layers)
        for name, spec in specs.items():
            ours, hf = speed(spec, tmp, args.tokens, args.repeats)
            print(f"{name:28s} {ours:11.1f} {hf:13.1f} {ours / hf:17.2f}x")
        spec = list(specs.values())[-1]
        path = ggufmaker.write_gguf(tmp / "q4km.gguf", spec, types=ggufmaker.q4_k_m_mix)
        size = path.stat().st_size / 2**20
        print(f"\npeak RSS, load + 16-token forward, Q4_K_M-like file of {size:.0f} MiB "
              f"({list(specs)[-1]}):")
        for lean in (False, True):
            print(f"  lean={lean!s:5s}  {peak_rss_mb(path, lean):8.0f} MiB")


if __name__ == "__main__":
    main()
