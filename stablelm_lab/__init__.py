"""stablelm-lab: open a StableLM GGUF file and see everything inside, step by step.

The parts, in the order of their imports; each imports only from the parts above it
(tests/test_architecture.py holds them to it):

    quants/     every ggml type: block layout, readable and fast decoders, llama.cpp's quantizers
                (knows nothing of files: a format turns blocks of bytes into weights and back)
    container/  a GGUF file's bytes: metadata, tensor table, raw blocks, handed to quants/ to decode
    model/      StableLM in torch: its config, its math, how its weights are held, loading from GGUF
    mixes/      llama.cpp's recipes (Q4_K_M, ...) for a whole file, and llama-quantize's output
    text/       tokenizer, sampling, generation
    analysis/   error, perplexity, KL divergence, the importance matrix, benchmarks
    lab/        figures, diagrams and widgets for the notebooks
    train/      how the embedded default was trained (``python -m stablelm_lab.train``)
    testing.py  synthetic StableLM GGUF files of any shape, for tests, tools and trying the notebooks
    cli.py      the ``stablelm-lab`` command
"""

from . import quants
from .analysis.imatrix import collect_imatrix, load_imatrix, save_imatrix
from .container.default_model import default_gguf, embedded_gguf
from .container.gguf_file import GGUFError, GGUFFile
from .mixes.quantize_file import quantize_gguf
from .model import StableLM
from .model.config import StableLMConfig
from .text.generate import generate
from .text.tokenizer import load_tokenizer

__all__ = [
    "quants",
    "GGUFFile",
    "GGUFError",
    "StableLM",
    "StableLMConfig",
    "load_tokenizer",
    "generate",
    "default_gguf",
    "embedded_gguf",
    "collect_imatrix",
    "save_imatrix",
    "load_imatrix",
    "quantize_gguf",
]
