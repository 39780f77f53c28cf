"""Policies: who decides, per cell, between streaming and computing. See `base` for the contract."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sparkv.core.errors import UserError
from sparkv.policies.base import Policy, RequestContext
from sparkv.policies.baselines import Bidirectional, LocalOnly, StaticSplit, StreamOnly
from sparkv.policies.local_disk import DiskCake, DiskLocal, DiskStream
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
# baselines that also read the KV kept on local disk (a scenario's `local`); not in POLICIES, so the default
# policy lists of runs without local KV stay as they were
DISK_POLICIES: dict[str, Callable[..., Policy]] = {"disk+local": DiskLocal, "disk+stream": DiskStream,
                                                   "disk+cake": DiskCake}  # fmt: skip
NO_DISK_LANE = ("oracle",)  # policies that cannot plan with local KV: not available for such scenarios


def default_policies(local: bool) -> list[str]:
    """What a run tries when not told: every policy; with KV on local disk, the disk baselines too, and not
    the ones that cannot plan with it (`NO_DISK_LANE`)."""
    if not local:
        return list(POLICIES)
    return [*(n for n in POLICIES if n not in NO_DISK_LANE), *DISK_POLICIES]


def check_policy(name: str) -> None:
    """UserError unless `name` is a registered policy."""
    if name not in POLICIES and name not in DISK_POLICIES:
        choices = ", ".join(sorted([*POLICIES, *DISK_POLICIES]))
        raise UserError(f"unknown policy {name!r}; choose from {choices} or a policy config JSON file")


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
    return {**POLICIES, **DISK_POLICIES}[name](**options)


__all__ = [
    "BASELINES",
    "DISK_POLICIES",
    "NO_DISK_LANE",
    "POLICIES",
    "Policy",
    "RequestContext",
    "check_policy",
    "default_policies",
    "make_policy",
]
