"""The KV server's read side of the on-disk KV stores (format in sparkv.executor.model.kvstore), without torch.

A root folder holds one directory per context, named by its hex key; each holds meta.json and per layer
k_{layer:03d}.npy / v_{layer:03d}.npy, arrays [num_kv_heads, context_tokens, head_dim], with the
checksums of sparkv.executor.net.storefmt. Files are read with pread, never memory-mapped, and every
tile a cell touches is checked before it is sent: a store found corrupt is refused (E_STORE_CORRUPT)
and forgotten, so the next request reopens it (rebuilt, or still refused).
A cell (c, l) for chunk size S is tokens [c*S, min((c+1)*S, T)) of layer l's K and V.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sparkv.core.request import CellBlock
from sparkv.executor.net.protocol import (
    E_BAD_REQUEST,
    E_INTERNAL,
    E_OUT_OF_RANGE,
    E_STORE_CORRUPT,
    E_UNKNOWN_CONTEXT,
)
from sparkv.executor.net.storefmt import (
    FORMAT_VERSION,
    StoreCorrupt,
    StoredArray,
    load_meta,
    open_arrays,
    seal_meta,
    write_array,
)

KEY_RE = re.compile(r"\A[0-9A-Za-z_-]{1,128}\Z")  # store names; no dots or slashes, so no path escapes


class RequestRefused(Exception):
    """A request the server answers with an ERROR frame (code from sparkv.executor.net.protocol)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class OpenStore:
    """One context's store: its shape and its checksummed per-layer files."""

    path: Path
    context_tokens: int  # T
    num_layers: int  # L
    shape: tuple[int, int, int]  # [num_kv_heads, T, head_dim] of every array
    dtype: np.dtype
    arrays: dict[tuple[str, int], StoredArray] = field(default_factory=dict)

    def num_chunks(self, chunk_tokens: int) -> int:
        return -(-self.context_tokens // chunk_tokens)

    def check(self, chunk_tokens: int, block: CellBlock) -> None:
        """RequestRefused unless every cell of `block` exists for chunks of `chunk_tokens` tokens."""
        if chunk_tokens <= 0:
            raise RequestRefused(E_BAD_REQUEST, f"chunk_tokens must be positive, got {chunk_tokens}")
        chunks = self.num_chunks(chunk_tokens)
        if block.chunk_hi > chunks or block.layer_hi > self.num_layers:
            raise RequestRefused(E_OUT_OF_RANGE, f"cells {block} outside c[0:{chunks}]xl[0:{self.num_layers}] "
                                 f"(T={self.context_tokens}, S={chunk_tokens})")

    def cell(self, chunk_tokens: int, chunk: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """Contiguous K and V [num_kv_heads, tokens, head_dim] of cell (chunk, layer), checksums verified
        (StoreCorrupt otherwise)."""
        lo, hi = chunk * chunk_tokens, min((chunk + 1) * chunk_tokens, self.context_tokens)
        return self.arrays[("k", layer)].read(lo, hi), self.arrays[("v", layer)].read(lo, hi)

    def close(self) -> None:
        for arr in self.arrays.values():
            arr.close()


class StoreCache:
    """Stores under one root, opened on first use and kept open until found corrupt."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise ValueError(f"store root {self.root} is not a directory")
        self._stores: dict[str, OpenStore] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> OpenStore:
        if not KEY_RE.match(key):
            raise RequestRefused(E_UNKNOWN_CONTEXT, f"bad context key {key[:80]!r}")
        with self._lock:
            store = self._stores.get(key)
            if store is None:
                store = self._open(key)
                self._stores[key] = store
            return store

    def forget(self, key: str) -> None:
        """Close a store (found corrupt): the next request opens it afresh."""
        with self._lock:
            store = self._stores.pop(key, None)
        if store is not None:
            store.close()

    def close(self) -> None:
        for key in list(self._stores):
            self.forget(key)

    def _open(self, key: str) -> OpenStore:
        path = self.root / key
        try:
            meta = load_meta(path)
            spec = meta["spec"]
            t = int(meta["context_tokens"])
            shape = (int(spec["num_kv_heads"]), t, int(spec["head_dim"]))
            layers, dtype = int(spec["num_layers"]), np.dtype(meta["dtype"])
            if min(*shape, layers) <= 0:
                raise StoreCorrupt(f"meta.json gives shape {list(shape)} and {layers} layers")
            arrays = open_arrays(path, meta, layers, shape, dtype)
        except FileNotFoundError as exc:
            raise RequestRefused(E_UNKNOWN_CONTEXT, f"unknown context {key!r}") from exc
        except StoreCorrupt as exc:
            raise RequestRefused(E_STORE_CORRUPT, f"store {key!r} is corrupt: {exc}") from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise RequestRefused(E_STORE_CORRUPT, f"store {key!r} has a bad meta.json: {exc!r}") from exc
        except OSError as exc:  # e.g. out of descriptors: a passing condition, not a bad store
            raise RequestRefused(E_INTERNAL, f"store {key!r} cannot be opened now: {exc.strerror or exc}") from exc
        return OpenStore(path, t, layers, shape, dtype, arrays)


def make_synthetic_store(root: Path | str, key: str = "0123456789abcdef", num_layers: int = 2,
                         num_kv_heads: int = 2, context_tokens: int = 100, head_dim: int = 8,
                         dtype: str = "float32", seed: int = 0) -> Path:
    """A store of random K/V in the served format (for tests and benchmarks); its directory."""
    path = Path(root) / key
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (num_kv_heads, context_tokens, head_dim)
    files = {}
    for layer in range(num_layers):
        for kind in ("k", "v"):
            name = f"{kind}_{layer:03d}.npy"
            files[name] = write_array(path / name, rng.standard_normal(shape).astype(dtype))
    spec = {"name": "synthetic", "num_layers": num_layers, "num_kv_heads": num_kv_heads, "head_dim": head_dim}
    meta = {"format": FORMAT_VERSION, "model_id": "synthetic", "spec": spec, "context_tokens": context_tokens,
            "dtype": dtype, "files": files}
    (path / "meta.json").write_text(json_dump(seal_meta(meta)))
    return path


def json_dump(meta: dict[str, object]) -> str:
    """meta.json's text."""
    return json.dumps(meta, indent=1) + "\n"
