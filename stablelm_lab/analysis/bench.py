"""Benchmarks that print tables, each speed a ratio against a baseline measured in the same run.

    python -m stablelm_lab.analysis.bench dequant [--rows 2560 --cols 6912 --repeat 5 --formats Q4_K,Q6_K]
                                         [--rounds 3 --threads N --torch-threads N --device cuda]

dequant: for each format, millions of weights per second decoded by gguf-py (the baseline), by our
numpy kernel and by our torch kernel, on one matrix the size of StableLM-3B's FFN (2560 x 6912), and the
share of the memory-bandwidth bound that torch reaches: the bound is this machine's copy bandwidth
(``np.copyto`` of a 512 MB array, bytes read + bytes written) divided by the bytes a decode must move
per weight (its block bytes read + 4 float32 bytes written). Under the table: how fast a fresh float32
output of the same size can merely be written once, the floor every decoder stands on. With --device cuda
torch decodes on the GPU and the bound is the GPU's own copy bandwidth (docs/cuda.md).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import gguf
import numpy as np
import torch

from .. import quants
from ..quants import threads as decoder_threads


def best_seconds(fn: Callable[[], object], repeat: int, sync: Callable[[], None] = lambda: None) -> float:
    """The fastest of ``repeat`` timed calls after one warm-up; ``sync`` waits for a GPU's queued work."""
    fn()  # warm-up: first-touch page faults and lazy initialisation are not the kernel's speed
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(n_bytes: int = 512 << 20, repeat: int = 3) -> float:
    """Bytes per second moved by a plain memory copy (read + write)."""
    src = np.ones(n_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return 2 * n_bytes / best_seconds(lambda: np.copyto(dst, src), repeat)


def device_copy_bandwidth(device: str | torch.device, n_bytes: int = 2 << 30, repeat: int = 10) -> float:
    """The same for a GPU's own memory: a device-to-device copy."""
    src = torch.ones(n_bytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * n_bytes / best_seconds(lambda: dst.copy_(src), repeat, device_sync(device))


def device_sync(device: str | torch.device) -> Callable[[], None]:
    """A function that waits for ``device``'s queued kernels (nothing to wait for on the CPU)."""
    return (lambda: torch.cuda.synchronize(device)) if torch.device(device).type == "cuda" else (lambda: None)


def fresh_write_rates(n_weights: int, repeat: int) -> dict:
    """Weights per second at which a fresh float32 array of n_weights is allocated and written once:
    by numpy (which asks the kernel for huge pages) and by torch's own CPU allocator (which does not)."""
    return {
        "numpy": n_weights / best_seconds(lambda: np.empty(n_weights, np.float32).fill(1), repeat),
        "torch": n_weights / best_seconds(lambda: torch.empty(n_weights).fill_(1), repeat),
    }


def realistic_blocks(fmt: quants.QuantFormat, n_rows: int, n_cols: int, seed: int = 0) -> np.ndarray:
    """Random quant bytes whose float fields hold plausible scales (no NaN, inf or subnormal results)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_rows, n_cols // fmt.block_size * fmt.type_size), dtype=np.uint8)
    blocks = raw.reshape(-1, fmt.type_size).view(fmt.block_dtype)[:, 0]
    for name in fmt.block_dtype.names:
        field = fmt.block_dtype.fields[name][0].base
        if field.kind == "f":
            blocks[name] = rng.uniform(1e-3, 1e-2, blocks[name].shape).astype(field)
        elif fmt.name == "BF16":
            blocks[name] = rng.uniform(-1, 1, len(blocks)).astype(np.float32).view(np.uint32) >> 16
    return raw


def bench_dequant(
    n_rows: int, n_cols: int, repeat: int, names: list[str], bandwidth: float | None = None, device: str = "cpu"
) -> list[dict]:
    """One row per format: weights per second of the three decoders, the bound, and the setting. On a
    GPU ``device``, torch decodes there and the bound is that device's copy bandwidth."""
    on_cpu = torch.device(device).type == "cpu"
    bandwidth = bandwidth or (copy_bandwidth() if on_cpu else device_copy_bandwidth(device))
    sync = device_sync(device)
    threads = {"gguf-py": 1, "numpy": decoder_threads.THREADS, "torch": torch.get_num_threads() if on_cpu else device}
    n = n_rows * n_cols
    rows = []
    for name in names:
        fmt = quants.get(name)
        raw = realistic_blocks(fmt, n_rows, n_cols)
        raw_t = torch.from_numpy(raw).to(device)
        with np.errstate(all="ignore"):
            t_gguf = best_seconds(lambda: gguf.quants.dequantize(raw, fmt.qtype), repeat)
        t_numpy = best_seconds(lambda: fmt.dequantize(raw), repeat)
        t_torch = best_seconds(lambda: fmt.dequantize_torch(raw_t), repeat, sync)
        out = torch.empty(n_rows, n_cols, device=device)
        t_torch_out = best_seconds(lambda: fmt.dequantize_torch(raw_t, out=out), repeat, sync)
        out = None  # freed before the next format's buffer
        bound = bandwidth / (fmt.type_size / fmt.block_size + 4)
        rows.append(
            {
                "format": name,
                "gguf-py": n / t_gguf,
                "numpy": n / t_numpy,
                "torch": n / t_torch,
                "torch out=": n / t_torch_out,
                "bound": bound,
                "bandwidth": bandwidth,
                "threads": threads,
            }
        )
    return rows


def best_of_rounds(rounds: list[list[dict]]) -> list[dict]:
    """Per format and decoder, the fastest of several rounds of bench_dequant (a shared machine's
    neighbours slow some rounds down; the fastest is the closest to the decoder's own speed)."""
    best = [dict(row) for row in rounds[0]]
    for rows in rounds[1:]:
        for b, row in zip(best, rows):
            for key in ("gguf-py", "numpy", "torch", "torch out=", "bound", "bandwidth"):
                b[key] = max(b[key], row[key])
    return best


def format_dequant_table(rows: list[dict], n_rows: int, n_cols: int, fresh: dict | None = None) -> str:
    threads, bandwidth = rows[0]["threads"], rows[0]["bandwidth"]
    lines = [
        f"Dequantize a {n_rows}x{n_cols} tensor: M weights/s (best of runs), ratios to gguf-py,",
        "and torch's share of the memory-bandwidth bound (bytes read + float32 written). torch: into a",
        "new tensor; torch out=: into one that exists (as lean mode decodes into its reused band).",
        f"Threads: gguf-py {threads['gguf-py']}, numpy {threads['numpy']}, torch {threads['torch']}. "
        f"Copy bandwidth {bandwidth / 1e9:.1f} GB/s"
        f"{'' if threads['torch'] != 'cuda' else ' (the GPU: torch decodes there, gguf-py and numpy on the CPU)'}.",
        "",
        "| format | gguf-py | numpy | torch | torch out= | numpy / gguf-py | torch / gguf-py "
        "| torch / bound | torch out= / bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['format']} | {r['gguf-py'] / 1e6:.0f} | {r['numpy'] / 1e6:.0f} | "
            f"{r['torch'] / 1e6:.0f} | {r['torch out='] / 1e6:.0f} | {r['numpy'] / r['gguf-py']:.2f}x | "
            f"{r['torch'] / r['gguf-py']:.2f}x | {r['torch'] / r['bound']:.0%} | "
            f"{r['torch out='] / r['bound']:.0%} |"
        )
    if fresh is None:
        return "\n".join(lines)
    floor = bandwidth / 4.5625  # the bound of a 4.5-bit format (Q4_0, Q4_K), for scale
    lines += [
        "",
        f"Floor: a fresh float32 array of {n_rows * n_cols} weights written once runs at "
        f"{fresh['numpy'] / 1e6:.0f} M weights/s allocated by numpy "
        f"({fresh['numpy'] / floor:.0%} of the 4.5-bit bound), "
        f"{fresh['torch'] / 1e6:.0f} M weights/s by torch's allocator ({fresh['torch'] / floor:.0%}).",
    ]
    return "\n".join(lines)


def add_dequant_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the dequantization benchmark (here and in ``stablelm-lab bench``)."""
    parser.add_argument("--rows", type=int, default=2560)
    parser.add_argument("--cols", type=int, default=6912)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--rounds", type=int, default=1, help="whole runs over the formats; each speed is the best of them"
    )
    parser.add_argument(
        "--formats",
        default=",".join(n for n in quants.names() if n != "F32"),
        help="comma-separated type names (default: all but F32)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=decoder_threads.THREADS,
        help=f"threads of the numpy decoder (default: the cores available, {decoder_threads.THREADS})",
    )
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    parser.add_argument(
        "--device", default="cpu", help="where torch decodes, e.g. cuda: the bound is then that device's copy bandwidth"
    )


def check_device(device: str) -> None:
    """A ValueError that names the problem, before any timing, for a device torch cannot use here."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown torch device {device!r} (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: the benchmark times the CPU or a CUDA GPU")


def run_dequant(args: argparse.Namespace) -> str:
    """The table for parsed ``add_dequant_arguments`` options; an unknown format or device fails before
    any timing."""
    names = [n.strip() for n in args.formats.split(",") if n.strip()]
    for name in names:
        quants.get(name)
    check_device(args.device)
    decoder_threads.THREADS = args.threads
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    rounds = [bench_dequant(args.rows, args.cols, args.repeat, names, device=args.device) for _ in range(args.rounds)]
    fresh = fresh_write_rates(args.rows * args.cols, args.repeat) if args.device == "cpu" else None
    return format_dequant_table(best_of_rounds(rounds), args.rows, args.cols, fresh)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m stablelm_lab.analysis.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    add_dequant_arguments(sub.add_parser("dequant", help="dequantization speed of every format vs gguf-py"))
    args = parser.parse_args(argv)
    if args.what == "dequant":
        print(run_dequant(args))


if __name__ == "__main__":
    main()
