"""A context's KV kept on local disk from an earlier session: written once, read back with O_DIRECT at load time.

Layout (the one `sparkv.cost_models.local` costs): one file `cells.kv` beside `local.json`; cell (c, l) sits
at byte ((l * C) + c) * stride, where stride is a full chunk's cell, `local_cell_bytes(spec, chunk_tokens)`:
K [KV heads, tokens, head dim] then V, fp16, padded to `LOCAL_ALIGN`. A layer's cells are contiguous, so a
block of consecutive chunks is one read per layer. Chunks not kept are holes (never read). Reads bypass the
page cache (O_DIRECT, page-aligned buffers) and run through a pool of `queue_depth` threads, each issuing its
share with `os.preadv` (`kvfile.submit_reads`, the decode reader's path); the time taken is the real time of
the reads and of installing the cells.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sparkv.core.errors import UserError
from sparkv.core.request import CellBlock, Request
from sparkv.cost_models.local import LOCAL_ALIGN, local_cell_bytes
from sparkv.executor.model.kvfile import aligned_buffer, open_direct, submit_reads

CellSource = Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (chunk, layer) -> K, V [KV, tokens, hd]
DATA_FILE = "cells.kv"
META_FILE = "local.json"


@dataclass(frozen=True)
class LocalLayout:
    """What a local copy holds and where each cell sits."""

    tag: str  # the KV store it was copied from (its context key): a copy of another context is refused
    context_tokens: int
    chunk_tokens: int
    num_layers: int
    kv_heads: int
    head_dim: int
    chunks: tuple[int, ...]  # chunks kept (every layer)

    @property
    def num_chunks(self) -> int:
        return -(-self.context_tokens // self.chunk_tokens)

    def chunk_len(self, chunk: int) -> int:
        return Request(self.context_tokens, 1, self.chunk_tokens).chunk_len(chunk)

    def cell_bytes(self, chunk: int) -> int:
        return local_cell_bytes(self.kv_heads, self.head_dim, self.chunk_len(chunk))

    @property
    def stride(self) -> int:
        return local_cell_bytes(self.kv_heads, self.head_dim, self.chunk_tokens)

    def offset(self, chunk: int, layer: int) -> int:
        return (layer * self.num_chunks + chunk) * self.stride


def read_layout(folder: Path) -> LocalLayout | None:
    meta = folder / META_FILE
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text())
        return LocalLayout(**{**data, "chunks": tuple(data["chunks"])})
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"local KV layout {meta} is malformed: {exc}") from exc


def write_local_kv(folder: Path, layout: LocalLayout, cell: CellSource) -> None:
    """Write `layout.chunks` of a context (K and V per cell from `cell(chunk, layer)`) as fp16, O_DIRECT, then
    the layout last (a copy without its layout is never used)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META_FILE).unlink(missing_ok=True)
    except OSError as exc:
        raise UserError(f"local KV folder {folder} is not writable: {exc.strerror}") from exc
    fd = open_direct(folder / DATA_FILE, os.O_RDWR | os.O_CREAT | os.O_TRUNC, "local KV file")
    try:
        os.ftruncate(fd, layout.num_layers * layout.num_chunks * layout.stride)
        buf = aligned_buffer(layout.stride)
        for layer in range(layout.num_layers):
            for c in layout.chunks:
                k, v = cell(c, layer)
                n = layout.cell_bytes(c)
                raw = np.concatenate([np.asarray(k, np.float16).reshape(-1), np.asarray(v, np.float16).reshape(-1)])
                view = np.frombuffer(buf, dtype=np.uint8, count=n)
                view[: raw.nbytes] = raw.view(np.uint8)
                view[raw.nbytes :] = 0
                if os.pwrite(fd, memoryview(buf)[:n], layout.offset(c, layer)) != n:
                    raise UserError(f"short write to local KV file {folder / DATA_FILE}")
        os.fsync(fd)
    except OSError as exc:
        raise UserError(f"cannot write local KV under {folder}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    data = {**asdict(layout), "chunks": list(layout.chunks)}
    (folder / META_FILE).write_text(json.dumps(data, indent=1) + "\n")


def ensure_local_kv(folder: Path, layout: LocalLayout, cell: CellSource) -> bool:
    """Make sure `folder` holds a local copy covering `layout` (written if absent or different); True if written."""
    have = read_layout(folder)
    if have is not None and (folder / DATA_FILE).is_file():
        same = {**asdict(have), "chunks": ()} == {**asdict(layout), "chunks": ()}
        if same and set(layout.chunks) <= set(have.chunks):
            return False
    write_local_kv(folder, layout, cell)
    return True


class LocalKVReader:
    """Blocks of cells read from a local copy with O_DIRECT through `queue_depth` threads (one request per layer)."""

    def __init__(self, folder: Path, queue_depth: int = 1) -> None:
        layout = read_layout(folder)
        if layout is None:
            raise UserError(f"local KV folder {folder} has no {META_FILE} (write it with sparkv run --local-chunks)")
        self.layout, self.queue_depth = layout, queue_depth
        self.fd = open_direct(folder / DATA_FILE, os.O_RDONLY, "local KV file")
        need = layout.num_layers * layout.num_chunks * layout.stride
        if os.fstat(self.fd).st_size < need:
            os.close(self.fd)
            raise UserError(f"local KV file {folder / DATA_FILE} is truncated: fewer than {need} bytes")
        self.pool = ThreadPoolExecutor(max_workers=queue_depth, thread_name_prefix="localkv")
        self._kept = frozenset(layout.chunks)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        os.close(self.fd)

    def read(self, block: CellBlock) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """Read `block` (one request per layer, all issued at once), then yield (chunk, layer, K, V) fp16 views."""
        lay = self.layout
        missing = [c for c in range(block.chunk_lo, block.chunk_hi) if c not in self._kept]
        if missing:
            raise UserError(f"local KV holds chunks {list(lay.chunks)}, not {missing}")
        sizes = [lay.cell_bytes(c) for c in range(block.chunk_lo, block.chunk_hi)]
        length = sum(sizes)
        buffers = [aligned_buffer(length) for _ in range(block.layer_lo, block.layer_hi)]
        requests = [(lay.offset(block.chunk_lo, layer), [memoryview(buf)[:length]])
                    for layer, buf in zip(range(block.layer_lo, block.layer_hi), buffers, strict=True)]  # fmt: skip
        submit_reads(self.pool, self.queue_depth, self.fd, requests).wait()
        for layer, buf in zip(range(block.layer_lo, block.layer_hi), buffers, strict=True):
            at = 0
            for c, size in zip(range(block.chunk_lo, block.chunk_hi), sizes, strict=True):
                n = lay.chunk_len(c)
                count = lay.kv_heads * n * lay.head_dim
                cell = np.frombuffer(buf, dtype=np.float16, count=2 * count, offset=at)
                shape = (lay.kv_heads, n, lay.head_dim)
                yield c, layer, cell[:count].reshape(shape), cell[count:].reshape(shape)
                at += size


__all__ = ["LOCAL_ALIGN", "LocalKVReader", "LocalLayout", "ensure_local_kv", "read_layout", "write_local_kv"]
