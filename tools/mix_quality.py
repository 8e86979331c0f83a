"""What each llama.cpp mix costs the embedded default model: size, bits per weight, perplexity and KL
divergence against the unquantized file, on its held-out text, as llama-perplexity measures them.

    python tools/mix_quality.py [--model data/tiny-stablelm.F16.gguf] [--text-file data/heldout.txt]
                                [--n-ctx 512] [--out docs/mix_quality.md]

Each mix is made with stablelm_lab.quantize_gguf (byte for byte llama-quantize's file) in a temporary
directory; each quantized model runs over the same chunks as the base model. The table is printed (and
written to --out) with the ranking by mean KL divergence beside llama.cpp's published ranking by
perplexity increase (llama.cpp's quantize README, Llama-3-8B, in /work/shared/FACTS.md), and every pair
of mixes whose order differs from it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from stablelm_lab import StableLM, load_tokenizer
from stablelm_lab.metrics import kl_divergence
from stablelm_lab.mixes import MIXES
from stablelm_lab.quantize_file import quantize_gguf

#: llama.cpp's published order, worst to best (perplexity increase on Llama-3-8B).
PUBLISHED_ORDER = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M", "Q5_0", "Q5_1",
                   "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0"]


def measure(base_path: Path, text: str, n_ctx: int | None, work: Path) -> list[dict]:
    base, tokenizer = StableLM.from_gguf(base_path), load_tokenizer(base_path)
    rows = []
    for mix in MIXES:
        start = time.perf_counter()
        path = work / f"{mix}.gguf"
        choices = quantize_gguf(base_path, path, mix, progress=False)
        kld = kl_divergence(base, StableLM.from_gguf(path), text, tokenizer=tokenizer, n_ctx=n_ctx)
        n_weights = sum(c.n_elements for c in choices)
        rows.append({"mix": mix, "bytes": path.stat().st_size, "bpw": 8 * sum(c.nbytes for c in choices) / n_weights,
                     "ppl": kld.ppl.value, "ppl_err": kld.ppl.uncertainty, "ppl_base": kld.ppl_base.value,
                     "kld": kld.mean, "top1": kld.top1_agreement, "tokens": len(kld.per_position)})
        print(f"{mix:7s} done in {time.perf_counter() - start:.1f} s", flush=True)
    return rows


def table(rows: list[dict], base_path: Path) -> str:
    base_bytes = base_path.stat().st_size
    lines = [f"Base: {base_path.name} ({base_bytes / 1e6:.2f} MB), PPL(base) = {rows[0]['ppl_base']:.4f}, "
             f"{rows[0]['tokens']} scored tokens.", "",
             "| mix | size (MB) | bits/weight | PPL | ΔPPL | mean KLD | same top p |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: r["kld"], reverse=True):
        lines.append(f"| {r['mix']} | {r['bytes'] / 1e6:.2f} | {r['bpw']:.3f} | {r['ppl']:.4f} ± {r['ppl_err']:.4f} "
                     f"| {r['ppl'] - r['ppl_base']:+.4f} | {r['kld']:.6f} | {100 * r['top1']:.2f}% |")
    return "\n".join(lines)


def ranking(rows: list[dict]) -> str:
    ours = [r["mix"] for r in sorted(rows, key=lambda r: r["kld"], reverse=True)]
    swapped = [(a, b) for i, a in enumerate(PUBLISHED_ORDER) for b in PUBLISHED_ORDER[i + 1:]
               if ours.index(a) > ours.index(b)]
    lines = ["", "Worst to best by mean KLD here:   " + " < ".join(ours),
             "llama.cpp's published order:      " + " < ".join(PUBLISHED_ORDER)]
    if swapped:
        kld = {r["mix"]: r["kld"] for r in rows}
        lines.append("Pairs in the other order here (published worse one first, with our KLDs): " + "; ".join(
            f"{a} {kld[a]:.5f} vs {b} {kld[b]:.5f}" for a, b in swapped))
    else:
        lines.append("Same order as llama.cpp's.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="the unquantized GGUF (default: the embedded default, F16)")
    parser.add_argument("--text-file", type=Path, help="the evaluation text (default: its held-out text)")
    parser.add_argument("--n-ctx", type=int, default=None, help="tokens per chunk (default: min(512, the model's))")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    from stablelm_lab import default_model

    base_path = args.model or default_model.embedded_gguf("F16")
    text = args.text_file.read_text(encoding="utf-8") if args.text_file else default_model.held_out_text()
    with tempfile.TemporaryDirectory() as work:
        rows = measure(base_path, text, args.n_ctx, Path(work))
    report = table(rows, base_path) + "\n" + ranking(rows) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
