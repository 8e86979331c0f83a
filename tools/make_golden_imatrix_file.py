"""Make the golden importance matrices that check stablelm_lab.analysis.imatrix against llama-imatrix itself.

    .venv/bin/python tools/make_golden_imatrix_file.py [--llama-bin /work/llama/build/bin] [--text-only]

1. data/calibration.txt: training documents of the embedded default (the Python standard library, not held
   out; stablelm_lab.train.corpus) joined by blank lines, about 40 KB: the text the notebook and the tests
   collect on. Rebuilt only on CPython 3.11.7 (the corpus the model was trained on); elsewhere the
   committed file is kept.
2. llama-imatrix over its first CHUNKS chunks of CHUNK_SIZE tokens, on the embedded default with every
   matrix in float32 (llama-quantize ... F32: the same weights as the F16 file, widened exactly), with
   the KV cache in F32 and flash attention off. Why F32: llama.cpp's CPU matmul with an F16 weight rounds
   its input activations to F16 first (the F16 type's vec_dot_type), and the KV cache is F16 by default,
   so the activations of every layer after the first would differ from a float32 forward pass by F16
   rounding, not by float32 summation order (measured: the F16 run's sums differ from the F32 run's by up
   to 6e-4 relative, from ffn_down of layer 0 on; ours differ from the F32 run's by at most 3.8e-6).
   --process-output collects output.weight as well.
   Written in both of llama-imatrix's formats, under tests/golden/llama_imatrix/: tiny.imatrix.gguf and
   tiny.imatrix.dat (the legacy format, --output-format dat), plus run.json (the command lines, the
   llama.cpp version).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden" / "llama_imatrix"
CALIBRATION = ROOT / "data" / "calibration.txt"
MODEL = ROOT / "data" / "tiny-stablelm.F16.gguf"
CHUNK_SIZE, CHUNKS = 128, 8
#: training documents (none held out): code and the reference manual's English, about 40 KB
DOCUMENTS = [
    "bisect.py",
    "topics/function",
    "colorsys.py",
    "topics/class",
    "textwrap.py",
    "topics/with",
    "keyword.py",
    "topics/while",
]
CORPUS_PYTHON = "3.11.7"


def calibration_text() -> str:
    from stablelm_lab.train import corpus

    docs = {d.name: d for d in corpus.stdlib_documents()}
    chosen = [docs[name] for name in DOCUMENTS]
    held = [d.name for d in chosen if d.held_out]
    if held:
        raise SystemExit(f"held-out documents in DOCUMENTS: {held}")
    return "\n\n".join(d.text.strip("\n") for d in chosen) + "\n"


def run(cmd: list[str]) -> str:
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stdout[-3000:] + done.stderr[-3000:])
    return done.stdout + done.stderr


def imatrix_command(bin_dir: Path, model: Path, out: Path, fmt: str) -> list[str]:
    return [
        str(bin_dir / "llama-imatrix"),
        "-m",
        str(model),
        "-f",
        str(CALIBRATION.relative_to(ROOT)),
        "-o",
        str(out),
        "--output-format",
        fmt,
        "-c",
        str(CHUNK_SIZE),
        "-b",
        str(CHUNK_SIZE),
        "--chunks",
        str(CHUNKS),
        "--process-output",
        "--no-ppl",
        "-ctk",
        "f32",
        "-ctv",
        "f32",
        "-fa",
        "off",
        "-t",
        "2",
        "--output-frequency",
        "1000",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-bin", type=Path, default=Path("/work/llama/build/bin"))
    parser.add_argument("--text-only", action="store_true", help="only (re)write data/calibration.txt")
    args = parser.parse_args()
    if platform.python_version() == CORPUS_PYTHON:
        CALIBRATION.write_text(calibration_text(), encoding="utf-8")
        print(f"wrote {CALIBRATION} ({CALIBRATION.stat().st_size} bytes)")
    if args.text_only:
        return
    GOLDEN.mkdir(parents=True, exist_ok=True)
    commands = {}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "tiny-stablelm.F32.gguf"
        commands["to_f32"] = [str(args.llama_bin / "llama-quantize"), str(MODEL.relative_to(ROOT)), str(f32), "F32"]
        run(commands["to_f32"])
        for fmt, name in (("gguf", "tiny.imatrix.gguf"), ("dat", "tiny.imatrix.dat")):
            out = Path(tmp) / name
            commands[fmt] = imatrix_command(args.llama_bin, f32, out, fmt)
            log = run(commands[fmt])
            shutil.copyfile(out, GOLDEN / name)
            print(f"wrote {GOLDEN / name} ({out.stat().st_size} bytes)")
    version = run([str(args.llama_bin / "llama-imatrix"), "--version"]).strip().splitlines()
    (GOLDEN / "run.json").write_text(
        json.dumps(
            {
                "commands": {k: [c.replace(tmp, "$TMP") for c in v] for k, v in commands.items()},
                "chunk_size": CHUNK_SIZE,
                "chunks": CHUNKS,
                "text": str(CALIBRATION.relative_to(ROOT)),
                "llama_cpp": [line for line in version if "version" in line or "built" in line],
                "log_tail": log.strip().splitlines()[-3:],
            },
            indent=1,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
