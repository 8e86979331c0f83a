"""Benchmarks that print tables, each speed a ratio against a baseline measured in the same run.

    python -m stablelm_lab.bench dequant [--rows 2560 --cols 6912 --repeat 3 --formats Q4_K,Q6_K]

dequant: for each format, millions of weights per second decoded by gguf-py (the baseline), by our
numpy kernel and by our torch kernel, on one matrix the size of StableLM-3B's FFN (2560 x 6912), and the
share of the memory-bandwidth bound that torch reaches: the bound is this machine's copy bandwidth
(``np.copyto`` of a 512 MB array, bytes read + bytes written) divided by the bytes a decode must move
per weight (its block bytes read + 4 float32 bytes written).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from . import quants


def best_seconds(fn, repeat: int) -> float:
    fn()  # warm-up: first-touch page faults and lazy initialisation are not the kernel's speed
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(n_bytes: int = 512 << 20, repeat: int = 3) -> float:
    """Bytes per second moved by a plain memory copy (read + write)."""
    src = np.ones(n_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return 2 * n_bytes / best_seconds(lambda: np.copyto(dst, src), repeat)


def realistic_blocks(fmt, n_rows: int, n_cols: int, seed: int = 0) -> np.ndarray:
    """Random quant bytes whose float fields hold plausible scales (no NaN, inf or subnormal results)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_rows, n_cols // fmt.block_size * fmt.type_size), dtype=np.uint8)
    blocks = raw.reshape(-1, fmt.type_size).view(fmt.block_dtype)[:, 0]
    for name in fmt.block_dtype.names:
        base = fmt.block_dtype.fields[name][0].base
        if base.kind == "f":
            blocks[name] = rng.uniform(1e-3, 1e-2, blocks[name].shape).astype(base)
        elif fmt.name == "BF16":
            blocks[name] = rng.uniform(-1, 1, len(blocks)).astype(np.float32).view(np.uint32) >> 16
    return raw


def bench_dequant(n_rows: int, n_cols: int, repeat: int, names: list[str]) -> list[dict]:
    import gguf
    import torch

    bandwidth = copy_bandwidth()
    n = n_rows * n_cols
    rows = []
    for name in names:
        fmt = quants.get(name)
        raw = realistic_blocks(fmt, n_rows, n_cols)
        raw_t = torch.from_numpy(raw)
        t_gguf = best_seconds(lambda: gguf.quants.dequantize(raw, fmt.qtype), repeat)
        t_numpy = best_seconds(lambda: fmt.dequantize(raw), repeat)
        t_torch = best_seconds(lambda: fmt.dequantize_torch(raw_t), repeat)
        bound = bandwidth / (fmt.type_size / fmt.block_size + 4)
        rows.append({"format": name, "gguf-py": n / t_gguf, "numpy": n / t_numpy, "torch": n / t_torch,
                     "bound": bound})
    return rows


def format_dequant_table(rows: list[dict], n_rows: int, n_cols: int) -> str:
    lines = [f"Dequantize a {n_rows}x{n_cols} tensor: M weights/s (best of runs), ratios to gguf-py,",
             "and torch's share of the memory-bandwidth bound (bytes read + float32 written).", "",
             "| format | gguf-py | numpy | torch | numpy / gguf-py | torch / gguf-py | torch / bound |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['format']} | {r['gguf-py'] / 1e6:.0f} | {r['numpy'] / 1e6:.0f} | "
                     f"{r['torch'] / 1e6:.0f} | {r['numpy'] / r['gguf-py']:.1f}x | "
                     f"{r['torch'] / r['gguf-py']:.1f}x | {r['torch'] / r['bound']:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m stablelm_lab.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    dq = sub.add_parser("dequant", help="dequantization speed of every format vs gguf-py")
    dq.add_argument("--rows", type=int, default=2560)
    dq.add_argument("--cols", type=int, default=6912)
    dq.add_argument("--repeat", type=int, default=3)
    dq.add_argument("--formats", default=",".join(n for n in quants.names() if n != "F32"),
                    help="comma-separated type names (default: all but F32)")
    args = parser.parse_args(argv)
    if args.what == "dequant":
        names = [n.strip() for n in args.formats.split(",") if n.strip()]
        rows = bench_dequant(args.rows, args.cols, args.repeat, names)
        print(format_dequant_table(rows, args.rows, args.cols))


if __name__ == "__main__":
    main()
