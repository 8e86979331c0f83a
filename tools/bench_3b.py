"""StableLM-3B at full size, end to end: load time, peak memory and speed of stablelm_lab's model against
transformers' GGUF loader (and llama.cpp, for reference), on the same files, in one run.

    .venv/bin/python tools/make_3b_gguf.py --out /tmp/3b                        # once: ~12 GB, ~10 min
    .venv/bin/python tools/bench_3b.py --dir /tmp/3b --write docs/bench_3b.md

For each file (Q4_K_M, Q8_0, Q4_0 by default) every contender runs in a fresh process, one after the
other (so each peak is its own, measured as VmHWM: the most resident memory the process ever had, the
pages of the mapped file included):

    load       from the call to a runnable torch model (imports excluded): ours float32, bfloat16 and lean,
               transformers' ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=..., dtype=float32)``
    prompt     one forward over 64 random token ids, filling the KV cache: tokens per second
    generate   16 greedy tokens, one cached forward each: tokens per second

after a warm-up forward of 8 tokens. With ``--device cuda`` the torch contenders run on the GPU
(transformers' load then includes moving the model there) and the table adds their peak GPU memory
(torch.cuda.max_memory_allocated); llama.cpp is left out there. Before each run the page cache is
dropped (when the benchmark runs as root) and the file read once, so that every run finds it in the page
cache and the rest of memory free. llama.cpp runs when ``--llama-python`` (an interpreter that can
import llama_cpp) is given or the current one can import it. Ratios are against transformers float32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT_TOKENS, NEW_TOKENS, WARMUP_TOKENS = 64, 16, 8
CONTENDERS = {  # label -> worker arguments
    "ours float32": ["ours", "--dtype", "float32"],
    "ours bfloat16": ["ours", "--dtype", "bfloat16"],
    "ours lean (float32)": ["ours", "--dtype", "float32", "--lean"],
    "transformers float32": ["transformers"],
    "llama.cpp": ["llama"],
}
BASELINE = "transformers float32"


# ---- the workers: one contender, one file, in its own process ---------------------------------------
def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1]) / 2**20


def prompt_ids(n_vocab: int) -> list[int]:
    import random

    rng = random.Random(0)
    return [rng.randrange(n_vocab) for _ in range(PROMPT_TOKENS)]


def timed_generation(first, step, n_vocab: int) -> dict:
    """``first(ids)`` runs the prompt and returns the last logits; ``step(token)`` one cached token."""
    ids = prompt_ids(n_vocab)
    start = time.perf_counter()
    tokens = [int(first(ids).argmax())]  # int(): waits for a GPU's queued work
    prompt_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(NEW_TOKENS):
        tokens.append(int(step(tokens[-1]).argmax()))
    generate_s = time.perf_counter() - start
    tokens = tokens[:NEW_TOKENS]
    return {"prompt_tok_s": PROMPT_TOKENS / prompt_s, "gen_tok_s": NEW_TOKENS / generate_s, "tokens": tokens}


def gpu_peak(device: str) -> dict:
    import torch

    return {"gpu_peak_gb": torch.cuda.max_memory_allocated(device) / 2**30} if device.startswith("cuda") else {}


def run_ours(path: Path, dtype: str, lean: bool, device: str) -> dict:
    import torch

    from stablelm_lab import StableLM

    start = time.perf_counter()
    model = StableLM.from_gguf(path, dtype=getattr(torch, dtype), lean=lean, progress=False, device=device)
    load = {"load_s": time.perf_counter() - start, "load_peak_gb": peak_rss_gb()}
    n_vocab = model.config.n_vocab
    with torch.no_grad():
        model(list(range(WARMUP_TOKENS)))
        cache = model.new_cache()
        result = timed_generation(lambda ids: model(ids, cache)[0, -1], lambda t: model([t], cache)[0, -1], n_vocab)
    return load | result | gpu_peak(device)


def run_transformers(path: Path, device: str) -> dict:
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    start = time.perf_counter()
    model = (
        AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
        )
        .eval()
        .to(device)
    )
    load = {"load_s": time.perf_counter() - start, "load_peak_gb": peak_rss_gb()}
    state = {}

    def first(ids):
        out = model(torch.tensor([ids], device=device), use_cache=True)
        state["past"] = out.past_key_values
        return out.logits[0, -1]

    def step(token):
        out = model(torch.tensor([[token]], device=device), past_key_values=state["past"], use_cache=True)
        state["past"] = out.past_key_values
        return out.logits[0, -1]

    with torch.no_grad():
        model(torch.arange(WARMUP_TOKENS, device=device)[None])
        result = timed_generation(first, step, model.config.vocab_size)
    return load | result | gpu_peak(device)


def run_llama(path: Path) -> dict:
    import numpy as np
    from llama_cpp import Llama

    threads = len(os.sched_getaffinity(0))
    start = time.perf_counter()
    llm = Llama(
        str(path),
        n_ctx=PROMPT_TOKENS + NEW_TOKENS + WARMUP_TOKENS,
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=PROMPT_TOKENS,
        verbose=False,
    )
    load = {"load_s": time.perf_counter() - start, "load_peak_gb": peak_rss_gb()}
    llm.eval(list(range(WARMUP_TOKENS)))
    llm.reset()

    def last_logits():  # without logits_all, llama.cpp keeps the logits of the batch's last token only
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),)).copy()

    def first(ids):
        llm.eval(ids)
        return last_logits()

    def step(token):
        llm.eval([token])
        return last_logits()

    return load | timed_generation(first, step, llm.n_vocab())


def worker(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("who", choices=["ours", "transformers", "llama"])
    parser.add_argument("file", type=Path)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--lean", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.who == "ours":
        result = run_ours(args.file, args.dtype, args.lean, args.device)
    elif args.who == "transformers":
        result = run_transformers(args.file, args.device)
    else:
        result = run_llama(args.file)
    print("RESULT " + json.dumps(result | {"peak_gb": peak_rss_gb()}))


# ---- the driver --------------------------------------------------------------------------------------
def measure(python: str, args: list[str], path: Path) -> dict:
    same_start(path)
    cmd = [python, __file__, "--worker", args[0], str(path), *args[1:]]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(lines[-1][len("RESULT ") :])


def best_of(runs: list[dict]) -> dict:
    """The fastest time and speed of several runs of one contender, and the highest peak."""
    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    best = dict(runs[0])
    for r in runs[1:]:
        best["load_s"] = min(best["load_s"], r["load_s"])
        for key in ("prompt_tok_s", "gen_tok_s"):
            best[key] = max(best[key], r[key])
        for key in ("load_peak_gb", "peak_gb", "gpu_peak_gb"):
            if key in best:
                best[key] = max(best[key], r[key])
    return best


def same_start(path: Path) -> None:
    """Every contender starts alike: the page cache dropped where allowed (root on Linux; a full cache
    made the kernel reclaim while a loader faulted in its 11 GB), then the file read once, so that
    none pays the disk."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3")
    except OSError:
        pass
    with open(path, "rb") as f:
        while f.read(64 << 20):
            pass


