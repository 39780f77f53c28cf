"""Bytes of KV cells on the wire, per model, dtype and codec.

A cell is the K and V of one chunk at one layer, each [num_kv_heads, tokens, head_dim] in the
model's KV dtype (`ModelSpec.dtype`: bf16 counts as 2 bytes like fp16). The codec decides the wire
bytes (`KVCodec.wire_bytes`, exact for fixed-size codecs, an estimate after entropy coding), per
array role (K or V, quantisers treat them differently) and per layer (per-layer codecs).
"""

from __future__ import annotations

import numpy as np

from sparkv.core.model import ModelSpec
from sparkv.core.request import Request


def kv_numpy_dtype(spec: ModelSpec) -> np.dtype:
    """The numpy dtype that stands for the spec's KV dtype on the wire (bf16 -> float16: same size)."""
    return np.dtype(np.float16 if spec.dtype_bytes == 2 else np.float32)


def cell_wire_bytes(spec: ModelSpec, tokens: int, codec: str, layer: int = 0) -> int:
    """Wire bytes of one cell (K and V of `tokens` tokens at `layer`) under `codec`."""
    from sparkv.cost_models.codecs import get_codec

    c = get_codec(codec)
    shape = (spec.num_kv_heads, tokens, spec.head_dim)
    dtype = kv_numpy_dtype(spec)
    return c.wire_bytes(shape, dtype, kind="k", layer=layer) + c.wire_bytes(shape, dtype, kind="v", layer=layer)


def cell_bytes_grid(spec: ModelSpec, request: Request, codec: str) -> np.ndarray:
    """[chunks, layers] wire bytes of every cell of a request."""
    grid = np.empty((request.num_chunks, spec.num_layers), dtype=np.int64)
    cache: dict[tuple[int, int], int] = {}
    per_layer = ":" in codec or "," in codec  # only per-layer codecs vary by layer
    for c in range(request.num_chunks):
        n = request.chunk_len(c)
        for layer in range(spec.num_layers) if per_layer else (0,):
            key = (n, layer)
            if key not in cache:
                cache[key] = cell_wire_bytes(spec, n, codec, layer)
            if per_layer:
                grid[c, layer] = cache[key]
            else:
                grid[c, :] = cache[key]
    return grid


def context_kv_bytes(spec: ModelSpec, context_tokens: int, codec: str = "raw") -> int:
    """Wire bytes of a whole context's KV (all layers) under `codec`; "raw" is the uncompressed size."""
    return sum(cell_wire_bytes(spec, context_tokens, codec, layer) for layer in range(spec.num_layers))
