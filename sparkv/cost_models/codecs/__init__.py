"""KV codecs: what a streamed cell's K and V become on the wire, and their cost to encode and decode.

Names `get_codec` accepts:

    raw | fp16 | bf16 | fp32            element type only (raw: the array's own dtype)
    int8 | int4 [-g<N>] [-t<M>] [-s<S>] [-rot]
                                        min/max quantisation, K per channel (over runs of M tokens with
                                        -t<M>, else over the cell), V per token in groups of N elements;
                                        -s<S>: each cell's first S tokens sent as fp16 (attention sinks);
                                        -rot: Walsh-Hadamard rotation of head_dim first (e.g. int4-t32-s1-rot)
    <codec>+zstd                        followed by zstandard (wire_bytes becomes an estimate)
    <codec>:<a>-<b>,...,<codec>         a codec per layer range (inclusive), the last one for the rest,
                                        e.g. "int8:0-3,int4" (layers 0-3 int8, all others int4)
"""

from __future__ import annotations

import re
from functools import lru_cache

from sparkv.core.errors import UserError
from sparkv.cost_models.codecs.base import KINDS, KVCodec
from sparkv.cost_models.codecs.measure import CodecMeasurement, measure_codec, synthetic_kv
from sparkv.cost_models.codecs.passthrough import BF16Codec, CastCodec
from sparkv.cost_models.codecs.quant import MAX_SINKS, QuantCodec
from sparkv.cost_models.codecs.wrappers import ZSTD_RATIO, LayerwiseCodec, ZstdCodec

CODEC_NAMES = ("raw", "fp16", "bf16", "fp32", "int8", "int4")  # base names; see the module docstring
_GRAMMAR = (
    f"one of {', '.join(CODEC_NAMES)}; int8/int4 may take -g<N> (V group size), -t<M> (K tokens per scale), "
    "-s<S> (first S tokens as fp16) and -rot (Hadamard rotation), in that order, e.g. int4-g32 or "
    "int4-t32-s1-rot; any may end "
    "in +zstd; per layer: 'int8:0-3,int4' (codec:first-last, ..., then the codec for the other layers)"
)
_ENTRY = re.compile(r"^(raw|fp16|bf16|fp32|int8|int4)(?:-g(\d+))?(?:-t(\d+))?(?:-s(\d+))?(-rot)?(\+zstd)?$")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")

__all__ = [
    "CODEC_NAMES",
    "KINDS",
    "ZSTD_RATIO",
    "BF16Codec",
    "CastCodec",
    "CodecMeasurement",
    "KVCodec",
    "LayerwiseCodec",
    "QuantCodec",
    "ZstdCodec",
    "get_codec",
    "measure_codec",
    "synthetic_kv",
]


def _simple(name: str, full: str) -> KVCodec:
    m = _ENTRY.match(name.strip().lower())
    if m is None:
        raise UserError(f"unknown KV codec {full!r}: use {_GRAMMAR}")
    base, group, tokens, sinks, rot, zstd = m.groups()
    codec: KVCodec
    if base.startswith("int"):
        for what, size, hi in (("group size", group, 0xFFFF), ("token group", tokens, 0xFFFF),
                               ("sink count", sinks, MAX_SINKS)):
            if size is not None and not 1 <= int(size) <= hi:
                raise UserError(f"KV codec {full!r}: {what} must be in [1, {hi}]")
        codec = QuantCodec(int(base[3:]), int(group) if group else None, int(tokens) if tokens else None,
                           bool(rot), int(sinks or 0))
    elif group or tokens or sinks or rot:
        raise UserError(f"KV codec {full!r}: only int8 and int4 take -g, -t, -s and -rot")
    elif base == "bf16":
        codec = BF16Codec()
    else:
        codec = CastCodec(base, {"raw": None, "fp16": "<f2", "fp32": "<f4"}[base])
    return ZstdCodec(codec) if zstd else codec


def _layerwise(name: str) -> KVCodec:
    entries: list[tuple[KVCodec, int, int]] = []
    default: KVCodec | None = None
    for part in name.split(","):
        codec_name, sep, ranges = part.partition(":")
        codec = _simple(codec_name, name)
        if not sep:
            if default is not None:
                raise UserError(f"KV codec {name!r}: only one entry may leave out its layer range")
            default = codec
            continue
        m = _RANGE.match(ranges.strip())
        if m is None:
            raise UserError(f"KV codec {name!r}: bad layer range {ranges!r} (use first-last, e.g. 0-3)")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        entries.append((codec, lo, hi))
    try:
        return LayerwiseCodec(tuple(entries), default)
    except ValueError as exc:
        raise UserError(f"KV codec {name!r}: {exc}") from exc


@lru_cache(maxsize=256)
def get_codec(name: str) -> KVCodec:
    """The codec called `name` (grammar in the module docstring); UserError for an unknown name."""
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"empty KV codec name: use {_GRAMMAR}")
    if "," in name or ":" in name:
        return _layerwise(name)
    return _simple(name, name)
