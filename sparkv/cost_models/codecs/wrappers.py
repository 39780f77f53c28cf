"""Codecs built from other codecs: a zstandard stage after any codec, and a codec per layer.

`ZstdCodec` payload: one zstandard frame (content size included) of the inner payload, byte-shuffled
first when the inner payload is a plain array of multi-byte elements (all first bytes, then all second
bytes, ..., as blosc does), which lets zstd see the slowly varying exponent bytes together. Its size
depends on the data, so `wire_bytes` is an estimate: the inner codec's exact size times the compression
ratio measured on real KV (`ZSTD_RATIO`, below).

`LayerwiseCodec` payload: one byte, the index of the sub-codec that encoded it, then that codec's payload.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import zstandard

from sparkv.cost_models.codecs.base import KVCodec

ZSTD_LEVEL = 3
# Compressed / uncompressed size of the inner payload under zstd level 3 with byte shuffling, measured on
# SmolLM2-135M-Instruct's KV (float32 model; the first 3,072 tokens of the first document of each of LEval
# quality, scientific_qa and multidoc_qa; all 30 layers, 512-token cells, K and V; the three documents agree
# within 0.3 points). Float KV compresses a little (exponent bytes), quantised codes hardly at all. Keys: the
# inner codec without its V group size and sink count (-g<N>, -s<S>), else its base name; "raw" by its dtype.
# Codecs not listed are taken as incompressible.
ZSTD_RATIO: dict[str, float] = {
    "raw-float32": 0.86,
    "raw-float16": 0.89,
    "fp32": 0.86,
    "fp16": 0.89,
    "bf16": 0.74,
    "int8": 0.96,
    "int4": 0.91,  # int4-g32: 0.92
    # K per 32-token group, with and without rotation (fourth document of quality and multidoc_qa, 3,000
    # tokens, same cells; -s1 changes the ratio by < 0.002); more fp16 scales, which hardly compress. Other
    # -t<M> fall back to the base name.
    "int4-t32": 0.95,
    "int4-t32-rot": 0.95,
    "int8-t32-rot": 0.97,
}
_local = threading.local()  # zstandard (de)compressor objects are not thread-safe


def _compressor() -> zstandard.ZstdCompressor:
    if not hasattr(_local, "c"):
        _local.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        _local.d = zstandard.ZstdDecompressor()
    return _local.c


def _decompressor() -> zstandard.ZstdDecompressor:
    _compressor()
    return _local.d


def shuffle(payload: bytes, width: int) -> bytes:
    """Group byte i of every `width`-byte word together (no-op for width 1 or a ragged length)."""
    if width <= 1 or len(payload) % width:
        return payload
    return np.frombuffer(payload, np.uint8).reshape(-1, width).T.tobytes()


def unshuffle(payload: bytes, width: int) -> bytes:
    if width <= 1 or len(payload) % width:
        return payload
    return np.frombuffer(payload, np.uint8).reshape(width, -1).T.tobytes()


def _families(name: str) -> tuple[str, str]:
    """ZSTD_RATIO keys to try for an inner codec: without its V group size and sink count, then its base name."""
    return re.sub(r"-[gs]\d+", "", name), name.split("-")[0]


@dataclass(frozen=True)
class ZstdCodec:
    """Any codec followed by zstandard (level 3); lossless iff the inner codec is."""

    inner: KVCodec

    @property
    def name(self) -> str:
        return f"{self.inner.name}+zstd"

    @property
    def lossless(self) -> bool:
        return self.inner.lossless

    @property
    def fixed_size(self) -> bool:
        return False

    def _width(self, dtype: npt.DTypeLike) -> int:
        word = getattr(self.inner, "word_bytes", None)
        return int(word(dtype)) if word is not None else 1

    def ratio(self, dtype: npt.DTypeLike) -> float:
        """The measured compression ratio `wire_bytes` assumes."""
        if self.inner.name == "raw":
            return ZSTD_RATIO.get(f"raw-{np.dtype(dtype).name}", 1.0)
        return next((ZSTD_RATIO[k] for k in _families(self.inner.name) if k in ZSTD_RATIO), 1.0)

    def encode(self, array: np.ndarray, *, kind: str = "k", layer: int = 0) -> bytes:
        inner = self.inner.encode(array, kind=kind, layer=layer)
        return _compressor().compress(shuffle(inner, self._width(array.dtype)))

    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        try:
            inner = _decompressor().decompress(payload)
        except zstandard.ZstdError as exc:
            raise ValueError(f"{self.name}: corrupt zstd frame: {exc}") from exc
        return self.inner.decode(unshuffle(inner, self._width(dtype)), shape, dtype)

    def wire_bytes(self, shape: tuple[int, ...], dtype: npt.DTypeLike, *, kind: str = "k", layer: int = 0) -> int:
        """Estimate: the inner codec's size times the compression ratio measured on real KV."""
        inner = self.inner.wire_bytes(shape, dtype, kind=kind, layer=layer)
        return math.ceil(inner * self.ratio(dtype))


