"""Make the golden logits that check the torch StableLM against llama.cpp itself.

    .venv/bin/python tools/make_golden_logits.py

(this package's environment with llama-cpp-python importable: tools/make_golden_quants.py shows how).
Writes under tests/golden/:
- tiny_model.F32.gguf: a 2-layer random StableLM written by stablelm_lab.testing (sequential residual,
  grouped KV heads, rotary on a quarter of each head),
- tiny_model.Q8_0.gguf and tiny_model.Q4_K_M.gguf: the same model quantized by llama.cpp's
  llama_model_quantize with its real mixes (Q4_K_M: Q6_K for some attn_v/ffn_down, Q6_K output...),
- tiny_model_logits.npz: the token ids and llama.cpp's logits for every position of each file
  (logits_all, K and V cache in F32, one thread).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
from gguf import LlamaFileType

from stablelm_lab.testing import TinySpec, write_gguf

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
SPEC = TinySpec(n_vocab=320, n_embd=256, n_layer=2, n_head=4, n_head_kv=2, n_ff=256, n_ctx=64, n_rot=16, seed=2026)
MIXES = {"Q8_0": LlamaFileType.MOSTLY_Q8_0, "Q4_K_M": LlamaFileType.MOSTLY_Q4_K_M}
N_TOKENS = 24
GGML_TYPE_F32 = 0


def quantize(src: Path, dst: Path, ftype: LlamaFileType) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(ftype)
    params.nthread = 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {dst.name}")


def llama_logits(path: Path, tokens: list[int]) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(
        str(path),
        n_ctx=SPEC.n_ctx,
        n_batch=SPEC.n_ctx,
        n_ubatch=SPEC.n_ctx,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        n_threads=1,
        n_threads_batch=1,
        flash_attn=False,
        verbose=False,
    )
    llm.eval(tokens)
    logits = np.array(llm.scores[: len(tokens)], dtype=np.float32)
    llm.close()
    return logits


def main() -> None:
    src = GOLDEN / "tiny_model.F32.gguf"
    write_gguf(src, SPEC, tokenizer="placeholder")
    files = {"F32": src}
    for name, ftype in MIXES.items():
        files[name] = GOLDEN / f"tiny_model.{name}.gguf"
        quantize(src, files[name], ftype)
    tokens = np.random.default_rng(SPEC.seed).integers(0, SPEC.n_vocab, N_TOKENS).tolist()
    logits = {f"logits/{name}": llama_logits(path, tokens) for name, path in files.items()}
    np.savez_compressed(GOLDEN / "tiny_model_logits.npz", tokens=np.array(tokens), **logits)
    for p in [*files.values(), GOLDEN / "tiny_model_logits.npz"]:
        print(f"{p.stat().st_size / 1e6:8.2f} MB  {p.relative_to(GOLDEN.parent.parent)}")


if __name__ == "__main__":
    main()
