"""The oracle: the planner with perfect information, the bound every policy is measured against.

It knows the whole future link (a `BandwidthForecast`, e.g. the scenario's scaled trace, with the
request's offset and the link's efficiency and fixed delays) and the true compute costs (the cost
table, optionally on a device shared over time), so its predicted timeline is the simulated one. It
searches harder than SparKV: several planning granularities and transfer sizes, local search over
every chunk, and exhaustive search over monotone k vectors where that is small. It re-plans only
when a transfer fails. Build its options from a world (simulated or real) with `oracle_options(world)`.
"""

from __future__ import annotations

import math
from collections import deque
from itertools import combinations
from typing import Any, Protocol

from sparkv.core.config import Scenario
from sparkv.core.costs import BandwidthForecast
from sparkv.core.events import Command, Compute, Event, Resource, TransferCancelled, TransferFailed
from sparkv.core.request import CellBlock
from sparkv.policies.base import RequestContext
from sparkv.policies.planner import Plan, Planner
from sparkv.policies.planner_model import ComputeSpeed, ConstantLink, Evaluator, ForecastLink, LinkModel, Snapshot
from sparkv.policies.tracking import TrackingPolicy

EXHAUSTIVE_MAX = 3000  # monotone k vectors scored exhaustively up to this many


class _InstallCosts(Protocol):
    @property
    def install_fixed_s(self) -> float: ...  # per transfer, receive side


class OracleWorld(Protocol):
    """The parts of a world (`sparkv.engine.world.World`) the oracle's options come from."""

    @property
    def scenario(self) -> Scenario: ...

    @property
    def trace(self) -> BandwidthForecast: ...  # scaled by the scenario's bandwidth scale; bytes/s

    @property
    def profile(self) -> _InstallCosts: ...

    @property
    def availability(self) -> BandwidthForecast | None: ...  # fraction of the device available, 0..1


def oracle_options(world: OracleWorld) -> dict[str, Any]:
    """make_policy("oracle", **options): the world's scaled trace and link arithmetic, its device availability."""
    link = world.scenario.link
    return {
        "forecast": world.trace,
        "offset_s": link.trace_offset_s,
        "efficiency": link.efficiency,
        "pre_s": link.per_transfer_s + link.rtt_s,
        "post_s": world.profile.install_fixed_s,
        "availability": world.availability,
    }


class OraclePolicy(TrackingPolicy):
    name = "oracle"

    def __init__(
        self,
        forecast: BandwidthForecast | None = None,
        offset_s: float = 0.0,
        efficiency: float = 1.0,
        pre_s: float | None = None,
        post_s: float = 0.0,
        availability: BandwidthForecast | None = None,
        groups: tuple[int, ...] = (1, 3),
        transfer_targets_s: tuple[float, ...] = (2.0, 8.0, math.inf),
        window: int = 6,
    ) -> None:
        super().__init__()
        self.forecast, self.offset_s, self.efficiency = forecast, offset_s, efficiency
        self.pre_s, self.post_s, self.availability = pre_s, post_s, availability
        self.groups, self.targets, self.window = groups, transfer_targets_s, window
        self.compute_q: deque[CellBlock] = deque()
        self.link_q: deque[CellBlock] = deque()
        self.stats: dict[str, Any] = {}
        self.compute_start_s = 0.0

    def _link(self, ctx: RequestContext) -> LinkModel:
        costs = ctx.costs
        if self.forecast is None:  # no forecast given: the cost table's prior, as if it were exact
            return ConstantLink(costs.bandwidth_prior_bps, costs.transfer_fixed_s, costs.install_s_per_byte)
        pre = costs.transfer_fixed_s - self.post_s if self.pre_s is None else self.pre_s
        return ForecastLink(self.forecast, self.offset_s, self.efficiency, pre, self.post_s, costs.install_s_per_byte)

    def on_begin(self, ctx: RequestContext) -> None:
        snap = Snapshot.fresh(ctx.request.num_chunks, ctx.model.num_layers, ctx.start_s)
        self._replan(snap)
        self.stats["predicted_ttft_s"] = self.plan.prediction.ttft_s
        self.stats["plan_k"] = list(self.plan.k)

    def on_event(self, event: Event) -> None:
        if isinstance(event, TransferFailed | TransferCancelled):
            progress, free = self._progress(), event.t_s
            if self.computing is not None:
                work = self._context().costs.compute_s(self.computing)
                free = max(free, ComputeSpeed(1.0, self.availability).end(self.compute_start_s, work))
            self._replan(Snapshot.of(progress, event.t_s, event.t_s, None, free, progress.query_layers_done))

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]:
        commands = super().schedule(now_s, idle)
        if any(isinstance(c, Compute) for c in commands):
            self.compute_start_s = now_s
        return commands

    def _replan(self, snap: Snapshot) -> None:
        ctx = self._context()
        link, speed = self._link(ctx), ComputeSpeed(1.0, self.availability)
        rate = max(ctx.costs.bandwidth_prior_bps, 1.0)
        best: tuple[Plan, Evaluator, float] | None = None
        for g in self.groups:
            ev = Evaluator(ctx.costs, g)
            planner = Planner(ev, window=self.window)
            for target_s in self.targets:
                target = target_s * rate
                plan = planner.plan(snap, link, speed, target)
                if snap.fetching is None and all(p == 0 for p in snap.prefix):
                    plan = _exhaustive_monotone(ev, snap, link, speed, target, plan)
                if best is None or plan.prediction.ttft_s < best[0].prediction.ttft_s - 1e-9:
                    best = (plan, ev, target)
        assert best is not None
        self.plan, ev, target = best
        comp, fetch = ev.blocks(list(self.plan.k), snap, target)
        self.compute_q, self.link_q = deque(comp), deque(fetch)
        self.stats.update(group_layers=ev.group, transfer_bytes=target)

    def next_compute(self, now_s: float) -> CellBlock | None:
        if self.compute_q and self._progress().can_compute(self.compute_q[0]):
            return self.compute_q.popleft()
        return None

    def next_fetch(self, now_s: float) -> CellBlock | None:
        return self.link_q.popleft() if self.link_q else None

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "groups": list(self.groups), "stats": dict(self.stats),
                "forecast": getattr(self.forecast, "name", None), "offset_s": self.offset_s}  # fmt: skip


def monotone_vectors(num_chunks: int, bounds: list[int]) -> list[list[int]]:
    """Every non-increasing k over the group boundaries (C(C + G, C) of them)."""
    n, g = num_chunks, len(bounds) - 1
    out = []
    for bars in combinations(range(n + g), n):  # stars and bars: n chunks over g + 1 levels
        levels = [b - i for i, b in enumerate(bars)]  # non-decreasing in [0, g]
        out.append([bounds[g - x] for x in levels])
    return out


def count_monotone(num_chunks: int, groups: int) -> int:
    return math.comb(num_chunks + groups, num_chunks)


def _exhaustive_monotone(
    ev: Evaluator, snap: Snapshot, link: LinkModel, speed: ComputeSpeed, target: float, plan: Plan
) -> Plan:
    if count_monotone(ev.C, len(ev.bounds) - 1) > EXHAUSTIVE_MAX:
        return plan
    best = plan
    for k in monotone_vectors(ev.C, ev.bounds):
        pred = ev.predict(k, snap, link, speed, target)
        if pred.ttft_s < best.prediction.ttft_s - 1e-9:
            best = Plan(tuple(k), pred, best.evaluations + 1)
    return best
