"""Baseline policies on their own: plans, recovery after failed transfers, and the driver contract."""

from __future__ import annotations

import numpy as np
import pytest

from sparkv.core.costs import CostTable
from sparkv.core.errors import UserError
from sparkv.core.events import (
    Compute,
    ComputeDone,
    Fetch,
    RequestStarted,
    Resource,
    TransferCancelled,
    TransferDone,
    TransferFailed,
)
from sparkv.core.model import BUILTIN_SPECS
from sparkv.core.request import CellBlock, Request
from sparkv.policies import make_policy
from sparkv.policies.base import Policy, RequestContext

BOTH = frozenset({Resource.LINK, Resource.COMPUTE})


def context(chunks: int = 4, layers: int = 3, bandwidth_bps: float = 1e6) -> RequestContext:
    spec = type(BUILTIN_SPECS["smollm2-135m"])(**{**BUILTIN_SPECS["smollm2-135m"].to_dict(), "num_layers": layers})
    costs = CostTable(np.full((chunks, layers), 0.05), 0.0, np.full((chunks, layers), 100_000), 0.03, 0.0,
                      np.full(layers, 0.01), 0.02, bandwidth_bps)
    return RequestContext(Request(chunks * 100, 10, 100), spec, costs)


def started(name: str, ctx: RequestContext) -> Policy:
    policy = make_policy(name)
    policy.begin(ctx)
    policy.update(RequestStarted(0.0))
    return policy


def test_unknown_policy_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown policy"):
        make_policy("nope")


def test_first_commands() -> None:
    ctx = context()
    assert started("local", ctx).schedule(0.0, BOTH) == (Compute(CellBlock(0, 1, 0, 3)),)
    assert started("stream", ctx).schedule(0.0, BOTH) == (Fetch(CellBlock(0, 4, 0, 1)),)
    assert started("cake", ctx).schedule(0.0, BOTH) == (Compute(CellBlock(0, 1, 0, 3)), Fetch(CellBlock(3, 4, 0, 3)))


def test_static_split_moves_with_bandwidth() -> None:
    slow = started("static", context(bandwidth_bps=1e5))
    fast = started("static", context(bandwidth_bps=1e8))
    assert slow.stats()["split_chunk"] > fast.stats()["split_chunk"]


def test_stream_refetches_a_lost_layer_then_goes_on() -> None:
    policy = started("stream", context())
    link = frozenset({Resource.LINK})
    fetched = []
    for outcome in ("done", "failed", "done", "cancelled", "done"):  # 3 layers
        (fetch,) = policy.schedule(0.0, link)
        assert isinstance(fetch, Fetch)
        fetched.append(fetch.block.layer_lo)
        if outcome == "done":
            policy.update(TransferDone(0.0, fetch.block, 400_000, 0.1))
        elif outcome == "failed":
            policy.update(TransferFailed(0.0, fetch.block, 0, "checksum"))
        else:
            policy.update(TransferCancelled(0.0, fetch.block, 1000))
    assert fetched == [0, 1, 1, 2, 2]
    assert policy.schedule(0.0, link) == ()  # every layer present


@pytest.mark.parametrize("name", ["stream", "cake", "static", "sparkv"])
def test_repeated_failures_fall_back_to_computing(name: str) -> None:
    ctx = context()
    policy = started(name, ctx)
    t = 0.0
    for _ in range(2):  # two failed transfers in a row: the link is given up
        commands = policy.schedule(t, frozenset({Resource.LINK}))
        fetch = next(c for c in commands if isinstance(c, Fetch))
        t += 0.1
        policy.update(TransferFailed(t, fetch.block, 0, "server gone"))
    assert not any(isinstance(c, Fetch) for c in policy.schedule(t, frozenset({Resource.LINK})))
    # the compute lane now covers every cell, chunk after chunk, in dependency order
    computed = 0

    for _ in range(20):
        commands = policy.schedule(t, frozenset({Resource.COMPUTE}))
        if not commands:
            break
        (cmd,) = commands
        assert isinstance(cmd, Compute)
        t += 0.1
        policy.update(ComputeDone(t, cmd.block, 0.1))
        computed += cmd.block.num_cells
    assert computed == 12
