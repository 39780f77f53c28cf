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


def check_policy(name: str) -> None:
    """UserError unless `name` is a registered policy."""
    if name not in POLICIES:
        raise UserError(f"unknown policy {name!r}; choose from {', '.join(sorted(POLICIES))}")


def make_policy(name: str, **options: Any) -> Policy:
    """A fresh policy object by name. The oracle must be given its `foresight` (the world's whole future,
    `oracle_options(world)`) or a `forecast` (the future bandwidth alone; None explicitly to plan on the cost
    table's mean): without one it would silently know only the mean."""
    check_policy(name)
    if name == "oracle" and "forecast" not in options and "foresight" not in options:
        raise UserError("the oracle plans on the future bandwidth and more: give it **oracle_options(world) "
                        "or forecast=TRACE "
                        "(sparkv.api.make_policy('oracle', world) uses the world's), or forecast=None to plan "
                        "on the mean bandwidth knowingly")  # fmt: skip
    return POLICIES[name](**options)


__all__ = ["BASELINES", "POLICIES", "Policy", "RequestContext", "check_policy", "make_policy"]
