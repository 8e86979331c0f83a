"""stablelm-lab: open a StableLM GGUF file and see everything inside, step by step."""

from . import quants
from .config import StableLMConfig
from .default_model import default_gguf, embedded_gguf
from .generate import generate
from .gguf_file import GGUFError, GGUFFile
from .model import StableLM
from .tokenizer import load_tokenizer

__all__ = ["quants", "GGUFFile", "GGUFError", "StableLM", "StableLMConfig", "load_tokenizer", "generate",
           "default_gguf", "embedded_gguf"]
