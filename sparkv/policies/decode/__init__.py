"""Decode policies: what is resident and what to read, per layer and step. See `base` for the contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sparkv.core.errors import UserError
from sparkv.policies.decode.base import DecodeContext, DecodePolicy, DecodePolicyBase, top_groups
from sparkv.policies.decode.hillinfer import HillInfer
from sparkv.policies.decode.kelle import AERP, H2O, HeadStreaming
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
# Per-head policies (G = 1, attention delivered after each layer): driven by the Kelle worlds
# (`sparkv.sim.kelle`, `sparkv.executor.model.kelle_run`), not by the group-level ones.
HEAD_DECODE_POLICIES: dict[str, Callable[..., DecodePolicy]] = {
    "aerp": AERP,
    "h2o": H2O,
    "streaming-heads": HeadStreaming,
}


def make_decode_policy(name: str, **options: Any) -> DecodePolicy:
    """A fresh decode policy by name."""
    factory = DECODE_POLICIES.get(name) or HEAD_DECODE_POLICIES.get(name)
    if factory is None:
        known = [*DECODE_POLICIES, *HEAD_DECODE_POLICIES]
        raise UserError(f"unknown decode policy {name!r}; choose from {', '.join(known)}")
    return factory(**options)


__all__ = [
    "DECODE_POLICIES",
    "HEAD_DECODE_POLICIES",
    "DecodeContext",
    "DecodePolicy",
    "DecodePolicyBase",
    "make_decode_policy",
    "top_groups",
]
