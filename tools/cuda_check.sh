#!/usr/bin/env bash
# The GPU checks, in one run on a machine with a CUDA device (CI has none): the torch kernels and the
# model tested there (tests parametrized by tests/devices.py grow a "cuda" case), the dequantization and
# forward benchmarks on the device, and a StableLM-3B-shaped Q4_K_M file loaded and run there.
#
#     tools/cuda_check.sh [tests] [dequant] [forward] [3b]       (no argument: all four)
#
# Needs python3 with torch (CUDA build), numpy, gguf, transformers, accelerate, tokenizers, tqdm, pytest
# (pytest-xdist if present). Logs go to $OUT (default cuda-check/); docs/cuda.md is written from them.
set -o pipefail
out=${OUT:-cuda-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
parts=${*:-tests dequant forward 3b}
python3 - <<'PY' 2>&1 | tee "$out/versions.txt"
import numpy, torch, transformers
from importlib.metadata import version
print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| numpy", numpy.__version__,
      "| gguf", version("gguf"), "| transformers", transformers.__version__)
PY
if [[ " $parts " == *" tests "* ]]; then
    parallel=$(python3 -c "import xdist" 2>/dev/null && echo "-n 8")
    python3 -m pytest -q -o addopts=-ra -p no:cacheprovider $parallel \
        tests/test_quants.py tests/test_model.py tests/test_full_size.py 2>&1 | tee "$out/pytest.log"
fi
if [[ " $parts " == *" dequant "* ]]; then
    python3 -m stablelm_lab.analysis.bench dequant --device cuda --repeat 10 2>&1 | tee "$out/dequant_ffn.md"
    python3 -m stablelm_lab.analysis.bench dequant --device cuda --rows 50304 --cols 2560 --repeat 3 \
        --formats Q4_0,Q8_0,Q4_K,Q6_K 2>&1 | tee "$out/dequant_embd.md"
fi
if [[ " $parts " == *" forward "* ]]; then
    python3 tools/bench_model.py --device cuda --layers 4 --tokens 512 2>&1 | grep -v "loading weights" \
        | tee "$out/forward.txt"
fi
if [[ " $parts " == *" 3b "* ]]; then
    dir=$(mktemp -d)
    python3 tools/make_3b_gguf.py --out "$dir" --mixes Q4_K_M --random-blocks 2>&1 | tee "$out/bench_3b.log"
    python3 tools/bench_3b.py --dir "$dir" --mixes Q4_K_M --repeat 1 --device cuda --write "$out/bench_3b_cuda.md" \
        --runs "ours float32,ours bfloat16,ours lean (float32),transformers float32" 2>&1 | tee -a "$out/bench_3b.log"
    rm -rf "$dir"
fi
