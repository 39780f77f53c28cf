"""Asymmetric min/max integer quantisation (8 or 4 bits) of one K or V array, KIVI style.

K has outlier channels, so K is quantised per channel over the chunk's tokens (one scale per
head x channel); V per token, in groups of `group` elements along head_dim (default: the whole head_dim).
Each group stores a scale and a zero point (its minimum, rounded down to fp16; the scale is rounded up
to fp16 so that every element stays inside the group's range), and x ~= code * scale + zero with
code = round((x - zero) / scale) in [0, 2^bits - 1]. The error per element is at most scale / 2
(plus float32 rounding, and fp16 rounding when the output is float16).

Payload layout, every multi-byte field little-endian:

    header  8 bytes: b"KQ", version u8 (1), bits u8 (8 or 4), mode u8 (0: K, per channel over tokens;
            1: V, per-token groups), reserved u8 (0), group u16 (mode 1: elements per group; mode 0: 0)
    scales  fp16 [groups], then zero points fp16 [groups], each in C order of the group grid:
            mode 0: [heads, head_dim]; mode 1: [heads, tokens, ceil(head_dim / group)]
    codes   8 bits: uint8 [heads, tokens, head_dim] in C order;
            4 bits: the same sequence packed two per byte, element 2i in the low nibble and 2i+1 in the
            high nibble of byte i; an odd count ends with a zero high nibble.

wire bytes = 8 + 4 * groups + ceil(heads * tokens * head_dim * bits / 8), exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sparkv.cost_models.codecs.base import check_array, check_kind, check_length, float_dtype, numel

MAGIC = b"KQ"
VERSION = 1
HEADER = struct.Struct("<2sBBBBH")  # magic, version, bits, mode, reserved, group
MODE_CHANNEL, MODE_TOKEN = 0, 1
F16 = np.dtype("<f2")


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """uint8 codes < 16 (any shape) -> uint8 [ceil(n / 2)], element 2i low nibble, 2i+1 high nibble."""
    flat = codes.reshape(-1).astype(np.uint8)
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.uint8)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_int4(packed: np.ndarray, n: int) -> np.ndarray:
    """Inverse of `pack_int4`: uint8 [n]."""
    out = np.empty(2 * packed.size, np.uint8)
    out[0::2] = packed & 0x0F
    out[1::2] = packed >> 4
    return out[:n]


def _round_f16(x: np.ndarray, toward: float) -> np.ndarray:
    """float32 x as fp16, rounded toward -inf or +inf (so the fp16 value bounds x)."""
    with np.errstate(over="ignore"):  # out-of-range values become inf, reported by the caller
        h = x.astype(np.float16)
    off = (h.astype(np.float32) > x) if toward < 0 else (h.astype(np.float32) < x)
    return np.where(off, np.nextafter(h, np.float16(toward)), h)


def group_params(lo: np.ndarray, hi: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """fp16 (scale, zero) per group from float32 minima and maxima: zero <= lo, zero + levels*scale >= hi."""
    levels = (1 << bits) - 1
    zero = _round_f16(lo, -np.inf)
    scale = _round_f16((hi - zero.astype(np.float32)) / np.float32(levels), np.inf)
    if not (np.isfinite(zero).all() and np.isfinite(scale).all()):
        raise ValueError("KV values are outside the range an fp16 scale and zero point can hold (|x| > 65504)")
    return scale, zero


@dataclass(frozen=True)
class QuantCodec:
    """int8 / int4 with per-channel K scales and per-token-group V scales."""

    bits: int  # 8 or 4
    group: int | None = None  # V group size along head_dim; None: the whole head_dim

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        if self.group is not None and not 1 <= self.group <= 0xFFFF:
            raise ValueError(f"group must be in [1, 65535], got {self.group}")

    @property
    def name(self) -> str:
        return f"int{self.bits}" + (f"-g{self.group}" if self.group else "")

    @property
    def lossless(self) -> bool:
        return False

    @property
    def fixed_size(self) -> bool:
        return True

    def word_bytes(self, dtype: npt.DTypeLike) -> int:
        return 1

    def _group(self, head_dim: int) -> int:
        return min(self.group or head_dim, head_dim)

    def num_groups(self, shape: tuple[int, ...], kind: str) -> int:
        """Scale/zero pairs for an array of `shape` ([..., tokens, head_dim])."""
        check_kind(kind)
        if len(shape) < 2:
            raise ValueError(f"quantised KV arrays need [..., tokens, head_dim], got shape {shape}")
        *lead, tokens, dim = (int(n) for n in shape)
        if kind == "k":
            return numel((*lead, dim))
        return numel((*lead, tokens, -(-dim // self._group(dim)) if dim else 0))

    def wire_bytes(self, shape: tuple[int, ...], dtype: npt.DTypeLike, *, kind: str = "k", layer: int = 0) -> int:
        float_dtype(dtype)
        return HEADER.size + 4 * self.num_groups(shape, kind) + -(-numel(shape) * self.bits // 8)

    def encode(self, array: np.ndarray, *, kind: str = "k", layer: int = 0) -> bytes:
        check_kind(kind)
        x = check_array(array).astype(np.float32)  # [..., T, D]
        if x.ndim < 2 or x.size == 0:
            raise ValueError(f"quantised KV arrays need a non-empty [..., tokens, head_dim], got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("KV array holds NaN or inf; it cannot be quantised")
        if kind == "k":
            mode, group = MODE_CHANNEL, 0
            scale, zero = group_params(x.min(axis=-2), x.max(axis=-2), self.bits)  # [..., D]
            s, z = scale[..., None, :], zero[..., None, :]  # broadcast over tokens
            codes = self._codes(x, s, z)
        else:
            mode, group = MODE_TOKEN, self._group(x.shape[-1])
            xg = _grouped(x, group)  # [..., T, G, g]
            scale, zero = group_params(xg.min(axis=-1), xg.max(axis=-1), self.bits)  # [..., T, G]
            codes = self._codes(xg, scale[..., None], zero[..., None]).reshape(*x.shape[:-1], -1)[..., : x.shape[-1]]
        packed = codes if self.bits == 8 else pack_int4(codes)
        header = HEADER.pack(MAGIC, VERSION, self.bits, mode, 0, group)
        return b"".join([header, scale.astype(F16).tobytes(), zero.astype(F16).tobytes(), packed.tobytes()])

    def _codes(self, x: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
        s32 = scale.astype(np.float32)
        q = np.divide(
            x - zero.astype(np.float32),
            s32,
            out=np.zeros(np.broadcast_shapes(x.shape, s32.shape), np.float32),
            where=s32 > 0,
        )
        return np.clip(np.rint(q), 0, (1 << self.bits) - 1).astype(np.uint8)

    def decode(self, payload: bytes, shape: tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
        dt = float_dtype(dtype)
        if len(payload) < HEADER.size:
            raise ValueError(f"{self.name} payload of {len(payload)} bytes has no header")
        magic, version, bits, mode, _, group = HEADER.unpack_from(payload)
        if magic != MAGIC or version != VERSION or bits != self.bits or mode not in (MODE_CHANNEL, MODE_TOKEN):
            raise ValueError(
                f"not a {self.name} payload (magic {magic!r}, version {version}, bits {bits}, mode {mode})"
            )
        kind = "k" if mode == MODE_CHANNEL else "v"
        check_length(payload, self._wire_with_group(shape, kind, group), self.name)
        *lead, tokens, dim = shape
        grid = (*lead, dim) if kind == "k" else (*lead, tokens, -(-dim // group))
        n_groups, n = numel(grid), numel(shape)
        buf = np.frombuffer(payload, dtype=np.uint8, offset=HEADER.size)
        scale = buf[: 2 * n_groups].view(F16).astype(np.float32).reshape(grid)
        zero = buf[2 * n_groups : 4 * n_groups].view(F16).astype(np.float32).reshape(grid)
        raw = buf[4 * n_groups :]
        codes = (raw if bits == 8 else unpack_int4(raw, n)).reshape(shape).astype(np.float32)
        if kind == "k":
            return (codes * scale[..., None, :] + zero[..., None, :]).astype(dt)
        idx = np.arange(dim) // group  # group of each channel
        return (codes * scale[..., idx] + zero[..., idx]).astype(dt)

    def _wire_with_group(self, shape: tuple[int, ...], kind: str, group: int) -> int:
        if kind == "v" and group < 1:
            raise ValueError(f"{self.name} payload has V group size {group}")
        return QuantCodec(self.bits, group or None).wire_bytes(shape, np.float32, kind=kind)


def _grouped(x: np.ndarray, group: int) -> np.ndarray:
    """[..., T, D] -> [..., T, ceil(D / group), group], the last group padded with its own last value."""
    dim = x.shape[-1]
    pad = -dim % group
    if pad:
        x = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, pad)], mode="edge")
    return x.reshape(*x.shape[:-1], -1, group)
