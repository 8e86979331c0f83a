"""Record llama.cpp's greedy continuation of the embedded default, for the test that compares ours with it.

    /work/llamavenv/bin/python tools/llama_cpp_check.py

(any environment with numpy and llama-cpp-python; neither torch nor this package is needed). Loads
data/tiny-stablelm.F16.gguf in llama.cpp (K and V cache in F32, one thread, no flash attention),
tokenizes the code prompt of data/evaluation.json with llama.cpp's own tokenizer, and continues it
greedily for 32 tokens, taking the argmax of the logits at each step. Writes data/llama_cpp_greedy.json:
the prompt's tokens, the new tokens, and at each step the two best tokens with their logits, so that
where the package and llama.cpp part, the test can show it is at a near-tie.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "data"
N_NEW = 32
GGML_TYPE_F32 = 0
COMMAND = "/work/llamavenv/bin/python tools/llama_cpp_check.py"


def greedy(model_path: Path, prompt: str, n_new: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(
        str(model_path),
        n_ctx=256,
        n_batch=256,
        n_ubatch=256,
        logits_all=True,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        n_threads=1,
        n_threads_batch=1,
        flash_attn=False,
        verbose=False,
    )
    prompt_tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
    llm.eval(prompt_tokens)
    new, top2 = [], []
    for _ in range(n_new):
        logits = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        first, second = np.argsort(-logits, kind="stable")[:2]
        top2.append([int(first), float(logits[first]), int(second), float(logits[second])])
        new.append(int(first))
        llm.eval([int(first)])
    text = llm.detokenize(new).decode("utf-8", errors="replace")
    llm.close()
    return {
        "prompt_tokens": prompt_tokens,
        "greedy_tokens": new,
        "greedy_text": text,
        "top2": top2,
        "top2_columns": ["token", "logit", "runner-up", "logit"],
    }


def main() -> None:
    import llama_cpp

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(DATA / "tiny-stablelm.F16.gguf"))
    p.add_argument("--out", default=str(DATA / "llama_cpp_greedy.json"))
    args = p.parse_args()
    model = Path(args.model)
    prompt = json.loads((model.parent / "evaluation.json").read_text())["continuations"]["code"]["prompt"]
    record = {
        "command": COMMAND,
        "llama_cpp_python": llama_cpp.__version__,
        "model": model.name,
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "settings": "n_ctx 256, K and V cache F32, 1 thread, no flash attention, argmax of the logits",
        "prompt": prompt,
        **greedy(model, prompt, N_NEW),
    }
    Path(args.out).write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"{record['greedy_text']!r}\n-> {args.out}")


if __name__ == "__main__":
    main()
