"""Policies: who decides, per cell, between streaming and computing. See `base` for the contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sparkv.core.errors import UserError
from sparkv.policies.base import Policy, RequestContext
from sparkv.policies.baselines import Bidirectional, LocalOnly, StaticSplit, StreamOnly
from sparkv.policies.oracle import OraclePolicy
from sparkv.policies.sparkv import SparKVPolicy

# name -> factory(**options); the SparKV policy and the oracle register themselves on import below.
POLICIES: dict[str, Callable[..., Policy]] = {
    "local": LocalOnly,
    "stream": StreamOnly,
    "cake": Bidirectional,
    "static": StaticSplit,
    "sparkv": SparKVPolicy,
    "oracle": OraclePolicy,
}
BASELINES = ("local", "stream", "cake", "static")


def make_policy(name: str, **options: Any) -> Policy:
    """A fresh policy object by name."""
    factory = POLICIES.get(name)
    if factory is None:
        raise UserError(f"unknown policy {name!r}; choose from {', '.join(sorted(POLICIES))}")
    return factory(**options)


__all__ = ["BASELINES", "POLICIES", "Policy", "RequestContext", "make_policy"]
