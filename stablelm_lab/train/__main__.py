"""Rebuild the embedded default model in data/ (about 20 minutes on 2 quiet CPU cores).

    python -m stablelm_lab.train                            # everything in data/: GGUFs, log, evaluation
    python -m stablelm_lab.train --quick --out /tmp/tiny    # every step, with 20 small training steps

Steps: corpus (the Python stdlib) -> tokenizer -> training -> data/tiny-stablelm.F16.gguf as llama.cpp's
converter writes it -> evaluation of that file as loaded by the package -> the quantized mixes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import sys
import sysconfig
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer

from .. import StableLM, generate, load_tokenizer
from ..container.default_model import DATA_DIR, MODEL_NAME
from ..mixes.quantize_file import quantize_gguf
from . import corpus, evaluate
from .corpus import Document
from .export import write_gguf
from .trainer import QUICK, Batches, Settings, fresh_model, timed, train

VARIANTS = ["Q8_0", "Q4_0", "Q4_K_M", "Q3_K_M", "Q2_K"]  # what the notebooks open besides F16
PROMPTS = {
    "code": 'def read_lines(path):\n    """Return the lines of the file at *path*."""\n',
    "english": "The while statement is used for",
}
CONTINUATION_TOKENS = 48
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "seed": 0}
DESCRIPTION = (
    "A tiny StableLM-3B-4E1T-shaped model trained by stablelm-lab on the Python standard library "
    "(PSF License); for learning, not for use."
)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = QUICK if args.quick else Settings()
    if args.seed is not None:
        settings = dataclasses.replace(settings, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    documents = corpus.stdlib_documents()
    f16 = out / f"{MODEL_NAME}.F16.gguf"
    if not args.skip_training:
        train_and_write(documents, settings, out, f16)
    results = evaluation(f16, corpus.split(documents)[1], (out / "heldout.txt").read_text(encoding="utf-8"), settings)
    results["training"] = {"settings": dataclasses.asdict(settings), **last_log_row(out / "training_log.tsv")}
    write_json(out / "evaluation.json", results)
    if not args.no_variants:
        results["file_bytes"] = make_variants(f16, out)
        write_json(out / "evaluation.json", results)
    say(json.dumps({k: v for k, v in results.items() if k != "training"}, indent=1, ensure_ascii=False))


def train_and_write(documents: list[Document], settings: Settings, out: Path, f16: Path) -> None:
    """Tokenizer, training, the F16 GGUF, the held-out text and the run's facts, into ``out``."""
    training, held_out = corpus.split(documents)
    say(
        f"corpus: {len(training)} documents for training, {len(held_out)} held out "
        f"(sha256 {corpus.fingerprint(documents)[:16]})"
    )
    tokenizer = corpus.train_tokenizer(training, settings.n_vocab)
    code, english = token_streams(tokenizer, training)
    say(f"tokens: {len(code):,} of code, {len(english):,} of English")

    model = fresh_model(settings)
    with open(out / "training_log.tsv", "w") as log:
        log_rows, seconds = timed(train, model, Batches(code, english, settings), settings, log)
    say(f"trained {settings.steps} steps in {seconds / 60:.1f} min, final loss {log_rows[-1]['loss']:.3f}")

    write_gguf(f16, model, tokenizer, MODEL_NAME, DESCRIPTION)
    heldout_text = corpus.held_out_text(documents)
    (out / "heldout.txt").write_text(heldout_text, encoding="utf-8")
    shutil.copyfile(Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt", out / "LICENSE-PSF.txt")
    check_tokenizer_round_trip(f16, tokenizer, heldout_text)
    write_json(out / "training_run.json", run_facts(documents, seconds))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m stablelm_lab.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="where the files go (default: the package's data/)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 20 small training steps (needs --out)")
    p.add_argument("--seed", type=int, help="another seed than the default")
    p.add_argument("--no-variants", action="store_true", help="skip the quantized mixes")
    p.add_argument(
        "--skip-training", action="store_true", help="keep the F16 model in --out; evaluate it and remake the mixes"
    )
    args = p.parse_args(argv)
    if args.out is None:
        if args.quick:
            p.error("--quick needs --out, so that a smoke run never replaces the shipped model in data/")
        args.out = str(DATA_DIR)
    return args


