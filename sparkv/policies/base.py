"""The policy contract shared by the simulator and the real executor.

A policy is pure Python: no clock, no threads, no I/O, no SimPy or torch. The request engine
(`sparkv.engine.request`), which both worlds drive, calls

    policy.begin(ctx)                       once, before anything else
    policy.update(event)                    for every event, in time order
    policy.schedule(now_s, idle)            after every event; returns commands

`schedule` may return at most one `Fetch` when the link is idle, at most one `Compute` when the
compute lane is idle, and a `Cancel` for the fetch in flight. The engine runs the query's prefill
layers itself, with priority, as soon as a layer is complete: it sends `QueryLayerStarted` when it
starts one (before the `schedule` call that follows) and `QueryLayerDone` when it ends, for every layer,
and only offers the compute lane to the policy when no query layer runs. Same events in, same commands
out: that is what makes a real run's log replayable (see `sparkv.core.replay`).

The optional hooks below are declared here with their defaults; `policy_hooks` reads them from any
object that follows the protocol structurally, so a policy need not subclass it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from sparkv.core.costs import CostTable
from sparkv.core.events import Command, Event, Resource
from sparkv.core.model import ModelSpec
from sparkv.core.request import Request
from sparkv.policies.planner_energy import EnergyRates


@dataclass(frozen=True, eq=False)
class RequestContext:
    """Everything a policy knows when a request starts."""

    request: Request
    model: ModelSpec
    costs: CostTable  # predicted per-cell costs on this device and link
    start_s: float = 0.0  # request arrival time on the driver's clock
    # the device's compute speed measured just before the request (measured / profiled seconds, e.g. from
    # `RealSession.probe_speed`); None: unknown, plan with the profile's
    speed_hint: float | None = None
    # the power models of this request's radio and device (what its energy is modelled with); None: unknown,
    # and a policy that weighs energy refuses to plan
    energy: EnergyRates | None = None

    def __post_init__(self) -> None:
        if self.speed_hint is not None and not (0 < self.speed_hint < float("inf")):
            raise ValueError(f"speed_hint must be finite and > 0, got {self.speed_hint!r}")


@runtime_checkable
class Policy(Protocol):
    """A loading policy. Required: `name`, `begin`, `update`, `schedule`, `config`; the rest are optional
    hooks with the defaults written here."""

    name: str

    # Period of `Tick` events in seconds, None for none. Ticks also carry in-flight `BandwidthSample`s:
    # without ticks the policy sees one sample per transfer, at its end.
    tick_s: float | None = None

    # Event types whose absence changes none of this policy's decisions. A run that keeps no log may leave
    # them out (it still calls `schedule` where they would have come): a simulated request would
    # otherwise build dozens of events nobody reads. A run with a log sends every event.
    ignored_events: frozenset[type] = frozenset()

    # True when the policy handles `TransferFailed.delivered` (parts of a failed block that arrived whole and
    # are present): it then fetches only the rest. A policy that does not say so sees whole-block failures,
    # and the delivered cells are fetched or computed again.
    keeps_partial_transfers: bool = False

    def begin(self, ctx: RequestContext) -> None:
        """A request starts: forget any earlier one and plan from `ctx`."""

    def update(self, event: Event) -> None:
        """Observe one event (in time order); decide nothing here."""

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]:
        """The commands to carry out now, given the idle lanes."""
        return ()

    def config(self) -> dict[str, Any]:
        """The policy's settings only, as plain data: `make_policy(name, **config)` rebuilds it."""
        return {"name": self.name}

    def stats(self) -> dict[str, Any]:
        """What the policy did in the last request (plans, re-plans, cancels...), saved beside its Result
        (`Result.extra["policy_stats"]`); not settings."""
        return {}


@dataclass(frozen=True)
class PolicyHooks:
    """A policy's optional hooks, read once per request."""

    tick_s: float | None
    ignored_events: frozenset[type]
    stats: Callable[[], dict[str, Any]]
    keeps_partial_transfers: bool = False


def policy_hooks(policy: object) -> PolicyHooks:
    """The optional hooks of `policy`, with the protocol's defaults where it declares none."""
    tick = getattr(policy, "tick_s", None)
    if tick is not None and not (isinstance(tick, int | float) and tick > 0):
        raise ValueError(f"policy {getattr(policy, 'name', policy)!r}: tick_s must be a positive number or None, "
                         f"got {tick!r}")  # fmt: skip
    stats = getattr(policy, "stats", None)
    return PolicyHooks(
        tick_s=float(tick) if tick is not None else None,
        ignored_events=frozenset(getattr(policy, "ignored_events", ())),
        stats=stats if callable(stats) else dict,
        keeps_partial_transfers=bool(getattr(policy, "keeps_partial_transfers", False)),
    )
