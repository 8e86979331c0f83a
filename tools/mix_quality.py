"""What each llama.cpp mix costs the embedded default model: size, bits per weight, perplexity and KL
divergence against the unquantized file, on its held-out text, as llama-perplexity measures them.

    python tools/mix_quality.py [--model data/tiny-stablelm.F16.gguf] [--text-file data/heldout.txt]
                                [--n-ctx 512] [--imatrix FILE] [--out docs/mix_quality.md]

Each mix is made with stablelm_lab.quantize_gguf (byte for byte llama-quantize's file) in a temporary
directory; each quantized model runs over the same chunks as the base model. The table is printed (and
written to --out) with the ranking by mean KL divergence beside llama.cpp's published ranking by
perplexity increase (llama.cpp's quantize README, Llama-3-8B, in /work/shared/FACTS.md), and every pair
of mixes whose order differs from it. With --imatrix FILE (an importance matrix: `stablelm-lab imatrix`'s or
llama-imatrix's), each mix is made a second time with it (`llama-quantize --imatrix`) and scored the same way:
the table gains the with-imatrix columns.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from stablelm_lab import StableLM, load_tokenizer
from stablelm_lab.analysis.imatrix import imatrix_arguments
from stablelm_lab.analysis.metrics import kl_divergence
from stablelm_lab.mixes.quantize_file import quantize_gguf
from stablelm_lab.mixes.rules import MIXES

#: llama.cpp's published order, worst to best (perplexity increase on Llama-3-8B).
PUBLISHED_ORDER = [
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_0",
    "Q4_1",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_0",
    "Q5_1",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "Q8_0",
]


def measure(base_path: Path, text: str, n_ctx: int | None, work: Path, imatrix_path: Path | None = None) -> list[dict]:
    base, tokenizer = StableLM.from_gguf(base_path), load_tokenizer(base_path)
    imatrix = imatrix_arguments(imatrix_path, base_path) if imatrix_path else None
    rows = []
    for mix in MIXES:
        start = time.perf_counter()
        path = work / f"{mix}.gguf"
        choices = quantize_gguf(base_path, path, mix, progress=False)
        kld = kl_divergence(base, StableLM.from_gguf(path), text, tokenizer=tokenizer, n_ctx=n_ctx)
        n_weights = sum(c.n_elements for c in choices)
        row = {
            "mix": mix,
            "bytes": path.stat().st_size,
            "bpw": 8 * sum(c.nbytes for c in choices) / n_weights,
            "ppl": kld.ppl.value,
            "ppl_err": kld.ppl.uncertainty,
            "ppl_base": kld.ppl_base.value,
            "kld": kld.mean,
            "top1": kld.top1_agreement,
            "tokens": len(kld.per_position),
        }
        if imatrix is not None:
            quantize_gguf(base_path, path, mix, progress=False, **imatrix)
            kld = kl_divergence(base, StableLM.from_gguf(path), text, tokenizer=tokenizer, n_ctx=n_ctx)
            row.update(
                {
                    "i_bytes": path.stat().st_size,
                    "i_ppl": kld.ppl.value,
                    "i_ppl_err": kld.ppl.uncertainty,
                    "i_kld": kld.mean,
                    "i_top1": kld.top1_agreement,
                }
            )
        rows.append(row)
        print(f"{mix:7s} done in {time.perf_counter() - start:.1f} s", flush=True)
    return rows


def table(rows: list[dict], base_path: Path, imatrix_path: Path | None = None) -> str:
    base_bytes = base_path.stat().st_size
    with_imatrix = "i_kld" in rows[0]
    lines = [
        f"Base: {base_path.name} ({base_bytes / 1e6:.2f} MB), PPL(base) = {rows[0]['ppl_base']:.4f}, "
        f"{rows[0]['tokens']} scored tokens."
        + (f" With imatrix: made with {imatrix_path.name}." if with_imatrix else ""),
        "",
        "| mix | size (MB) | bits/weight | PPL | ΔPPL | mean KLD | same top p |"
        + (
            " size with imatrix | ΔPPL with imatrix | mean KLD with imatrix | same top p with imatrix |"
            if with_imatrix
            else ""
        ),
        "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|---:|" if with_imatrix else ""),
    ]
    for r in sorted(rows, key=lambda r: r["kld"], reverse=True):
        line = (
            f"| {r['mix']} | {r['bytes'] / 1e6:.2f} | {r['bpw']:.3f} | {r['ppl']:.4f} ± {r['ppl_err']:.4f} "
            f"| {r['ppl'] - r['ppl_base']:+.4f} | {r['kld']:.6f} | {100 * r['top1']:.2f}% |"
        )
        if with_imatrix:
            line += (
                f" {r['i_bytes'] / 1e6:.2f} | {r['i_ppl'] - r['ppl_base']:+.4f} | {r['i_kld']:.6f} "
                f"| {100 * r['i_top1']:.2f}% |"
            )
        lines.append(line)
    if with_imatrix:
        better = [r["mix"] for r in rows if r["i_kld"] < r["kld"]]
        lines += [
            "",
            f"The importance matrix lowers the mean KLD in {len(better)} of {len(rows)} mixes"
            + (
                f" (not in {', '.join(r['mix'] for r in rows if r['mix'] not in better)})"
                if len(better) < len(rows)
                else ""
            )
            + ".",
        ]
    return "\n".join(lines)


def ranking(rows: list[dict]) -> str:
    ours = [r["mix"] for r in sorted(rows, key=lambda r: r["kld"], reverse=True)]
    swapped = [
        (a, b) for i, a in enumerate(PUBLISHED_ORDER) for b in PUBLISHED_ORDER[i + 1 :] if ours.index(a) > ours.index(b)
    ]
    lines = [
        "",
        "Worst to best by mean KLD here:   " + " < ".join(ours),
        "llama.cpp's published order:      " + " < ".join(PUBLISHED_ORDER),
    ]
    if swapped:
        kld = {r["mix"]: r["kld"] for r in rows}
        lines.append(
            "Pairs in the other order here (published worse one first, with our KLDs): "
            + "; ".join(f"{a} {kld[a]:.5f} vs {b} {kld[b]:.5f}" for a, b in swapped)
        )
    else:
        lines.append("Same order as llama.cpp's.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="the unquantized GGUF (default: the embedded default, F16)")
    parser.add_argument("--text-file", type=Path, help="the evaluation text (default: its held-out text)")
    parser.add_argument("--n-ctx", type=int, default=None, help="tokens per chunk (default: min(512, the model's))")
    parser.add_argument("--imatrix", type=Path, help="also make each mix with this importance matrix and score it")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()
    from stablelm_lab.container import default_model

    base_path = args.model or default_model.embedded_gguf("F16")
    text = args.text_file.read_text(encoding="utf-8") if args.text_file else default_model.held_out_text()
    with tempfile.TemporaryDirectory() as work:
        rows = measure(base_path, text, args.n_ctx, Path(work), args.imatrix)
    report = table(rows, base_path, args.imatrix) + "\n" + ranking(rows) + "\n"
    print(report)
    if args.out:
        args.out.write_text(report, encoding="utf-8")


if __name__ == "__main__":
    main()
