"""The policy contract shared by the simulator and the real executor.

A policy is pure Python: no clock, no threads, no I/O, no SimPy or torch. A driver calls

    policy.begin(ctx)                       once, before anything else
    policy.update(event)                    for every event, in time order
    policy.schedule(now_s, idle)            after every event; returns commands

`schedule` may return at most one `Fetch` when the link is idle, at most one `Compute` when the
compute lane is idle, and a `Cancel` for the fetch in flight. The driver runs query prefill layers
itself, with priority, as soon as a layer is complete, and only offers the compute lane to the policy
when no query layer is ready. Same events in, same commands out: that is what makes a real run's log
replayable (see `sparkv.core.replay`).

A policy may name, in `ignored_events`, the event types its `update` does nothing with. A driver
that keeps no log may then leave them out (it still calls `schedule` where they would have come):
a simulated request would otherwise build dozens of events nobody reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sparkv.core.costs import CostTable
from sparkv.core.events import Command, Event, Resource
from sparkv.core.model import ModelSpec
from sparkv.core.request import Request


@dataclass(frozen=True, eq=False)
class RequestContext:
    """Everything a policy knows when a request starts."""

    request: Request
    model: ModelSpec
    costs: CostTable  # predicted per-cell costs on this device and link
    start_s: float = 0.0  # request arrival time on the driver's clock


def ignored_events(policy: object) -> frozenset[type]:
    """The event types `policy` says its `update` ignores (none unless it says so)."""
    return frozenset(getattr(policy, "ignored_events", ()))


@runtime_checkable
class Policy(Protocol):
    name: str

    def begin(self, ctx: RequestContext) -> None: ...

    def update(self, event: Event) -> None: ...

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]: ...

    def config(self) -> dict[str, Any]: ...
