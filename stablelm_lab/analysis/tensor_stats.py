"""Facts about a tensor's blocks that the quant-error tools report next to their plots.

    bad = nonfinite_blocks(g.raw("blk.0.attn_q.weight"), g.tensor_info["blk.0.attn_q.weight"].qtype)
    # array([17, 4093]): blocks 17 and 4093 (in file order) decode to NaN or ±inf

A block whose fp16 scale is inf or NaN decodes, in ggml as here, to inf/NaN weights (and ±inf times a zero
quant gives NaN). An error metric or a histogram over such a tensor is NaN or silently drops them; the tools
name these blocks instead.
"""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from .. import quants
from ..quants.tuning import CHUNK_WEIGHTS


def nonfinite_blocks(raw: np.ndarray, qtype: GGMLQuantizationType | str | int) -> np.ndarray:
    """Indices of the blocks whose decoded weights include NaN or ±inf, counting blocks over all rows in
    file order (for F32/F16/BF16 a block is one weight). Block ``i`` of a (rows, row_bytes) tensor sits in
    row ``i // blocks_per_row``, with ``blocks_per_row = row_bytes // type_size``."""
    fmt = quants.get(qtype)
    blocks = np.asarray(raw, dtype=np.uint8).reshape(-1, fmt.type_size)
    step = max(1, CHUNK_WEIGHTS // fmt.block_size)  # decode a bounded chunk at a time
    found = [
        start + np.flatnonzero(~np.isfinite(fmt.dequantize(blocks[start : start + step])).all(axis=1))
        for start in range(0, len(blocks), step)
    ]
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
