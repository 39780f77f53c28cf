"""The KV server's stored KV cache of one context: computed once by a full prefill, read cell by cell.

Format (one directory per (model, context), named `context_key(model_id, token_ids)`):

    <root>/<key>/meta.json      {"format": 1, "model_id": str, "spec": ModelSpec.to_dict(),
                                 "context_tokens": T, "dtype": "float32" | "float16",
                                 "model_dtype": "float32" | "float16" | "bfloat16",
                                 "token_ids_sha256": hex, "created": ISO-8601 UTC}
    <root>/<key>/k_{layer:03d}.npy   K of layer `layer`, numpy array [num_kv_heads, T, head_dim]
    <root>/<key>/v_{layer:03d}.npy   V, same shape

`dtype` is the numpy dtype of the arrays: the model's dtype, except bfloat16 models, whose KV is stored
as float32 (numpy has no bfloat16; the values are exact) with `model_dtype` saying "bfloat16".
`token_ids_sha256` is the sha256 of the token ids as little-endian int64 bytes; `context_key` is the
first 32 hex digits of sha256(model_id, "\\n", those bytes). K is stored after the rotary embedding, as
the model's attention reads it. A directory appears only complete (written under a temporary name, then
renamed), so an existing one is reused and never rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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

FORMAT_VERSION = 1
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


def build_kv_store(loaded: LoadedModel, context_ids: torch.Tensor, root: Path) -> KVStoreInfo:
    """Prefill the whole context once and store K/V per layer; reuse the store if it already exists."""
    ids = context_ids.reshape(-1).to(torch.long)
    if ids.numel() == 0:
        raise ValueError("build_kv_store needs at least one context token")
    key = context_key(loaded.model_id, ids)
    path = Path(root) / key
    dtype = _STORED_DTYPE[loaded.spec.dtype]
    if (path / "meta.json").is_file():
        store = KVStore(path)  # validates it
        return KVStoreInfo(path, key, store.model_id, store.context_tokens, store.dtype, built=False)
    tmp = Path(root) / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for layer, (k, v) in enumerate(reference_kv(loaded, ids)):  # [KV, T, hd] each
            np.save(kv_file(tmp, "k", layer), k.float().cpu().numpy().astype(dtype))
            np.save(kv_file(tmp, "v", layer), v.float().cpu().numpy().astype(dtype))
        meta = {
            "format": FORMAT_VERSION,
            "model_id": loaded.model_id,
            "spec": loaded.spec.to_dict(),
            "context_tokens": int(ids.numel()),
            "dtype": dtype,
            "model_dtype": loaded.spec.dtype,
            "token_ids_sha256": token_ids_sha256(ids),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        if path.exists():  # a concurrent builder won the race: keep its copy
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return KVStoreInfo(path, key, loaded.model_id, int(ids.numel()), dtype, built=True)


class KVStore:
    """A store directory opened read-only; arrays are memory-mapped, cells are views."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
            self.spec = ModelSpec.from_dict(self.meta["spec"])
            self.model_id = str(self.meta["model_id"])
            self.context_tokens = int(self.meta["context_tokens"])
            self.dtype = str(self.meta["dtype"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"KV store {self.path} is missing or corrupt (meta.json: {exc})") from exc
        expected = (self.spec.num_kv_heads, self.context_tokens, self.spec.head_dim)
        self.k: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        for layer in range(self.spec.num_layers):
            for kind, arrays in (("k", self.k), ("v", self.v)):
                arrays.append(self._open(kv_file(self.path, kind, layer), expected))

    def _open(self, file: Path, shape: tuple[int, int, int]) -> np.ndarray:
        try:
            array = np.load(file, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise UserError(f"KV store {self.path} is missing or corrupt ({file.name}: {exc})") from exc
        if array.shape != shape or str(array.dtype) != self.dtype:
            raise UserError(
                f"KV store {self.path} is corrupt: {file.name} is {array.dtype}{list(array.shape)}, "
                f"meta.json says {self.dtype}{list(shape)}"
            )
        return array

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
