"""Decode policies: what is resident and what to read, per layer and step. See `base` for the contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sparkv.core.errors import UserError
from sparkv.policies.decode.base import DecodeContext, DecodePolicy, DecodePolicyBase, top_groups
from sparkv.policies.decode.hillinfer import HillInfer
from sparkv.policies.decode.kvswap import KVSwap, TopMOracle
from sparkv.policies.decode.reference import FullKV, FullReload
from sparkv.policies.decode.streaming import StreamingLLM

DECODE_POLICIES: dict[str, Callable[..., DecodePolicy]] = {
    "full-kv": FullKV,
    "full-reload": FullReload,
    "kvswap": KVSwap,
    "streaming": StreamingLLM,
    "oracle-topm": TopMOracle,
    "hillinfer": HillInfer,
}


def make_decode_policy(name: str, **options: Any) -> DecodePolicy:
    """A fresh decode policy by name."""
    factory = DECODE_POLICIES.get(name)
    if factory is None:
        raise UserError(f"unknown decode policy {name!r}; choose from {', '.join(DECODE_POLICIES)}")
    return factory(**options)


__all__ = [
    "DECODE_POLICIES",
    "DecodeContext",
    "DecodePolicy",
    "DecodePolicyBase",
    "make_decode_policy",
    "top_groups",
]
