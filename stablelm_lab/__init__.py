"""stablelm-lab: open a StableLM GGUF file and see everything inside, step by step."""

from . import quants
from .config import StableLMConfig
from .default_model import default_gguf, embedded_gguf
from .generate import generate
from .gguf_file import GGUFError, GGUFFile
from .imatrix import collect_imatrix, load_imatrix, save_imatrix
from .model import StableLM
from .quantize_file import quantize_gguf
from .tokenizer import load_tokenizer

__all__ = ["quants", "GGUFFile", "GGUFError", "StableLM", "StableLMConfig", "load_tokenizer", "generate",
           "default_gguf", "embedded_gguf", "collect_imatrix", "save_imatrix", "load_imatrix",
           "quantize_gguf"]
