"""Codec lookup for the wire: sparkv.cost_models.codecs when present, else a built-in raw passthrough."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class WireCodec(Protocol):
    """The part of sparkv.cost_models.codecs.KVCodec that the server and client use."""

    def encode(self, array: np.ndarray, *, kind: str = "k", layer: int = 0) -> bytes: ...

    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: Any) -> np.ndarray: ...


class RawCodec:
    """The array's own bytes (C order, little-endian as stored)."""

    name = "raw"

    def encode(self, array: np.ndarray, *, kind: str = "k", layer: int = 0) -> bytes:
        return np.ascontiguousarray(array).tobytes()

    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dt = np.dtype(dtype)
        expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if len(payload) != expected:
            raise ValueError(f"raw payload has {len(payload)} bytes, expected {expected} for {dt}{list(shape)}")
        return np.frombuffer(payload, dtype=dt).reshape(shape)


def get_codec(name: str) -> WireCodec:
    """The codec called `name`; ValueError (or the registry's UserError) for an unknown one."""
    try:
        from sparkv.cost_models.codecs import get_codec as registry
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("sparkv.cost_models"):
            raise  # the registry exists but cannot import something it needs: say so
        if name == "raw":
            return RawCodec()
        raise ValueError(f"unknown codec {name!r}: no codec registry, only 'raw' is built in") from None
    codec: WireCodec = registry(name)
    return codec
