"""Bytes of KV cells on the wire, per model and codec."""

from __future__ import annotations

import numpy as np

from sparkv.core.model import ModelSpec
from sparkv.core.request import Request


def cell_wire_bytes(spec: ModelSpec, tokens: int, codec: str) -> int:
    """Wire bytes of one cell (K and V of `tokens` tokens at one layer) under `codec`."""
    from sparkv.cost_models.codecs import get_codec

    shape = (spec.num_kv_heads, tokens, spec.head_dim)
    dtype = np.dtype(np.float16 if spec.dtype_bytes == 2 else np.float32)
    return 2 * get_codec(codec).wire_bytes(shape, dtype)


def cell_bytes_grid(spec: ModelSpec, request: Request, codec: str) -> np.ndarray:
    """[chunks, layers] wire bytes of every cell of a request."""
    per_len: dict[int, int] = {}
    grid = np.empty((request.num_chunks, spec.num_layers), dtype=np.int64)
    for c in range(request.num_chunks):
        n = request.chunk_len(c)
        if n not in per_len:
            per_len[n] = cell_wire_bytes(spec, n, codec)
        grid[c, :] = per_len[n]
    return grid
