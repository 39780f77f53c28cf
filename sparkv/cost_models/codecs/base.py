"""The `KVCodec` protocol and the checks every codec shares.

A codec turns one K or V array [num_kv_heads, tokens, head_dim] (float32 or float16) into wire bytes and
back. Payloads are self-describing enough that `decode` needs only the shape and dtype the receiver
expects; `encode` and `wire_bytes` also take the array's role (`kind`: "k" or "v", quantisers treat them
differently) and its `layer` (per-layer codecs pick a sub-codec by it).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

KINDS = ("k", "v")


@runtime_checkable
class KVCodec(Protocol):
    """Encode and decode one K or V array of one cell."""

    @property
    def name(self) -> str: ...  # the spec string `get_codec` parses back to an equal codec

    @property
    def lossless(self) -> bool: ...  # decode(encode(x)) == x bit for bit for every float16/float32 x

    @property
    def fixed_size(self) -> bool: ...  # wire_bytes is exact (else an estimate, e.g. after entropy coding)

    def encode(self, array: np.ndarray, *, kind: str = "k", layer: int = 0) -> bytes: ...

    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray: ...

    def wire_bytes(self, shape: tuple[int, ...], dtype: npt.DTypeLike, *, kind: str = "k", layer: int = 0) -> int: ...


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be 'k' or 'v', got {kind!r}")


def float_dtype(dtype: npt.DTypeLike) -> np.dtype:
    """np.dtype of `dtype`, which must be float16 or float32."""
    dt = np.dtype(dtype)
    if dt not in (np.dtype(np.float16), np.dtype(np.float32)):
        raise ValueError(f"KV arrays must be float16 or float32, got {dt}")
    return dt


def check_array(array: np.ndarray) -> np.ndarray:
    """The array itself after checking it is a float16/float32 ndarray."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(array).__name__}")
    float_dtype(array.dtype)
    return array


def numel(shape: tuple[int, ...]) -> int:
    if any(int(n) < 0 for n in shape):
        raise ValueError(f"shape must be non-negative, got {shape}")
    return int(np.prod(shape, dtype=np.int64))


def check_length(payload: bytes, expected: int, what: str) -> None:
    if len(payload) != expected:
        raise ValueError(f"{what} payload has {len(payload)} bytes, expected {expected} for this shape")
