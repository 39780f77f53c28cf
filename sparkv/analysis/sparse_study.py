"""Block-sparse local prefill on real documents: the KV it produces, and per cell its kept blocks and wall time.

`sparse_prefill_kv` computes a context chunk by chunk and layer by layer with a `LayerwisePrefill` under a
block-sparse `AttentionSpec`, timing every cell (chunk, layer) with `perf_counter` around the real compute,
and records what the attention kept. `sparkv quality --attention SPEC` compares the answers on that KV
with the dense ones; `fit_sparsity_profile` turns the records into the per-layer model the simulator uses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from torch import Tensor

from sparkv.core.attention import AttentionSpec
from sparkv.core.request import CellBlock
from sparkv.executor.model.models import LoadedModel
from sparkv.executor.model.prefill import LayerwisePrefill

KV = list[tuple[Tensor, Tensor]]  # per layer (K, V) [num_kv_heads, tokens, head_dim]


@dataclass(frozen=True)
class CellRecord:
    """One computed cell under block-sparse attention (measured)."""

    document: str  # dataset[index]
    chunk: int
    layer: int
    start: int  # first token position of the chunk
    tokens: int  # tokens in the chunk
    kept_blocks: int  # (head, query block, key block) triples the selection kept
    allowed_blocks: int  # triples the causal mask allows (dense work)
    computed_blocks: int  # triples multiplied (heads padded to the query block's largest count)
    wall_s: float  # measured seconds of the whole layer for this chunk (projections, attention, MLP)

    @property
    def computed_fraction(self) -> float:
        return self.computed_blocks / self.allowed_blocks if self.allowed_blocks else 1.0


def sparse_prefill_kv(
    loaded: LoadedModel, context_ids: Tensor, spec: AttentionSpec, chunk_tokens: int, document: str = ""
) -> tuple[KV, list[CellRecord]]:
    """KV [KV, T, hd] per layer of the context computed with `spec`, and one record per cell."""
    if not spec.sparse:
        raise ValueError(f"sparse_prefill_kv needs a block-sparse attention, got {spec.name!r}")
    query = context_ids[-1:]  # never run: LayerwisePrefill wants one, the study stops before the query
    prefill = LayerwisePrefill(loaded, context_ids, query, chunk_tokens, max_new_tokens=1, attention=spec)
    records: list[CellRecord] = []
    for c in range(prefill.num_chunks):
        start, end = prefill.chunk_span(c)
        for layer in range(prefill.num_layers):
            t0 = time.perf_counter()
            prefill.compute_block(CellBlock.one(c, layer, layer + 1))
            wall = time.perf_counter() - t0
            stats = prefill.block_stats.get((c, c + 1, layer))
            if stats is None:  # a window layer: dense
                continue
            records.append(CellRecord(document, c, layer, start, end - start, stats.kept, stats.allowed,
                                      stats.computed, wall))  # fmt: skip
    t = len(context_ids)
    return [(k.clone(), v.clone()) for k, v in prefill.cache_tensors(t)], records


@dataclass(frozen=True)
class WallFit:
    """Measured seconds of a sparse cell on this machine: wall = base + per_token * tokens + per_block * computed."""

    base_s: float
    per_token_s: float
    per_block_s: float  # seconds per (head, query block, key block) multiplied
    heldout_rel_err: float  # median |predicted - measured| / measured, each document predicted from the others
    cells: int


def _lstsq(records: list[CellRecord]) -> np.ndarray:
    x = np.array([[1.0, r.tokens, r.computed_blocks] for r in records])
    y = np.array([r.wall_s for r in records])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    return np.asarray(coef)


def fit_cell_wall(records: list[CellRecord]) -> WallFit:
    """Least squares of each cell's wall time on its tokens and computed blocks; leave-one-document-out error."""
    if len(records) < 3:
        raise ValueError(f"need at least 3 cells to fit, got {len(records)}")
    coef = _lstsq(records)
    errs: list[float] = []
    for doc in sorted({r.document for r in records}):
        train = [r for r in records if r.document != doc]
        if len(train) < 3:
            continue
        c = _lstsq(train)
        errs += [abs(c[0] + c[1] * r.tokens + c[2] * r.computed_blocks - r.wall_s) / r.wall_s
                 for r in records if r.document == doc]  # fmt: skip
    return WallFit(float(coef[0]), float(coef[1]), float(coef[2]),
                   float(np.median(errs)) if errs else float("nan"), len(records))  # fmt: skip
