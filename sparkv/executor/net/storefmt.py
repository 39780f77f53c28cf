"""Checksummed KV store files (no torch): write an array with its checksums, read token ranges verified.

A store's arrays are .npy files [num_kv_heads, T, head_dim]. meta.json lists, per file, its size in
bytes, the crc32 of its .npy header, and one crc32 per (head, tile of TILE_TOKENS tokens), head-major;
meta.json carries its own crc32 (`meta_crc32`, over its other fields as sorted compact JSON). Readers
never memory-map (a file truncated under a mapping kills the reader with SIGBUS): they `pread` the
tiles that cover a token range and check each tile's crc32 before using a byte of it, so a flipped or
missing byte at rest is a `StoreCorrupt`, never served.
"""

from __future__ import annotations

import ast
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 2
TILE_TOKENS = 16  # tokens per checksummed tile of one head's rows
MAX_NPY_HEADER_BYTES = 4096


class StoreCorrupt(Exception):
    """A store whose files do not match their checksums, sizes or headers."""


def meta_crc(meta: dict[str, Any]) -> int:
    body = {k: v for k, v in meta.items() if k != "meta_crc32"}
    return zlib.crc32(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def seal_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """`meta` with its own crc32 added."""
    return {**meta, "meta_crc32": meta_crc(meta)}


def load_meta(path: Path) -> dict[str, Any]:
    """meta.json of a store directory, its crc checked; StoreCorrupt when unreadable or altered,
    FileNotFoundError when absent."""
    file = path / "meta.json"
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StoreCorrupt(f"{file}: {exc.strerror or exc}") from exc
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StoreCorrupt(f"{file} is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise StoreCorrupt(f"{file} is not a JSON object")
    if meta.get("format") != FORMAT_VERSION:
        raise StoreCorrupt(f"{file}: format {meta.get('format')!r}, expected {FORMAT_VERSION} (checksummed)")
    if meta.get("meta_crc32") != meta_crc(meta):
        raise StoreCorrupt(f"{file} fails its crc32")
    return meta


def tile_crcs(array: np.ndarray) -> list[int]:
    """crc32 of every (head, tile) of a [heads, T, head_dim] array, head-major."""
    a = np.ascontiguousarray(array)
    t = a.shape[1]
    heads = range(a.shape[0])
    return [zlib.crc32(a[h, lo : lo + TILE_TOKENS].data) for h in heads for lo in range(0, t, TILE_TOKENS)]


def npy_header(raw: bytes) -> tuple[int, tuple[int, ...], np.dtype]:
    """(data offset, shape, dtype) of a .npy file's first bytes; StoreCorrupt when they are not one."""
    if raw[:6] != b"\x93NUMPY" or len(raw) < 10:
        raise StoreCorrupt("not a .npy file")
    major = raw[6]
    if major == 1:
        size, start = int.from_bytes(raw[8:10], "little"), 10
    elif major in (2, 3):
        size, start = int.from_bytes(raw[8:12], "little"), 12
    else:
        raise StoreCorrupt(f".npy version {major}")
    end = start + size
    if end > len(raw):
        raise StoreCorrupt(f".npy header of {size} bytes is cut")
    try:
        head = ast.literal_eval(raw[start:end].decode("latin1"))
        shape = tuple(int(d) for d in head["shape"])
        dtype = np.dtype(head["descr"])
        fortran = head["fortran_order"]
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError) as exc:
        raise StoreCorrupt(f"bad .npy header: {exc}") from exc
    if fortran is not False:
        raise StoreCorrupt(".npy header says fortran_order")
    return end, shape, dtype


def write_array(path: Path, array: np.ndarray) -> dict[str, Any]:
    """Save `array` [heads, T, head_dim] as .npy, fsync it, and return its meta entry."""
    a = np.ascontiguousarray(array)
    with open(path, "wb") as f:
        np.save(f, a)
        f.flush()
        os.fsync(f.fileno())
    with open(path, "rb") as f:
        raw = f.read(MAX_NPY_HEADER_BYTES)
    offset, _, _ = npy_header(raw)
    return {"bytes": offset + a.nbytes, "header_crc32": zlib.crc32(raw[:offset]), "tiles": tile_crcs(a)}


@dataclass
class StoredArray:
    """One checksummed array file, read by token ranges with every tile verified."""

    path: Path
    shape: tuple[int, int, int]  # [heads, T, head_dim]
    dtype: np.dtype
    entry: dict[str, Any]  # its meta.json entry
    fd: int = -1
    offset: int = 0

    def open(self) -> StoredArray:
        """Open the file and check its size and header (cheap); StoreCorrupt otherwise."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError as exc:
            raise StoreCorrupt(f"{self.path.name} is missing") from exc
        try:
            size = os.fstat(fd).st_size
            raw = os.pread(fd, MAX_NPY_HEADER_BYTES, 0)
            offset, shape, dtype = npy_header(raw)
            if zlib.crc32(raw[:offset]) != self.entry.get("header_crc32"):
                raise StoreCorrupt(f"{self.path.name}: .npy header fails its crc32")
            if shape != self.shape or dtype != self.dtype:
                raise StoreCorrupt(f"{self.path.name} is {dtype}{list(shape)}, "
                                   f"meta says {self.dtype}{list(self.shape)}")
            want = offset + int(np.prod(shape)) * dtype.itemsize
            if size != want or self.entry.get("bytes") != want:
                raise StoreCorrupt(f"{self.path.name} has {size} bytes, expected {want}")
            tiles = self.entry.get("tiles")
            if not isinstance(tiles, list) or len(tiles) != shape[0] * -(-shape[1] // TILE_TOKENS):
                raise StoreCorrupt(f"{self.path.name}: meta lists {len(tiles or [])} tile checksums")
        except BaseException:
            os.close(fd)
            raise
        self.fd, self.offset = fd, offset
        return self

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Tokens [lo, hi) of every head, [heads, hi - lo, head_dim], each tile's crc checked."""
        heads, t, dim = self.shape
        if not 0 <= lo < hi <= t:
            raise ValueError(f"token range [{lo}, {hi}) outside [0, {t})")
        t0, t1 = lo - lo % TILE_TOKENS, min(t, -(-hi // TILE_TOKENS) * TILE_TOKENS)
        row = dim * self.dtype.itemsize
        tiles_per_head = -(-t // TILE_TOKENS)
        out = np.empty((heads, hi - lo, dim), self.dtype)
        for h in range(heads):
            n = (t1 - t0) * row
            try:
                raw = os.pread(self.fd, n, self.offset + (h * t + t0) * row)
            except OSError as exc:
                raise StoreCorrupt(f"{self.path.name}: {exc.strerror or exc}") from exc
            if len(raw) != n:
                raise StoreCorrupt(f"{self.path.name} is cut: {len(raw)} of {n} bytes at head {h}")
            for start in range(t0, t1, TILE_TOKENS):
                a, b = (start - t0) * row, (min(start + TILE_TOKENS, t1) - t0) * row
                if zlib.crc32(raw[a:b]) != self.entry["tiles"][h * tiles_per_head + start // TILE_TOKENS]:
                    raise StoreCorrupt(f"{self.path.name}: head {h} tokens [{start}, {start + TILE_TOKENS}) "
                                       "fail their crc32")
            rows = np.frombuffer(raw, self.dtype).reshape(t1 - t0, dim)
            out[h] = rows[lo - t0 : hi - t0]
        return out

    def verify(self) -> None:
        """Read and check every tile (a full scan)."""
        step = 64 * TILE_TOKENS
        for lo in range(0, self.shape[1], step):
            self.read(lo, min(self.shape[1], lo + step))


def open_arrays(path: Path, meta: dict[str, Any], num_layers: int, shape: tuple[int, int, int],
                dtype: np.dtype) -> dict[tuple[str, int], StoredArray]:
    """Every k/v file of a store, opened and checked (size, header); StoreCorrupt for the first bad one."""
    files = meta.get("files")
    if not isinstance(files, dict):
        raise StoreCorrupt(f"{path / 'meta.json'} lists no files")
    out: dict[tuple[str, int], StoredArray] = {}
    try:
        for layer in range(num_layers):
            for kind in ("k", "v"):
                name = f"{kind}_{layer:03d}.npy"
                entry = files.get(name)
                if not isinstance(entry, dict):
                    raise StoreCorrupt(f"{path / 'meta.json'} has no entry for {name}")
                out[(kind, layer)] = StoredArray(path / name, shape, dtype, entry).open()
    except BaseException:
        for arr in out.values():
            arr.close()
        raise
    return out
