"""The KV server's stored KV cache of one context: computed once by a full prefill, read cell by cell.

Format (one directory per (model, context), named `context_key(model_id, token_ids)`):

    <root>/<key>/meta.json      {"format": 2, "model_id": str, "spec": ModelSpec.to_dict(),
                                 "context_tokens": T, "dtype": "float32" | "float16",
                                 "model_dtype": "float32" | "float16" | "bfloat16",
                                 "token_ids_sha256": hex, "created": ISO-8601 UTC,
                                 "files": {name: {"bytes", "header_crc32", "tiles"}}, "meta_crc32": int}
    <root>/<key>/k_{layer:03d}.npy   K of layer `layer`, numpy array [num_kv_heads, T, head_dim]
    <root>/<key>/v_{layer:03d}.npy   V, same shape

`dtype` is the numpy dtype of the arrays: the model's dtype, except bfloat16 models, whose KV is stored
as float32 (numpy has no bfloat16; the values are exact) with `model_dtype` saying "bfloat16".
`token_ids_sha256` is the sha256 of the token ids as little-endian int64 bytes; `context_key` is the
first 32 hex digits of sha256(model_id, "\\n", those bytes). K is stored after the rotary embedding, as
the model's attention reads it. The checksums (sparkv.executor.net.storefmt) cover every byte.

A directory appears only complete: it is written under a unique temporary name and renamed, while the
builder holds an exclusive lock (`<root>/.<key>.lock`), so concurrent builders of one context, in any
processes, build it once. An existing store is verified in full before it is reused; one that fails
(a flipped byte, a truncated file, an older unchecksummed format) is moved aside, rebuilt and reported
in `KVStoreInfo.rebuilt_because`. Storage failures (a full disk, a read-only folder) are UserErrors.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec
from sparkv.executor.model.models import LoadedModel
from sparkv.executor.model.prefill_reference import reference_kv
from sparkv.executor.net.storefmt import FORMAT_VERSION, StoreCorrupt, StoredArray, load_meta, open_arrays, seal_meta
from sparkv.executor.net.storefmt import write_array as _write_array

log = logging.getLogger(__name__)
LOCK_TIMEOUT_S = 3600.0  # a builder waits this long at most for another process building the same store
LOCK_POLL_S = 0.1
_STORED_DTYPE = {"float32": "float32", "float16": "float16", "bfloat16": "float32"}


def _ids_bytes(ids: Any) -> bytes:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    array = np.asarray(ids, dtype="<i8").reshape(-1)  # int64 little-endian
    return array.tobytes()


def token_ids_sha256(ids: Any) -> str:
    return hashlib.sha256(_ids_bytes(ids)).hexdigest()


def context_key(model_id: str, ids: Any) -> str:
    """Directory name of the store for `ids` (tensor, array or list of token ids) under `model_id`."""
    digest = hashlib.sha256(model_id.encode() + b"\n" + _ids_bytes(ids))
    return digest.hexdigest()[:32]


def kv_file(path: Path, kind: str, layer: int) -> Path:
    """`k_003.npy` / `v_003.npy` inside a store directory."""
    return path / f"{kind}_{layer:03d}.npy"


@dataclass(frozen=True)
class KVStoreInfo:
    """Where a context's store lives and what it holds."""

    path: Path  # the store directory (<root>/<key>)
    key: str  # context_key(model_id, ids)
    model_id: str
    context_tokens: int
    dtype: str  # numpy dtype of the stored arrays
    built: bool  # False when an existing store was reused
    rebuilt_because: str = ""  # why an existing store was found corrupt and rebuilt ("" if it was not)


def build_kv_store(loaded: LoadedModel, context_ids: torch.Tensor, root: Path) -> KVStoreInfo:
    """Prefill the whole context once and store K/V per layer; reuse the store if it exists and verifies."""
    ids = context_ids.reshape(-1).to(torch.long)
    if ids.numel() == 0:
        raise ValueError("build_kv_store needs at least one context token")
    key = context_key(loaded.model_id, ids)
    root = Path(root)
    path = root / key
    dtype = _STORED_DTYPE[loaded.spec.dtype]
    try:
        root.mkdir(parents=True, exist_ok=True)
        with _build_lock(root, key):
            why = ""
            if path.exists():
                try:
                    store = KVStore(path)  # verifies every byte
                    return KVStoreInfo(path, key, store.model_id, store.context_tokens, store.dtype, built=False)
                except UserError as exc:
                    why = str(exc)
                    log.warning("%s: rebuilding it", why)
                    _move_aside(path)
            _build(loaded, ids, path, dtype)
    except OSError as exc:
        raise UserError(f"cannot write the KV store under {root}: {_os_reason(exc)}") from exc
    return KVStoreInfo(path, key, loaded.model_id, int(ids.numel()), dtype, built=True, rebuilt_because=why)


