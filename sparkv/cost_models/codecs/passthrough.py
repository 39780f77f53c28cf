"""Codecs that only change the element type: raw (the array's own dtype), fp16, bf16 and fp32.

Payload: the elements in C order, little-endian, no header. bf16 is the top 16 bits of each float32
(round to nearest even; NaN stays NaN), as a little-endian uint16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sparkv.cost_models.codecs.base import check_array, check_kind, check_length, float_dtype, numel


@dataclass(frozen=True)
class CastCodec:
    """Elements cast to `wire` ("raw" keeps the array's dtype)."""

    name: str  # raw, fp16, fp32
    wire: str | None  # numpy dtype string on the wire ("<f2", "<f4"), None for the array's own

    @property
    def lossless(self) -> bool:
        return self.wire in (None, "<f4")

    @property
    def fixed_size(self) -> bool:
        return True

    def word_bytes(self, dtype: npt.DTypeLike) -> int:
        """Bytes per element on the wire (for byte shuffling before an entropy coder)."""
        return np.dtype(self.wire).itemsize if self.wire else float_dtype(dtype).itemsize

    def _wire_dtype(self, dtype: npt.DTypeLike) -> np.dtype:
        return np.dtype(self.wire) if self.wire else float_dtype(dtype).newbyteorder("<")

    def encode(self, array: np.ndarray, *, kind: str = "k", layer: int = 0) -> bytes:
        check_kind(kind)
        check_array(array)
        return np.ascontiguousarray(array, dtype=self._wire_dtype(array.dtype)).tobytes()

    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        dt, wire = float_dtype(dtype), self._wire_dtype(dtype)
        check_length(payload, numel(shape) * wire.itemsize, self.name)
        return np.frombuffer(payload, dtype=wire).reshape(shape).astype(dt)

    def wire_bytes(self, shape: tuple[int, ...], dtype: npt.DTypeLike, *, kind: str = "k", layer: int = 0) -> int:
        return numel(shape) * self._wire_dtype(dtype).itemsize


def to_bf16_bits(array: np.ndarray) -> np.ndarray:
    """uint16 top halves of float32(array), rounded to nearest even."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    nan = np.isnan(array)
    if nan.any():  # rounding could carry a NaN's mantissa into the exponent: keep it a quiet NaN
        rounded[nan] = ((bits[nan] >> 16) | 0x0040).astype(np.uint16)
    return rounded


def from_bf16_bits(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


@dataclass(frozen=True)
class BF16Codec:
    """bfloat16 on the wire: float32's range, 8 bits of mantissa."""

    name: str = "bf16"

    @property
    def lossless(self) -> bool:
        return False

    @property
    def fixed_size(self) -> bool:
        return True

    def word_bytes(self, dtype: npt.DTypeLike) -> int:
        return 2

    def encode(self, array: np.ndarray, *, kind: str = "k", layer: int = 0) -> bytes:
        check_kind(kind)
        return to_bf16_bits(check_array(array)).astype("<u2").tobytes()

    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        dt = float_dtype(dtype)
        check_length(payload, 2 * numel(shape), self.name)
        return from_bf16_bits(np.frombuffer(payload, dtype="<u2")).reshape(shape).astype(dt)

    def wire_bytes(self, shape: tuple[int, ...], dtype: npt.DTypeLike, *, kind: str = "k", layer: int = 0) -> int:
        float_dtype(dtype)
        return 2 * numel(shape)
