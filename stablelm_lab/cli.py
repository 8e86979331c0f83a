"""The stablelm-lab command: the package's tools for a terminal or a script.

    stablelm-lab inspect FILE                   metadata, tensor table with types, bits per weight
    stablelm-lab dequant FILE TENSOR [--npy X]  a tensor's statistics (and its float32 values as .npy)
    stablelm-lab quantize SRC DST MIX           llama-quantize's mixes: Q4_0 ... Q4_K_M ... Q8_0 [--imatrix F]
    stablelm-lab imatrix FILE TEXT -o OUT       llama-imatrix's importance matrix of a model over a text
    stablelm-lab explain-mix FILE MIX           the type each tensor would get, and the rule that chose it
    stablelm-lab generate FILE PROMPT           sample a continuation
    stablelm-lab compare FILE_A FILE_B          per-tensor error, and KL divergence on a text
    stablelm-lab bench                          dequantization speed of every format

Every subcommand has --help. A bad argument or a bad file is one line on stderr and a non-zero exit;
set STABLELM_LAB_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path

PROG = "stablelm-lab"


class _Parser(argparse.ArgumentParser):
    """argparse, with errors on one line (no usage block): "stablelm-lab quantize: error: ..."."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into `head`
        sys.stderr.close()
        return 0
    except Exception as e:  # the promise: one line, never a traceback
        if os.environ.get("STABLELM_LAB_DEBUG"):
            raise
        print(f"{PROG} {args.command}: error: {_message(e)}", file=sys.stderr)
        return 1
    return 0


