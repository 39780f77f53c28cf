"""Bytes and encode/decode time of a codec on one cell, for device profiles and reports."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sparkv.cost_models.codecs.base import KVCodec, float_dtype, numel


@dataclass(frozen=True)
class CodecMeasurement:
    """One codec on one cell shape, measured on this machine."""

    codec: str  # codec name
    shape: tuple[int, ...]  # shape of K and of V: [num_kv_heads, tokens, head_dim]
    dtype: str  # dtype of the arrays encoded
    bytes_per_cell: int  # len(encode(K)) + len(encode(V)), measured
    predicted_bytes_per_cell: int  # wire_bytes(K) + wire_bytes(V) (an estimate for entropy-coded codecs)
    fp16_bytes_per_cell: int  # K + V as plain fp16
    ratio_vs_fp16: float  # bytes_per_cell / fp16_bytes_per_cell
    encode_s: float  # median seconds to encode K and V of one cell
    decode_s: float  # median seconds to decode K and V of one cell
    repeats: int  # timed repetitions
    data: str  # "synthetic" or "given"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_kv(shape: tuple[int, ...], dtype: npt.DTypeLike, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """K with a few outlier channels (as real K has) and Gaussian V, [heads, tokens, head_dim]."""
    rng = np.random.default_rng(seed)
    k = rng.standard_normal(shape).astype(np.float32)
    outliers = rng.choice(shape[-1], size=max(1, shape[-1] // 16), replace=False)
    k[..., outliers] = k[..., outliers] * 8 + 4
    v = rng.standard_normal(shape).astype(np.float32) * 0.5
    dt = float_dtype(dtype)
    return k.astype(dt), v.astype(dt)


def measure_codec(
    codec: KVCodec,
    shape: tuple[int, ...],
    dtype: npt.DTypeLike,
    repeats: int = 20,
    *,
    kv: tuple[np.ndarray, np.ndarray] | None = None,
    layer: int = 0,
) -> CodecMeasurement:
    """Median encode and decode seconds of one cell's K and V; real arrays via `kv`, else `synthetic_kv`."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    dt = float_dtype(dtype)
    k, v = kv if kv is not None else synthetic_kv(shape, dt)
    if k.shape != tuple(shape) or v.shape != tuple(shape):
        raise ValueError(f"kv arrays {k.shape}/{v.shape} do not have shape {shape}")
    k, v = k.astype(dt), v.astype(dt)
    enc_s, dec_s = [], []
    payloads = (b"", b"")
    for _ in range(repeats):
        t0 = time.perf_counter()
        payloads = (codec.encode(k, kind="k", layer=layer), codec.encode(v, kind="v", layer=layer))
        t1 = time.perf_counter()
        for p in payloads:
            codec.decode(p, shape, dt)
        t2 = time.perf_counter()
        enc_s.append(t1 - t0)
        dec_s.append(t2 - t1)
    measured = sum(len(p) for p in payloads)
    predicted = sum(codec.wire_bytes(shape, dt, kind=kind, layer=layer) for kind in ("k", "v"))
    fp16 = 2 * 2 * numel(shape)
    return CodecMeasurement(
        codec=codec.name,
        shape=tuple(int(n) for n in shape),
        dtype=dt.name,
        bytes_per_cell=measured,
        predicted_bytes_per_cell=predicted,
        fp16_bytes_per_cell=fp16,
        ratio_vs_fp16=measured / fp16 if fp16 else float("nan"),
        encode_s=statistics.median(enc_s),
        decode_s=statistics.median(dec_s),
        repeats=repeats,
        data="given" if kv is not None else "synthetic",
    )
