"""The disk lane's costs: a context's chunks kept on local disk by an earlier session, read back at load time.

The local copy is fp16 K and V per (chunk, layer) cell, each cell padded to `LOCAL_ALIGN` so every read is
page-aligned (O_DIRECT); a layer's cells are contiguous, so a block of consecutive chunks is one request per
layer (the executor's `localkv` writes exactly this layout). Read seconds come from a storage profile.
"""

from __future__ import annotations

import numpy as np

from sparkv.core.config import LocalKV
from sparkv.core.costs import LocalCosts
from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec
from sparkv.core.request import Request
from sparkv.cost_models.profiles import DeviceProfile
from sparkv.cost_models.storage import load_storage

LOCAL_ALIGN = 4096  # bytes: each cell starts on a page (O_DIRECT buffers and offsets)
LOCAL_CODEC = "fp16"  # how the local copy is stored: what an fp16 stream would deliver


def local_cell_bytes(kv_heads: int, head_dim: int, tokens: int) -> int:
    """Bytes one cell of `tokens` tokens takes on disk: fp16 K then V, padded to `LOCAL_ALIGN`."""
    raw = 2 * kv_heads * tokens * head_dim * 2
    return -(-raw // LOCAL_ALIGN) * LOCAL_ALIGN


def local_costs(request: Request, spec: ModelSpec, profile: DeviceProfile, local: LocalKV) -> LocalCosts | None:
    """The disk lane's costs for `local` on this request (None when it names no chunk); bad input is a UserError."""
    try:
        chunks = local.chunk_set(request.num_chunks)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if not chunks:
        return None
    grid = np.zeros((request.num_chunks, spec.num_layers), dtype=np.int64)
    for c in chunks:
        grid[c, :] = local_cell_bytes(spec.num_kv_heads, spec.head_dim, request.chunk_len(c))
    _, install_s_per_byte = profile.install_cost(LOCAL_CODEC)
    storage = load_storage(local.storage)
    return LocalCosts(chunks, grid, storage.curve(), local.queue_depth, install_s_per_byte, storage.read_w)