def write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def last_log_row(log: Path) -> dict:
    """The training log's last row: {"step": ..., "tokens": ..., "loss": ..., "lr": ...}."""
    header, *rows = log.read_text().splitlines()
    return {k: float(v) if k in ("loss", "lr") else int(v) for k, v in zip(header.split("\t"), rows[-1].split("\t"))}


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def token_streams(tokenizer: Tokenizer, documents: list[Document]) -> tuple[np.ndarray, np.ndarray]:
    """(code tokens, English tokens): each document's tokens followed by <|endoftext|>, as uint16."""
    end = tokenizer.token_to_id("<|endoftext|>")
    streams = []
    for english in (False, True):
        encoded = tokenizer.encode_batch([d.text for d in documents if d.english == english])
        streams.append(np.array([t for e in encoded for t in [*e.ids, end]], dtype=np.uint16))
    return streams[0], streams[1]


def check_tokenizer_round_trip(path: Path, trained: Tokenizer, text: str) -> None:
    """The tokenizer rebuilt from the file's metadata must tokenize exactly as the one trained."""
    if load_tokenizer(path).encode(text).ids != trained.encode(text).ids:
        raise RuntimeError(f"{path}: the tokenizer read back from the file differs from the trained one")


# ---- evaluation of the shipped file ------------------------------------------------------------------
def evaluation(path: Path, held_out: list[Document], heldout_text: str, settings: Settings) -> dict:
    torch.set_num_threads(settings.threads)
    model, tok = StableLM.from_gguf(path), load_tokenizer(path)
    english_text = "\n\n".join(d.text.strip("\n") for d in held_out if d.english) + "\n"
    first_window = tok.encode(heldout_text).ids[: settings.n_ctx]
    first_copy, second_copy = evaluate.repeat_loss_drop(model)
    return {
        "held_out_bytes": len(heldout_text.encode()),
        "bits_per_byte": {
            "model": round(evaluate.bits_per_byte(model, tok, heldout_text), 4),
            "gzip -9": round(evaluate.gzip_bits_per_byte(heldout_text), 4),
        },
        "english_bits_per_byte": {
            "model": round(evaluate.bits_per_byte(model, tok, english_text), 4),
            "gzip -9": round(evaluate.gzip_bits_per_byte(english_text), 4),
        },
        "previous_token_scores": rounded(evaluate.previous_token_scores(model, first_window)),
        "induction_scores": rounded(evaluate.induction_scores(model)),
        "repeated_random_tokens_loss": {"first copy": round(first_copy, 3), "second copy": round(second_copy, 3)},
        "continuations": continuations(model, tok),
    }


def continuations(model: StableLM, tok: Tokenizer) -> dict:
    out = {}
    for kind, prompt in PROMPTS.items():
        out[kind] = {
            "prompt": prompt,
            "greedy": generate(model, tok, prompt, max_new_tokens=CONTINUATION_TOKENS, do_sample=False),
            "sampled": generate(model, tok, prompt, max_new_tokens=CONTINUATION_TOKENS, **SAMPLING),
        }
    return out


def rounded(scores: np.ndarray) -> list[list[float]]:
    return np.round(scores.astype(np.float64), 3).tolist()


def make_variants(f16: Path, out: Path) -> dict:
    """The quantized mixes, made by the package's twin of llama-quantize: their sizes in bytes.
    (How much each costs in quality: the quant-error notebook and ``stablelm-lab compare``.)"""
    sizes = {"F16": f16.stat().st_size}
    for mix in VARIANTS:
        path = out / f"{MODEL_NAME}.{mix}.gguf"
        quantize_gguf(f16, path, mix)
        sizes[mix] = path.stat().st_size
    return sizes


def run_facts(documents: list[Document], seconds: float) -> dict:
    """What differs from machine to machine: kept apart from the files that must reproduce exactly."""
    return {
        "training_seconds": round(seconds, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "corpus_sha256": corpus.fingerprint(documents),
    }


if __name__ == "__main__":
    main()