def llama_python(given: str | None) -> str | None:
    for python in [given] if given else [sys.executable]:
        if subprocess.run([python, "-c", "import llama_cpp"], capture_output=True).returncode == 0:
            return python
    return None


def table(results: dict[str, dict]) -> list[str]:
    base = results.get(BASELINE, {})
    gpu = any("gpu_peak_gb" in r for r in results.values())
    lines = [
        "| run | load s | load peak GB | prompt tok/s | generate tok/s | peak GB | "
        + ("GPU peak GB | " if gpu else "")
        + "load speed-up | prompt / transformers | generate / transformers |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""),
    ]
    for label, r in results.items():
        if "error" in r:
            lines.append(f"| {label} | failed: {r['error'][:120]} |||||||| ")
            continue

        def ratio(key, invert=False):
            if key not in base or label == BASELINE:
                return ""
            return f"{(base[key] / r[key]) if invert else (r[key] / base[key]):.2f}x"

        lines.append(
            f"| {label} | {r['load_s']:.1f} | {r['load_peak_gb']:.2f} | {r['prompt_tok_s']:.1f} | "
            f"{r['gen_tok_s']:.2f} | {r['peak_gb']:.2f} | "
            + (f"{r.get('gpu_peak_gb', float('nan')):.2f} | " if gpu else "")
            + f"{ratio('load_s', invert=True)} | "
            f"{ratio('prompt_tok_s')} | {ratio('gen_tok_s')} |"
        )
    return lines


