"""How many weights the decoders and quantizers handle per step: sizes whose temporaries stay in cache.

Each value was chosen by measurement (docs/benchmarks.md, "Notes moved from the quant kernels' code").
Tests and benchmarks change them through this module (``tuning.CHUNK_WEIGHTS = ...``).
"""

from __future__ import annotations

#: Blocks per step of the quantizers whose per-sub-block searches make (16, 16 · this) temporaries.
QUANTIZE_CHUNK_BLOCKS = 1024

#: Weights decoded per step of the vectorized numpy kernels on one thread: a step fits a core's L2 cache.
CHUNK_WEIGHTS = 1 << 17
#: The same when the numpy decoder runs on several threads: larger steps, as the Python between numpy's
#: loops holds the GIL.
CHUNK_WEIGHTS_THREADED = 1 << 19
#: The same for torch on the CPU, whose calls cost more overhead. On a GPU: one step.
CHUNK_WEIGHTS_TORCH_CPU = 1 << 21
