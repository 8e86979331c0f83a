"""CPU time per weight of the i-quant decoders, one thread each: gguf-py's against ours (numpy, torch).

    python tools/bench_iquants_cpu.py [--rows 2560 --cols 6912 --repeat 3]

On a shared machine wall time measures the neighbours too; the CPU time of the decoding thread
(``time.thread_time``) measures the decoder. Same matrix and blocks as ``python -m stablelm_lab.analysis.bench
dequant`` (bench.realistic_blocks); ours run on one thread (quants.threads.THREADS = 1, torch 1 thread),
as gguf-py does. Prints ns per weight, the fastest of the repeats, and the ratios to gguf-py.
"""

from __future__ import annotations

import argparse
import time

import gguf
import numpy as np
import torch

from stablelm_lab import quants
from stablelm_lab.analysis.bench import realistic_blocks
from stablelm_lab.quants import threads

NAMES = ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M"]


def cpu_seconds(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        fn()
        times.append(time.thread_time() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2560)
    parser.add_argument("--cols", type=int, default=6912)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    threads.THREADS = 1
    torch.set_num_threads(1)
    n = args.rows * args.cols
    print(f"CPU time of one thread, ns per weight, {args.rows}x{args.cols}, best of {args.repeat}\n")
    print("| format | gguf-py | numpy | torch | gguf-py / numpy | gguf-py / torch |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in NAMES:
        fmt = quants.get(name)
        raw = realistic_blocks(fmt, args.rows, args.cols)
        raw_t = torch.from_numpy(raw)
        with np.errstate(all="ignore"):
            t_gguf = cpu_seconds(lambda: gguf.quants.dequantize(raw, fmt.qtype), args.repeat) / n * 1e9
        t_numpy = cpu_seconds(lambda: fmt.dequantize(raw), args.repeat) / n * 1e9
        t_torch = cpu_seconds(lambda: fmt.dequantize_torch(raw_t), args.repeat) / n * 1e9
        print(
            f"| {name} | {t_gguf:.2f} | {t_numpy:.2f} | {t_torch:.2f} | {t_gguf / t_numpy:.2f}x | "
            f"{t_gguf / t_torch:.2f}x |"
        )


if __name__ == "__main__":
    main()