def targets(results: dict[str, dict]) -> list[str]:
    ours, lean, bf16, hf = (
        results.get(k, {}) for k in ("ours float32", "ours lean (float32)", "ours bfloat16", BASELINE)
    )
    if any("error" in r or not r for r in (ours, lean, bf16, hf)):
        return ["Targets: not all runs finished."]
    checks = [
        (
            f"load >= 5x faster than transformers: {hf['load_s'] / ours['load_s']:.2f}x",
            hf["load_s"] / ours["load_s"] >= 5,
        ),
        (
            f"at no more peak memory (float32): {ours['peak_gb']:.2f} vs {hf['peak_gb']:.2f} GB",
            ours["peak_gb"] <= hf["peak_gb"],
        ),
        (f"bfloat16 load peak < 7 GB: {bf16['load_peak_gb']:.2f} GB", bf16["load_peak_gb"] < 7),
        (f"lean peak < 3 GB (load, prompt and generation): {lean['peak_gb']:.2f} GB", lean["peak_gb"] < 3),
        (
            f"prompt within 1.3x of transformers (float32): {ours['prompt_tok_s'] / hf['prompt_tok_s']:.2f}x",
            ours["prompt_tok_s"] * 1.3 >= hf["prompt_tok_s"],
        ),
        (
            f"generation within 1.3x of transformers (float32): {ours['gen_tok_s'] / hf['gen_tok_s']:.2f}x",
            ours["gen_tok_s"] * 1.3 >= hf["gen_tok_s"],
        ),
    ]
    same = sum(a == b for a, b in zip(ours["tokens"], hf["tokens"]))
    lines = [f"- {'met' if ok else 'MISSED'}: {text}" for text, ok in checks]
    return lines + [f"- greedy tokens, ours float32 vs transformers: {same} of {NEW_TOKENS} equal"]


def machine(device: str = "cpu") -> str:
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    mem = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1]) / 2**20
    return (
        f"{len(os.sched_getaffinity(0))} cores ({cpu}), {mem:.0f} GiB; Python {platform.python_version()}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}"
        + (f"; device {torch.cuda.get_device_name(device)}" if device.startswith("cuda") else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, type=Path, help="where tools/make_3b_gguf.py wrote the files")
    parser.add_argument("--mixes", default="Q4_K_M,Q8_0,Q4_0")
    parser.add_argument("--runs", default=",".join(CONTENDERS), help="which contenders (comma-separated)")
    parser.add_argument("--llama-python", default=None, help="a Python that can import llama_cpp")
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="runs of each contender (fresh processes); the table keeps the best time and "
        "the highest peak (a virtual machine's first touch of memory varies by 2x)",
    )
    parser.add_argument("--write", type=Path, default=None, help="also write the report to this file")
    parser.add_argument("--device", default="cpu", help="where the torch contenders run (cuda: on the GPU)")
    args = parser.parse_args()
    llama = llama_python(args.llama_python)
    random_blocks = any("random-blocks" in p.name for p in args.dir.glob("*.gguf"))
    report = [
        "# StableLM-3B-shaped GGUF files: load, memory, speed",
        "",
        "```",
        "python tools/make_3b_gguf.py --out DIR" + (f" --mixes {args.mixes} --random-blocks" if random_blocks else ""),
        f"python tools/bench_3b.py --dir DIR --mixes {args.mixes} --repeat {args.repeat}"
        + (f" --device {args.device}" if args.device != "cpu" else "")
        + (" --llama-python PY" if args.llama_python else ""),
        "```",
        "",
        machine(args.device) + ".",
        f"Prompt {PROMPT_TOKENS} tokens, then {NEW_TOKENS} greedy tokens with the KV cache, "
        f"batch 1. Peak = VmHWM (file pages included). Before every run the page cache was dropped "
        f"({'done' if os.access('/proc/sys/vm/drop_caches', os.W_OK) else 'not allowed here'}) and the file read once. "
        f"Each contender ran {args.repeat} times, each time in a fresh process: the fastest time and the "
        f"highest peak are shown.",
        "",
    ]
    print("\n".join(report), flush=True)
    for mix in args.mixes.split(","):
        path = next(args.dir.glob(f"*.{mix}.gguf"), None)
        if path is None:
            sys.exit(f"no *.{mix}.gguf in {args.dir}: run tools/make_3b_gguf.py --out {args.dir}")
        results = {}
        for label in args.runs.split(","):
            if label == "llama.cpp" and (llama is None or args.device != "cpu"):
                continue
            python = llama if label == "llama.cpp" else sys.executable
            worker_args = CONTENDERS[label] + (["--device", args.device] if label != "llama.cpp" else [])
            results[label] = best_of([measure(python, worker_args, path) for _ in range(args.repeat)])
            print(
                f"  {mix} {label}: {json.dumps({k: v for k, v in results[label].items() if k != 'tokens'})}",
                file=sys.stderr,
                flush=True,
            )
        section = [f"## {mix}: {path.stat().st_size / 1e9:.2f} GB", "", *table(results), "", *targets(results), ""]
        print("\n".join(section), flush=True)
        report += section
    if args.device != "cpu":
        report.append(f"llama.cpp: not run (the torch contenders ran on {args.device}).")
    elif llama is None:
        report.append("llama.cpp: not measured (no Python with llama_cpp; pass --llama-python).")
    report.append(
        "Why a target is missed, and where the time goes: "
        "[benchmarks.md, The 3B model at full size](benchmarks.md#the-3b-model-at-full-size)."
    )
    if args.write:
        args.write.write_text("\n".join(report) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