def _build(loaded: LoadedModel, ids: torch.Tensor, path: Path, dtype: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))  # unique: no two builders share it
    try:
        files = {}
        for layer, (k, v) in enumerate(reference_kv(loaded, ids)):  # [KV, T, hd] each
            for kind, array in (("k", k), ("v", v)):
                file = kv_file(tmp, kind, layer)
                files[file.name] = _write_array(file, array.float().cpu().numpy().astype(dtype))
        meta = {
            "format": FORMAT_VERSION,
            "model_id": loaded.model_id,
            "spec": loaded.spec.to_dict(),
            "context_tokens": int(ids.numel()),
            "dtype": dtype,
            "model_dtype": loaded.spec.dtype,
            "token_ids_sha256": token_ids_sha256(ids),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "files": files,
        }
        with open(tmp / "meta.json", "w") as f:
            f.write(json.dumps(seal_meta(meta), indent=1) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # the lock is held and `path` is absent: the rename cannot race
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_aside(path: Path) -> None:
    """Rename a corrupt store out of the way (then delete it); the server may still hold its files open."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.corrupt-", dir=path.parent))
    os.replace(path, aside / "store")
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _build_lock(root: Path, key: str) -> Iterator[None]:
    """An exclusive flock on <root>/.<key>.lock (not following a symlink), waited for at most LOCK_TIMEOUT_S."""
    fd = os.open(root / f".{key}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(f"another process has been building the KV store {root / key} for "
                                    f"{LOCK_TIMEOUT_S:.0f} s; is it stuck?") from None
                time.sleep(LOCK_POLL_S)  # waiting for the other builder's lock, nothing else to do
        yield
    finally:
        os.close(fd)


def _os_reason(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno or 0, "")
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENOSPC:
        return f"the disk is full{where} [ENOSPC]"
    if exc.errno == errno.EROFS:
        return f"the folder is on a read-only file system{where} [EROFS]"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied{where} [{name}]"
    return f"{exc.strerror or exc}{where}" + (f" [{name}]" if name else "")


class KVStore:
    """A store directory read into memory after every checksum is verified; cells are views."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.meta: dict[str, Any] = load_meta(self.path)
            self.spec = ModelSpec.from_dict(self.meta["spec"])
            self.model_id = str(self.meta["model_id"])
            self.context_tokens = int(self.meta["context_tokens"])
            self.dtype = str(self.meta["dtype"])
            expected = (self.spec.num_kv_heads, self.context_tokens, self.spec.head_dim)
            arrays = open_arrays(self.path, self.meta, self.spec.num_layers, expected, np.dtype(self.dtype))
        except (OSError, ValueError, KeyError, TypeError, StoreCorrupt) as exc:
            raise UserError(f"KV store {self.path} is missing or corrupt: {exc}") from exc
        self.k: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        try:
            for layer in range(self.spec.num_layers):
                self.k.append(self._read(arrays[("k", layer)]))
                self.v.append(self._read(arrays[("v", layer)]))
        finally:
            for arr in arrays.values():
                arr.close()

    def _read(self, arr: StoredArray) -> np.ndarray:
        try:
            data = arr.read(0, self.context_tokens)
        except StoreCorrupt as exc:
            raise UserError(f"KV store {self.path} is corrupt: {exc}") from exc
        data.flags.writeable = False
        return data

    @property
    def num_layers(self) -> int:
        return self.spec.num_layers

    def cell(self, chunk_start: int, chunk_end: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """K and V views [num_kv_heads, chunk_end - chunk_start, head_dim] of token positions at `layer`."""
        if not 0 <= chunk_start < chunk_end <= self.context_tokens:
            raise ValueError(f"token range [{chunk_start}, {chunk_end}) outside [0, {self.context_tokens})")
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} outside [0, {self.num_layers})")
        return self.k[layer][:, chunk_start:chunk_end], self.v[layer][:, chunk_start:chunk_end]

    def cell_bytes(self, chunk_start: int, chunk_end: int) -> int:
        """Uncompressed bytes of K + V of one cell."""
        itemsize = np.dtype(self.dtype).itemsize
        return 2 * self.spec.num_kv_heads * (chunk_end - chunk_start) * self.spec.head_dim * itemsize
