"""Write full-size StableLM-3B-4E1T-shaped GGUF files with random weights, for the benchmarks.

    .venv/bin/python tools/make_3b_gguf.py --out /tmp/3b                  # F16, then Q4_K_M, Q8_0, Q4_0
    .venv/bin/python tools/make_3b_gguf.py --out /tmp/3b --mixes Q4_K_M --layers 4
    .venv/bin/python tools/make_3b_gguf.py --out /tmp/3b --mixes Q4_K_M --random-blocks   # seconds
    .venv/bin/python tools/make_3b_gguf.py --out /tmp/3b --mixes Q4_K_M --random-blocks --layers 2 --tokenizer neox

The shape is the real model's (2560 wide, 32 layers, 32 heads of 80, rotary on 20 of them, FFN 6912,
vocab 50304, LayerNorm with bias, sequential residual). First an F16 file, as llama.cpp's converter writes
it (matrices F16, norms and biases F32), streamed one tensor at a time: the 2.8 B weights are never in
memory together. Then each mix is made from it by the project's own quantizer (``quantize_gguf``, the
file llama-quantize would write), the mixes in parallel processes. About 5.6 GB + 1.7 (Q4_K_M) + 3.0
(Q8_0) + 1.6 (Q4_0) GB of disk. Nothing of this size is committed.

With --random-blocks no F16 file and no quantizer: each mix's file gets the types llama.cpp's mix rules
choose (``mixes.choose_type``), filled with random blocks of plausible scales (``bench.realistic_blocks``).
Seconds instead of minutes, for load and speed measurements where a fresh machine has little time (the
weights then mean nothing; the logits still agree between runs on the same file).

--tokenizer: "placeholder" (default) writes numbered tokens, enough for llama.cpp to load the file; "neox"
a small working GPT-NeoX-style BPE (``stablelm_lab.testing.train_neox_tokenizer``), so that text goes in
and out as in the real model (tests/test_notebooks_other_files.py runs the notebooks on such a file).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter

from stablelm_lab import quants
from stablelm_lab.analysis.bench import realistic_blocks
from stablelm_lab.container.gguf_file import TensorInfo
from stablelm_lab.mixes.quantize_file import quantize_gguf
from stablelm_lab.mixes.rules import ModelShape, choose_type, get_mix
from stablelm_lab.model.config import STABLELM_3B_4E1T
from stablelm_lab.testing import TinySpec, add_metadata, random_weight_stream, train_neox_tokenizer, weight_shapes
from stablelm_lab.train.export import converter_dtype, converter_type

MIXES = ("Q4_K_M", "Q8_0", "Q4_0")


def stablelm_3b_spec(n_layer: int = 32) -> TinySpec:
    """StableLM-3B-4E1T's hyper-parameters (its config.json), with random weights."""
    fields = {f.name: getattr(STABLELM_3B_4E1T, f.name) for f in dataclasses.fields(TinySpec) if f.name != "seed"}
    return TinySpec(**(fields | {"n_layer": n_layer}))


def start_file(path: Path, spec: TinySpec, table: list[tuple], tokenizer: str = "placeholder") -> GGUFWriter:
    """A writer that has written the metadata and the tensor table (GGUFWriter.add_tensor_info's
    arguments for each tensor); the data follows one tensor at a time."""
    writer = GGUFWriter(str(path), "stablelm")
    if tokenizer == "neox":
        add_metadata(writer, spec, tokenizer=train_neox_tokenizer(1000))
    elif tokenizer == "placeholder":
        add_metadata(writer, spec, tokenizer="placeholder")
    else:
        raise ValueError(f"tokenizer {tokenizer!r}: choose 'placeholder' or 'neox'")
    for name, shape, dtype, nbytes, raw_dtype in table:
        writer.add_tensor_info(name, shape, dtype, nbytes, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    return writer


def write_f16(path: Path, spec: TinySpec, tokenizer: str = "placeholder") -> Path:
    """The F16 file, written tensor by tensor: the table first (names, shapes, sizes), then the data."""
    shapes = weight_shapes(spec)
    dtypes = {name: np.dtype(converter_type(name, shape)) for name, shape in shapes.items()}
    writer = start_file(
        path,
        spec,
        [
            (name, shape, dtypes[name], int(np.prod(shape)) * dtypes[name].itemsize, None)
            for name, shape in shapes.items()
        ],
        tokenizer,
    )
    from tqdm import tqdm

    for name, w in tqdm(random_weight_stream(spec), total=len(shapes), desc="F16 tensors"):
        writer.write_tensor_data(converter_dtype(name, w))
    writer.close()
    return path


def write_random_blocks(path: Path, spec: TinySpec, mix: str, tokenizer: str = "placeholder") -> Path:
    """The mix's types for every tensor, as random blocks; norms near 1, biases near 0 (float32)."""
    rules, model = get_mix(mix), ModelShape(spec.n_layer, spec.n_head // spec.n_head_kv)
    choices = [
        choose_type(TensorInfo(name, shape, T.F32, 0, 0), rules, model) for name, shape in weight_shapes(spec).items()
    ]
    writer = start_file(path, spec, [(c.name, c.shape, np.float32, c.nbytes, c.qtype) for c in choices], tokenizer)
    rng = np.random.default_rng(spec.seed)
    for i, c in enumerate(choices):
        if c.qtype == T.F32:
            w = rng.normal(1.0 if "_norm.weight" in c.name else 0.0, 0.02, c.shape).astype(np.float32)
            writer.write_tensor_data(w)
        else:
            writer.write_tensor_data(realistic_blocks(quants.get(c.qtype), c.shape[0], c.shape[-1], seed=i))
    writer.close()
    return path


def quantize(src: Path, mix: str) -> tuple[str, float]:
    start = time.perf_counter()
    quantize_gguf(src, src.with_name(src.name.replace("F16", mix)), mix, progress=True)
    return mix, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the files (not inside the repository)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--mixes", default=",".join(MIXES))
    parser.add_argument("--jobs", type=int, default=2, help="mixes quantized at once")
    parser.add_argument(
        "--random-blocks",
        action="store_true",
        help="write each mix directly, as random blocks of its types (no F16, no quantizer)",
    )
    parser.add_argument(
        "--tokenizer",
        choices=("placeholder", "neox"),
        default="placeholder",
        help="numbered placeholder tokens (enough for llama.cpp), or a small working BPE",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.random_blocks:
        for mix in filter(None, args.mixes.split(",")):
            start = time.perf_counter()
            dst = write_random_blocks(
                out / f"stablelm-3b-shaped-{args.layers}L-random-blocks.{mix}.gguf",
                stablelm_3b_spec(args.layers),
                mix,
                args.tokenizer,
            )
            print(f"{dst}: {dst.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s")
        return
    f16 = out / f"stablelm-3b-shaped-{args.layers}L.F16.gguf"
    if not f16.exists():
        start = time.perf_counter()
        write_f16(f16.with_suffix(".part"), stablelm_3b_spec(args.layers), args.tokenizer).rename(f16)
        print(f"{f16}: {f16.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s")
    mixes = [m for m in args.mixes.split(",") if m]
    with ProcessPoolExecutor(args.jobs) as pool:
        for mix, seconds in pool.map(quantize, [f16] * len(mixes), mixes):
            dst = f16.with_name(f16.name.replace("F16", mix))
            print(f"{dst}: {dst.stat().st_size / 1e9:.2f} GB in {seconds:.0f} s")


if __name__ == "__main__":
    main()
