"""StableLM in readable torch: layers.py (one class per idea), model.py (the stack); weights.py (how a
layer's weights are held: floats, or lean quantized rows) and loading.py (from GGUF) are the storage."""

from .cache import KVCache
from .hooks import Tap
from .layers import MLP, Attention, Block, Embedding, LayerNorm, Linear, Rotary
from .model import StableLM

__all__ = ["StableLM", "KVCache", "Tap", "Attention", "Block", "Embedding", "LayerNorm", "Linear", "MLP", "Rotary"]