def _message(e: Exception) -> str:
    if isinstance(e, KeyError) and e.args:
        return str(e.args[0])
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename else e.strerror
    known = (ValueError, NotImplementedError, RuntimeError)
    text = str(e).splitlines()[0] if str(e) else ""
    return text if isinstance(e, known) and text else f"{type(e).__name__}: {text}"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description=__doc__.split("\n\n")[0],
        epilog="Run `stablelm-lab COMMAND --help` for the options of each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="metadata, tensor table with types, bits per weight")
    p.add_argument("file", help="a GGUF file")
    p.add_argument("--all-metadata", action="store_true", help="print long arrays (the vocabulary...) in full")
    p.set_defaults(run=cmd_inspect)

    p = sub.add_parser("dequant", help="decode one tensor: statistics, optionally saved as .npy")
    p.add_argument("file")
    p.add_argument("tensor", help="a tensor name, e.g. blk.0.attn_q.weight")
    p.add_argument("--npy", metavar="OUT", help="save the float32 values to this .npy file")
    p.set_defaults(run=cmd_dequant)

    from .mixes.rules import MIXES

    p = sub.add_parser("quantize", help="quantize a StableLM GGUF with one of llama.cpp's mixes")
    p.add_argument("src", help="the input, best F16 or F32")
    p.add_argument("dst", help="the output file")
    p.add_argument("mix", help=f"one of {', '.join(MIXES)}")
    p.add_argument("--allow-requantize", action="store_true", help="allow a quantized input (errors compound)")
    p.add_argument(
        "--imatrix",
        metavar="FILE",
        help="weigh each column by this importance matrix "
        "(llama-imatrix's .gguf or legacy .dat, or `stablelm-lab imatrix`'s)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_quantize)

    p = sub.add_parser("imatrix", help="collect the importance matrix of a model over a text, as llama-imatrix")
    p.add_argument("file", help="the model, best F16 or F32")
    p.add_argument("text", help="a text file (llama-imatrix -f)")
    p.add_argument("-o", "--output", required=True, help="the imatrix GGUF file to write")
    p.add_argument(
        "-c",
        "--chunk-size",
        type=int,
        default=None,
        help="tokens per chunk (llama-imatrix -c; default 512, or the model's context if shorter)",
    )
    p.add_argument("--chunks", type=int, default=None, help="use only the first N chunks")
    p.add_argument("--process-output", action="store_true", help="collect output.weight too")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_imatrix)

    p = sub.add_parser("explain-mix", help="the type each tensor would get under a mix, and why")
    p.add_argument("file")
    p.add_argument("mix", help=f"one of {', '.join(MIXES)}")
    p.set_defaults(run=cmd_explain_mix)

    p = sub.add_parser("generate", help="continue a prompt")
    p.add_argument("file")
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=64)
    # the model card's generate call: temperature 0.75, top_p 0.95, and transformers' default top_k 50
    p.add_argument("--temperature", type=float, default=0.75)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=50, help="0 keeps every token (default: 50, as transformers)")
    p.add_argument("--greedy", action="store_true", help="always the most likely token (no sampling)")
    p.add_argument("--seed", type=int, default=None, help="make sampling repeatable")
    p.set_defaults(run=cmd_generate)

    p = sub.add_parser("compare", help="per-tensor error of FILE_B against FILE_A, and KL divergence on a text")
    p.add_argument("file_a", help="the reference, e.g. the F16 file")
    p.add_argument("file_b", help="e.g. a quantized file")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--text", help="the text for KL divergence (default: the embedded model's held-out text)")
    text.add_argument("--text-file", help="read the text from this file")
    p.add_argument("--n-ctx", type=int, default=None, help="tokens per chunk (default: min(512, the model's))")
    p.add_argument("--no-kl", action="store_true", help="only the per-tensor errors")
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("bench", help="dequantization speed of every format, as ratios to gguf-py")
    from .analysis.bench import add_dequant_arguments

    add_dequant_arguments(p)
    p.set_defaults(run=cmd_bench)
    return parser


# ---- the commands ----------------------------------------------------------------------------------------
def cmd_inspect(args: argparse.Namespace) -> None:
    from gguf import LlamaFileType

    from .container.gguf_file import GGUFFile

    g = GGUFFile(args.file)
    size = Path(args.file).stat().st_size
    file_type = g.metadata.get("general.file_type")
    try:
        file_type = f"{LlamaFileType(file_type).name} ({file_type})"
    except ValueError:
        pass
    print(
        f"{args.file}: {size / 1e6:.2f} MB, architecture {g.architecture}, file type {file_type}, "
        f"{len(g.tensors)} tensors, {len(g.metadata)} metadata keys"
    )
    print("\nmetadata:")
    for key, value in g.metadata.items():
        print(f"  {key} = {_short(value, args.all_metadata)}")
    print("\ntensors:")
    rows = [
        (t.name, t.qtype.name, "x".join(map(str, t.shape)), f"{t.nbytes:,}", f"{t.bits_per_weight:.4g}")
        for t in g.tensors
    ]
    print(_table(["name", "type", "shape", "bytes", "bits/weight"], rows, indent=2))
    n_weights, n_bytes = sum(t.n_elements for t in g.tensors), sum(t.nbytes for t in g.tensors)
    by_type = Counter(t.qtype.name for t in g.tensors)
    print(
        f"\n{n_weights:,} weights in {n_bytes:,} tensor bytes: {8 * n_bytes / n_weights:.4f} bits per weight; "
        + ", ".join(f"{n} {name}" for name, n in by_type.most_common())
    )


def _short(value, full: bool) -> str:
    if isinstance(value, list) and not full and len(value) > 8:
        return f"[{', '.join(map(repr, value[:5]))}, ... {len(value)} items]"
    text = repr(value)
    return text if full or len(text) <= 200 else text[:200] + "..."


def cmd_dequant(args: argparse.Namespace) -> None:
    import numpy as np

    from .analysis.tensor_stats import nonfinite_blocks
    from .container.gguf_file import GGUFFile

    g = GGUFFile(args.file)
    info = g.tensor_info.get(args.tensor)
    if info is None:
        close = [n for n in g.tensor_info if args.tensor in n][:5]
        raise KeyError(
            f"{args.file} has no tensor {args.tensor!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    w = g.dequantize(args.tensor)
    finite = w[np.isfinite(w)].astype(np.float64)
    print(
        f"{info.name}: {info.qtype.name}, shape {'x'.join(map(str, info.shape))}, {info.nbytes:,} bytes, "
        f"{info.bits_per_weight:.4g} bits per weight"
    )
    stats = [
        ("min", finite.min()),
        ("max", finite.max()),
        ("mean", finite.mean()),
        ("std", finite.std()),
        ("rms", np.sqrt(np.mean(finite**2))),
        ("max |w|", np.abs(finite).max()),
    ]
    print("  " + ", ".join(f"{name} {value:.6g}" for name, value in stats))
    print(
        f"  zeros {np.mean(w == 0):.2%}, distinct values {len(np.unique(w)):,}, "
        f"non-finite blocks {len(nonfinite_blocks(g.raw(args.tensor), info.qtype))}"
    )
    if args.npy:
        np.save(args.npy, w)
        print(f"  saved float32 {w.shape} to {args.npy}")


def cmd_quantize(args: argparse.Namespace) -> None:
    from .mixes.quantize_file import quantize_gguf
    from .mixes.rules import mix_size

    extra = {}
    if args.imatrix:
        from .analysis.imatrix import imatrix_arguments

        extra = imatrix_arguments(args.imatrix, args.src)
    choices = quantize_gguf(
        args.src, args.dst, args.mix, allow_requantize=args.allow_requantize, progress=not args.quiet, **extra
    )
    n_bytes, bpw = mix_size(choices)
    by_type = Counter(c.qtype.name for c in choices)
    print(
        f"wrote {args.dst}: {Path(args.dst).stat().st_size / 1e6:.2f} MB "
        f"(from {Path(args.src).stat().st_size / 1e6:.2f} MB), {bpw:.4f} bits per weight; "
        + ", ".join(f"{n} {name}" for name, n in by_type.most_common())
    )


def cmd_imatrix(args: argparse.Namespace) -> None:
    from .analysis.imatrix import collect_imatrix, save_imatrix

    text = Path(args.text).read_text(encoding="utf-8")
    imat = collect_imatrix(
        args.file,
        text,
        chunk_size=args.chunk_size,
        n_chunks=args.chunks,
        process_output=args.process_output,
        datasets=[args.text],
        progress=not args.quiet,
    )
    save_imatrix(imat, args.output)
    n_tokens = max(int(c.max()) for c in imat.counts.values())
    print(
        f"wrote {args.output}: {len(imat)} matrices, {imat.chunk_count} chunks of {imat.chunk_size} tokens "
        f"({n_tokens} tokens)"
    )


def cmd_explain_mix(args: argparse.Namespace) -> None:
    from .container.gguf_file import GGUFFile
    from .mixes.rules import explain_mix, get_mix, mix_size

    g = GGUFFile(args.file)
    mix = get_mix(args.mix)
    choices = explain_mix(g, mix)
    rows = [(c.name, "x".join(map(str, c.shape)), c.source_type.name, c.qtype.name, c.rule) for c in choices]
    print(_table(["tensor", "shape", "now", mix.name, "rule"], rows))
    n_bytes, bpw = mix_size(choices)
    print(
        f"\n{mix.name}: {n_bytes:,} tensor bytes, {bpw:.4f} bits per weight "
        f"(now {sum(t.nbytes for t in g.tensors):,} bytes)"
    )


def cmd_generate(args: argparse.Namespace) -> None:
    from .model import StableLM
    from .text.generate import generate
    from .text.tokenizer import load_tokenizer

    model, tokenizer = StableLM.from_gguf(args.file), load_tokenizer(args.file)
    print(args.prompt, end="", flush=True)
    for piece in generate(
        model,
        tokenizer,
        args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k or None,
        do_sample=not args.greedy,
        seed=args.seed,
        stream=True,
    ):
        print(piece, end="", flush=True)
    print()


def cmd_compare(args: argparse.Namespace) -> None:
    from .analysis.metrics import kl_divergence, tensor_error
    from .container.gguf_file import GGUFFile

    a, b = GGUFFile(args.file_a), GGUFFile(args.file_b)
    rows, skipped = [], []
    for t in a.tensors:
        other = b.tensor_info.get(t.name)
        if other is None or other.shape != t.shape:
            skipped.append(t.name)
            continue
        err = tensor_error(a.dequantize(t.name), b.dequantize(t.name))
        rows.append(
            (t.name, t.qtype.name, other.qtype.name, f"{err.rmse:.4g}", f"{err.snr_db:.2f}", f"{err.max_abs:.4g}")
        )
    print(_table(["tensor", "type A", "type B", "RMSE", "SNR dB", "max |err|"], rows))
    if skipped:
        print(f"\nnot compared (missing from B or another shape): {', '.join(skipped)}")
    if args.no_kl:
        return
    text = _compare_text(args)
    if text is None:
        print("\nno text for the KL divergence: give --text or --text-file")
        return
    kld = kl_divergence(args.file_a, args.file_b, text, n_ctx=args.n_ctx)
    print(
        f"\nKL divergence of B from A (A = base), {len(kld.per_position)} tokens in {kld.n_chunks} chunks "
        f"of {kld.n_ctx}:\n"
    )
    print(kld.report())


def _compare_text(args) -> str | None:
    if args.text is not None:
        return args.text
    if args.text_file is not None:
        return Path(args.text_file).read_text(encoding="utf-8")
    try:
        from .container.default_model import held_out_text

        return held_out_text()
    except (ImportError, OSError):
        return None


def cmd_bench(args: argparse.Namespace) -> None:
    from .analysis.bench import run_dequant

    print(run_dequant(args))


def _table(headers: list[str], rows: list[tuple], indent: int = 0) -> str:
    """A plain text table, columns as wide as their widest cell (the last one left free)."""
    widths = [max(len(str(x)) for x in column) for column in zip(headers, *rows)]
    lines = []
    for row in [headers, ["-" * w for w in widths], *rows]:
        cells = [str(x).ljust(w) for x, w in zip(row[:-1], widths)] + [str(row[-1])]
        lines.append(" " * indent + "  ".join(cells))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
