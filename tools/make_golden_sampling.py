"""Make the golden file that checks stablelm_lab.text.sampling's llama.cpp chain against llama.cpp's own samplers.

    PYTHONPATH=/path/to/llama_cpp_python-0.3.36 LLAMA_CPP_LIB_PATH=/path/to/llama.cpp/build/bin \\
        .venv/bin/python tools/make_golden_sampling.py   # with diskcache importable (llama_cpp's __init__ needs it)

llama-cpp-python's bindings are ctypes over libllama, so its source package with any libllama.so of the same
version will do. Each case runs llama.cpp's default chain (common/common.h: top-k, top-p, min-p,
temperature, then dist; the others are off at their defaults) through llama_sampler_chain on one logit
vector, and stores the tokens left in the array and the probabilities dist gives them. Writes
tests/golden/llama_cpp_sampling.npz; the tests read it and never need llama.cpp.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden" / "llama_cpp_sampling.npz"


def cases(rng: np.random.Generator) -> list[tuple[np.ndarray, tuple[int, float, float, float]]]:
    """(logits, (top_k, top_p, min_p, temperature)): llama-cli's defaults, random settings, exact cut-offs."""
    out = [(rng.normal(0, 3, 300).astype(np.float32), (40, 0.95, 0.05, 0.8)) for _ in range(8)]
    for _ in range(30):
        n = int(rng.choice([20, 300, 1500]))  # 1500 > 1024: top-p's partial-sort path
        logits = (rng.normal(0, rng.uniform(0.3, 6), n)).astype(np.float32)
        settings = (
            int(rng.choice([0, 1, 5, 40, 100])),
            float(rng.choice([0.3, 0.5, 0.8, 0.9, 0.95, 1.0])),
            float(rng.choice([0.0, 0.01, 0.05, 0.2])),
            float(rng.choice([0.3, 0.8, 1.0, 1.5])),
        )
        out.append((logits, settings))
    # equal logits give probabilities that are exact in float32: the running sum hits top_p exactly (which of
    # the tied tokens stay is up to std::partial_sort; the tests compare how many, and their probabilities)
    for n, top_p in [(4, 0.5), (4, 0.25), (4, 0.75), (8, 0.5), (8, 0.375)]:
        out.append((np.zeros(n, np.float32), (0, top_p, 0.0, 1.0)))
    # min-p exactly at a token: logit gap log(1/min_p) (the token at the floor stays)
    out.append((np.array([0.0, np.log(np.float32(0.25)), -3.0, -9.0], np.float32), (0, 1.0, 0.25, 1.0)))
    return out


def llama_chain(logits: np.ndarray, top_k: int, top_p: float, min_p: float, temperature: float):
    import llama_cpp as L

    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(top_k))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(top_p, 0))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(min_p, 0))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp_ext(temperature, 0.0, 1.0))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(1234))
    data = (L.llama_token_data * len(logits))(*[L.llama_token_data(i, float(x), 0.0) for i, x in enumerate(logits)])
    array = L.llama_token_data_array(data, len(logits), -1, False)
    L.llama_sampler_apply(chain, ctypes.byref(array))
    kept = [(array.data[i].id, array.data[i].p) for i in range(array.size)]
    L.llama_sampler_free(chain)
    kept.sort()
    return np.array([k for k, _ in kept], np.int32), np.array([p for _, p in kept], np.float32)


def main() -> None:
    arrays = {}
    for i, (logits, settings) in enumerate(cases(np.random.default_rng(20261206))):
        ids, probs = llama_chain(logits, *settings)
        arrays[f"{i}/logits"] = logits
        arrays[f"{i}/settings"] = np.array(settings, np.float64)
        arrays[f"{i}/kept"] = ids
        arrays[f"{i}/probs"] = probs
    np.savez_compressed(GOLDEN, **arrays)
    print(f"{GOLDEN.stat().st_size / 1e3:.1f} kB  {GOLDEN.name}: {len(arrays) // 4} cases")


if __name__ == "__main__":
    main()