@dataclass(frozen=True)
class LayerwiseCodec:
    """A codec per layer: entries (codec, first layer, last layer inclusive), then a default for the rest."""

    entries: tuple[tuple[KVCodec, int, int], ...]  # (codec, lo, hi): layers lo..hi, no overlaps
    default: KVCodec | None  # every other layer; None: encoding another layer is an error

    def __post_init__(self) -> None:
        spans = sorted((lo, hi) for _, lo, hi in self.entries)
        for lo, hi in spans:
            if not 0 <= lo <= hi:
                raise ValueError(f"layer range {lo}-{hi} must have 0 <= first <= last")
        for (_, hi0), (lo1, hi1) in itertools.pairwise(spans):
            if lo1 <= hi0:
                raise ValueError(f"layer ranges overlap at layers {lo1}-{min(hi0, hi1)}")
        if len(self.codecs) > 256:
            raise ValueError(f"at most 256 per-layer entries, got {len(self.codecs)}")

    @property
    def codecs(self) -> list[KVCodec]:
        """Sub-codecs in tag order: the entries, then the default."""
        return [c for c, _, _ in self.entries] + ([self.default] if self.default is not None else [])

    @property
    def name(self) -> str:
        parts = [f"{c.name}:{lo}-{hi}" if lo != hi else f"{c.name}:{lo}" for c, lo, hi in self.entries]
        return ",".join(parts + ([self.default.name] if self.default is not None else []))

    @property
    def lossless(self) -> bool:
        return all(c.lossless for c in self.codecs)

    @property
    def fixed_size(self) -> bool:
        return all(c.fixed_size for c in self.codecs)

    def index(self, layer: int) -> int:
        """Tag of the sub-codec for `layer`."""
        for i, (_, lo, hi) in enumerate(self.entries):
            if lo <= layer <= hi:
                return i
        if self.default is None:
            raise ValueError(f"codec {self.name!r} has no entry for layer {layer}")
        return len(self.entries)

    def for_layer(self, layer: int) -> KVCodec:
        return self.codecs[self.index(layer)]

    def encode(self, array: np.ndarray, *, kind: str = "k", layer: int = 0) -> bytes:
        tag = self.index(layer)
        return bytes([tag]) + self.codecs[tag].encode(array, kind=kind, layer=layer)

    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        if not payload or payload[0] >= len(self.codecs):
            raise ValueError(f"{self.name}: payload has no valid layer tag")
        return self.codecs[payload[0]].decode(payload[1:], shape, dtype)

    def wire_bytes(self, shape: tuple[int, ...], dtype: npt.DTypeLike, *, kind: str = "k", layer: int = 0) -> int:
        return 1 + self.for_layer(layer).wire_bytes(shape, dtype, kind=kind, layer=layer)
