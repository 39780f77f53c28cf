"""Asymmetric min/max integer quantisation (8 or 4 bits) of one K or V array, KIVI style.

K has outlier channels, so K is quantised per channel over tokens (one scale per head x channel, over all the
array's tokens or, with `tokens`, over each run of that many tokens); V per token, in groups of `group`
elements along head_dim (default: the whole head_dim). Each group stores a scale and a zero point (its
minimum, rounded down to fp16; the scale is rounded up to fp16 so that every element stays inside the
group's range), and x ~= code * scale + zero with code = round((x - zero) / scale) in [0, 2^bits - 1]. The
error per element is at most scale / 2 (plus float32 rounding, and fp16 rounding when the output is float16).

Two options aim at the error that matters most to attention:

- `rotate`: K and V are multiplied by a normalised Walsh-Hadamard matrix along head_dim (`rotation.py`,
  as QuaRot and QuIP# do) before quantising and again after decoding (it is its own inverse). A few large
  channels are spread over all of them; the bound above holds in the rotated space, so the L2 error of each
  token's vector, which the rotation keeps, is at most the L2 norm of its elements' scale / 2.
- `sinks`: the first `sinks` tokens of the array are sent as fp16 and take no part in the quantisation
  (attention sinks, StreamingLLM: the context's first token draws much of every query's attention, so its
  error weighs most; KVQuant and IntactKV keep such tokens in full precision). A codec is not told where its
  cell lies in the context, so every cell keeps its first tokens: 1 token of a 512-token cell costs 0.2% of
  the cell's fp16 bytes.

Payload layout, every multi-byte field little-endian:

    header  8 bytes: b"KQ", version u8 (1), bits u8 (8 or 4), mode u8 (0: K, per channel over tokens;
            1: V, per-token groups), options u8 (bit 0: Hadamard-rotated; bits 1-7: sinks, 0-127),
            group u16 (mode 0: tokens per group, 0 for all tokens; mode 1: elements per group)
    sinks   fp16 [heads, s, head_dim] in C order, s = min(sinks, tokens), not rotated
    scales  fp16 [groups], then zero points fp16 [groups], each in C order of the group grid over the other
            q = tokens - s tokens: mode 0: [heads, ceil(q / group), head_dim] (group 0: one token group, none
            when q is 0); mode 1: [heads, q, ceil(head_dim / group)]
    codes   8 bits: uint8 [heads, q, head_dim] in C order (of the rotated values when bit 0 is set);
            4 bits: the same sequence packed two per byte, element 2i in the low nibble and 2i+1 in the
            high nibble of byte i; an odd count ends with a zero high nibble.

wire bytes = 8 + 2 * heads * s * head_dim + 4 * groups + ceil(heads * q * head_dim * bits / 8), exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from sparkv.cost_models.codecs.base import check_array, check_kind, check_length, float_dtype, numel
from sparkv.cost_models.codecs.rotation import rotate

MAGIC = b"KQ"
VERSION = 1
HEADER = struct.Struct("<2sBBBBH")  # magic, version, bits, mode, options, group
MODE_CHANNEL, MODE_TOKEN = 0, 1
ROTATED = 1  # options bit 0; bits 1-7 hold the sink count
MAX_SINKS = 127
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
    """int8 / int4 with per-channel K scales (per token group), per-token-group V scales, and the options above."""

    bits: int  # 8 or 4
    group: int | None = None  # V group size along head_dim; None: the whole head_dim
    tokens: int | None = None  # K group size along tokens; None: all tokens of the array
    rotate: bool = False  # Walsh-Hadamard rotation of head_dim before quantising K and V
    sinks: int = 0  # leading tokens of each array sent as fp16, not quantised

    def __post_init__(self) -> None:
        if self.bits not in (4, 8):
            raise ValueError(f"bits must be 4 or 8, got {self.bits}")
        for what, size in (("group", self.group), ("tokens", self.tokens)):
            if size is not None and not 1 <= size <= 0xFFFF:
                raise ValueError(f"{what} must be in [1, 65535], got {size}")
        if not 0 <= self.sinks <= MAX_SINKS:
            raise ValueError(f"sinks must be in [0, {MAX_SINKS}], got {self.sinks}")

    @property
    def name(self) -> str:
        return (f"int{self.bits}" + (f"-g{self.group}" if self.group else "") + (f"-t{self.tokens}" if self.tokens
                else "") + (f"-s{self.sinks}" if self.sinks else "") + ("-rot" if self.rotate else ""))

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

    def _split(self, shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of the fp16 sink tokens and of the quantised tokens of an array of `shape`."""
        if len(shape) < 2:
            raise ValueError(f"quantised KV arrays need [..., tokens, head_dim], got shape {shape}")
        *lead, tokens, dim = (int(n) for n in shape)
        s = min(self.sinks, tokens)
        return (*lead, s, dim), (*lead, tokens - s, dim)

    def _grid(self, shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
        """Shape of the scale (and zero point) array for quantised tokens of `shape` ([..., q, head_dim])."""
        check_kind(kind)
        *lead, tokens, dim = shape
        if kind == "k":
            return (*lead, -(-tokens // (self.tokens or max(tokens, 1))), dim)
        return (*lead, tokens, -(-dim // self._group(dim)) if dim else 0)

    def num_groups(self, shape: tuple[int, ...], kind: str) -> int:
        """Scale/zero pairs for an array of `shape` ([..., tokens, head_dim])."""
        return numel(self._grid(self._split(shape)[1], kind))

    def wire_bytes(self, shape: tuple[int, ...], dtype: npt.DTypeLike, *, kind: str = "k", layer: int = 0) -> int:
        float_dtype(dtype)
        sinks, quantised = self._split(shape)
        return (HEADER.size + 2 * numel(sinks) + 4 * self.num_groups(shape, kind)
                + -(-numel(quantised) * self.bits // 8))

    def encode(self, array: np.ndarray, *, kind: str = "k", layer: int = 0) -> bytes:
        check_kind(kind)
        x = check_array(array).astype(np.float32)  # [..., T, D]
        if x.ndim < 2 or x.size == 0:
            raise ValueError(f"quantised KV arrays need a non-empty [..., tokens, head_dim], got {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("KV array holds NaN or inf; it cannot be quantised")
        s = min(self.sinks, x.shape[-2])
        with np.errstate(over="ignore"):
            sinks = x[..., :s, :].astype(F16)
        if not np.isfinite(sinks).all():
            raise ValueError("KV sink tokens are outside the fp16 range (|x| > 65504)")
        group, parts = self._quantise(x[..., s:, :], kind)
        options = (ROTATED if self.rotate else 0) | self.sinks << 1
        header = HEADER.pack(MAGIC, VERSION, self.bits, MODE_CHANNEL if kind == "k" else MODE_TOKEN, options, group)
        return b"".join([header, sinks.tobytes(), *(p.tobytes() for p in parts)])

    def _quantise(self, x: np.ndarray, kind: str) -> tuple[int, list[np.ndarray]]:
        """The header's group field and [scale, zero, packed codes] of float32 x [..., q, D] (q may be 0)."""
        tokens, dim = x.shape[-2:]
        group = (self.tokens or 0) if kind == "k" else self._group(dim)
        if tokens == 0:  # every token is a sink
            return group, []
        if self.rotate:
            x = rotate(x)
        if kind == "k":
            xg = _grouped(x, self.tokens or tokens, axis=-2)  # [..., G, t, D]
            scale, zero = group_params(xg.min(axis=-2), xg.max(axis=-2), self.bits)  # [..., G, D]
            codes = self._codes(xg, scale[..., None, :], zero[..., None, :])
            codes = codes.reshape(*x.shape[:-2], -1, dim)[..., :tokens, :]
        else:
            xg = _grouped(x, group, axis=-1)  # [..., T, G, g]
            scale, zero = group_params(xg.min(axis=-1), xg.max(axis=-1), self.bits)  # [..., T, G]
            codes = self._codes(xg, scale[..., None], zero[..., None]).reshape(*x.shape[:-1], -1)[..., :dim]
        return group, [scale.astype(F16), zero.astype(F16), codes if self.bits == 8 else pack_int4(codes)]

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
        magic, version, bits, mode, options, group = HEADER.unpack_from(payload)
        if magic != MAGIC or version != VERSION or bits != self.bits or mode not in (MODE_CHANNEL, MODE_TOKEN):
            raise ValueError(
                f"not a {self.name} payload (magic {magic!r}, version {version}, bits {bits}, mode {mode})"
            )
        kind = "k" if mode == MODE_CHANNEL else "v"
        if kind == "v" and group < 1:
            raise ValueError(f"{self.name} payload has V group size {group}")
        sent = QuantCodec(bits, group if kind == "v" else None, group if kind == "k" and group else None,
                          bool(options & ROTATED), options >> 1)
        check_length(payload, sent.wire_bytes(shape, np.float32, kind=kind), self.name)
        sink_shape, q_shape = sent._split(shape)
        buf = np.frombuffer(payload, dtype=np.uint8, offset=HEADER.size)
        n_sinks = 2 * numel(sink_shape)
        sinks = buf[:n_sinks].view(F16).astype(np.float32).reshape(sink_shape)
        x = sent._dequantise(buf[n_sinks:], q_shape, kind, group)
        return np.concatenate([sinks, x], axis=-2).astype(dt) if n_sinks else x.astype(dt)

    def _dequantise(self, buf: np.ndarray, shape: tuple[int, ...], kind: str, group: int) -> np.ndarray:
        """float32 [..., q, D] from the scales, zero points and codes in `buf` (length already checked)."""
        grid, n = self._grid(shape, kind), numel(shape)
        if n == 0:
            return np.zeros(shape, np.float32)
        n_groups = numel(grid)
        scale = buf[: 2 * n_groups].view(F16).astype(np.float32).reshape(grid)
        zero = buf[2 * n_groups : 4 * n_groups].view(F16).astype(np.float32).reshape(grid)
        raw = buf[4 * n_groups :]
        codes = (raw if self.bits == 8 else unpack_int4(raw, n)).reshape(shape).astype(np.float32)
        *_, tokens, dim = shape
        if kind == "k":
            idx = np.arange(tokens) // (group or tokens)  # token group of each token
            x = codes * scale[..., idx, :] + zero[..., idx, :]
        else:
            idx = np.arange(dim) // group  # group of each channel
            x = codes * scale[..., idx] + zero[..., idx]
        return rotate(x) if self.rotate else x


def _grouped(x: np.ndarray, group: int, axis: int) -> np.ndarray:
    """x with `axis` (-1 or -2) split into [ceil(n / group), group], the last group padded with its own last value."""
    n = x.shape[axis]
    pad = -n % group
    if pad:
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, pad)
        x = np.pad(x, widths, mode="edge")
    return x.reshape(*x.shape[:axis], -1, group, *x.shape[axis:][1:])
