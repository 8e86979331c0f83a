"""stablelm-lab: open a StableLM GGUF file and see everything inside, step by step."""

from . import quants

__all__ = ["quants"]
