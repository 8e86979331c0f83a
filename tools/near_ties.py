"""How far every stored output that picks a token is from a tie, against the float noise between CPUs.

    .venv/bin/python tools/near_ties.py

Stored outputs must not hinge on the last bits of a float (another CPU computes other last bits). For each
place a stored output picks a token, the margin of that pick:
- greedy text: the gap between the top two logits at each step (notebook 08, data/README.md);
- sampled text: torch.multinomial draws one token as argmax(p / q) with q exponential draws from the seeded
  generator (checked here at every step), so the margin is log(p1/q1) - log(p2/q2) for the top two;
- notebook 08's top-8 table and 09's logit lens: the gaps between neighbouring logits they rank.
Then the noise: the logits of notebook 08's greedy path computed under torch's kernels for AVX-512, AVX2
and no SIMD (ATEN_CPU_CAPABILITY), each on 1 and 2 threads, in fresh processes; the largest difference.
"""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from stablelm_lab import StableLM, embedded_gguf, load_tokenizer

G = importlib.import_module("stablelm_lab.text.generate")
NB08 = "def fibonacci(n):\n    "
CODE = 'def read_lines(path):\n    """Return the lines of the file at *path*."""\n'
ENGLISH = "The while statement is used for"
NB09 = "import os\n\ndef read_file(path):\n    with open(path) as f:\n        return f.read()\n"
RUNS = [
    ("notebook 08, greedy", NB08, 40, dict(do_sample=False)),
    ("notebook 08, sampled", NB08, 40, dict(temperature=0.75, top_p=0.95, seed=0)),
    ("data/README, code, greedy", CODE, 48, dict(do_sample=False)),
    ("data/README, code, sampled", CODE, 48, dict(temperature=0.8, top_p=0.95, seed=0)),
    ("data/README, English, greedy", ENGLISH, 48, dict(do_sample=False)),
    ("data/README, English, sampled", ENGLISH, 48, dict(temperature=0.8, top_p=0.95, seed=0)),
]


def margins(model, tok, prompt, n, **kw) -> tuple[list[float], list[np.ndarray]]:
    """The margin of every pick while generating, and the logits of every step."""
    gaps, logits_seen = [], []
    real_next, real_multinomial = G.next_token, torch.multinomial

    def multinomial(probs, n_samples, generator=None):
        replay = torch.Generator()
        replay.set_state(generator.get_state())
        score = probs / torch.empty_like(probs).exponential_(1, generator=replay)
        token = real_multinomial(probs, n_samples, generator=generator)
        assert int(token) == int(score.argmax()), "torch.multinomial no longer draws argmax(p / q)"
        top = score.topk(2).values
        gaps.append(float(top[0].log() - top[1].log()))
        return token

    def next_token(logits, temperature=0.75, top_p=0.95, top_k=None, do_sample=True, generator=None):
        logits_seen.append(logits.float().numpy().copy())
        if not do_sample or temperature == 0:
            top = logits.float().topk(2).values
            gaps.append(float(top[0] - top[1]))
        return real_next(logits, temperature, top_p, top_k, do_sample, generator)

    G.next_token, torch.multinomial = next_token, multinomial
    try:
        G.generate(model, tok, prompt, max_new_tokens=n, **kw)
    finally:
        G.next_token, torch.multinomial = real_next, real_multinomial
    return gaps, logits_seen


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--dump":  # one noise run, in a fresh process
        torch.set_num_threads(int(os.environ["THREADS"]))
        path = embedded_gguf()
        _, seen = margins(StableLM.from_gguf(path), load_tokenizer(path), NB08, 40, do_sample=False)
        np.save(sys.argv[2], np.stack(seen))
        return
    path = embedded_gguf()
    model, tok = StableLM.from_gguf(path), load_tokenizer(path)
    print(f"{'stored output':32} {'picks':>5} {'smallest margin':>16}")
    for label, prompt, n, kw in RUNS:
        gaps, _ = margins(model, tok, prompt, n, **kw)
        print(f"{label:32} {len(gaps):5d} {min(gaps):16.4f}")
    with torch.no_grad():
        top = model(torch.tensor([tok.encode(NB08).ids]))[0, -1].topk(9).values
        print(f"{'notebook 08, top-8 table':32} {8:5d} {float((top[:-1] - top[1:]).min()):16.4f}")
        ids = tok.encode(NB09).ids
        _, acts = model.run_with_cache(torch.tensor([ids]))
        lens = [
            model.output(model.output_norm(acts[f"blk.{i}.l_out"][0])).topk(2, -1).values
            for i in range(model.config.n_layer)
        ]
        gap = min(float((t[:, 0] - t[:, 1]).min()) for t in lens)
        print(f"{'notebook 09, logit lens':32} {len(lens) * len(ids):5d} {gap:16.4f}")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for capability, threads in itertools.product(["AVX512", "AVX2", "DEFAULT"], [1, 2]):
            out = os.path.join(tmp, f"{capability}-{threads}.npy")
            env = {**os.environ, "ATEN_CPU_CAPABILITY": capability.lower(), "THREADS": str(threads)}
            subprocess.run([sys.executable, __file__, "--dump", out], env=env, check=True)
            runs[f"{capability}, {threads} thread(s)"] = np.load(out)
        noise = max(float(np.abs(a - b).max()) for a, b in itertools.combinations(runs.values(), 2))
    print(
        f"largest logit difference between {len(runs)} kernel/thread settings on notebook 08's greedy path: {noise:.2e}"
    )


if __name__ == "__main__":
    main()
