"""The oracle: a policy with perfect information, the bound every policy is measured against.

It is told the whole future (`foresight.Foresight`: the scaled trace with the request's offset, the
link's efficiency, round trip and server service, installation costs, the receive slowdown, the
device's availability, the KV server's other clients and the compute noise, the last two drawn from
the scenario's seed like the simulator draws them) and the true compute costs, so it models
everything the simulator models. It searches (`oracle_search.OracleSearch`) over the planner's plans
at several granularities and transfer sizes (the planner's timeline with the slowdown, the future link
and the availability), the baselines' schedules, and local moves around the best, and scores every
candidate by replaying it with the simulator's own arithmetic (`oracle_replay.Replayer`): its
predicted TTFT is the simulated one, and it runs the best schedule it found. It re-plans only when a
transfer fails (never in the simulator), on the planner's timeline. Build its options from a
world (simulated or real) with `oracle_options(world)`.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Protocol

from sparkv.core.config import Scenario
from sparkv.core.contention import ReceiveContention
from sparkv.core.costs import BandwidthForecast, CostTable
from sparkv.core.events import Command, Compute, Event, Resource, TransferCancelled, TransferFailed
from sparkv.core.request import CellBlock
from sparkv.policies.base import RequestContext
from sparkv.policies.foresight import Foresight
from sparkv.policies.oracle_replay import Replayer
from sparkv.policies.oracle_search import (
    EXHAUSTIVE_MAX,
    Found,
    OracleSearch,
    count_monotone,
    exhaustive_monotone,
    monotone_vectors,
)
from sparkv.policies.planner import Plan, Planner
from sparkv.policies.planner_model import ComputeSpeed, ConstantLink, Evaluator, ForecastLink, LinkModel, Snapshot
from sparkv.policies.tracking import TrackingPolicy

REFINE_REPLAYS = 150  # replays the local search around the best candidates may spend
SHAKE_MOVES = 300  # random moves per planning granularity on the planner's timeline


class _Profile(Protocol):
    @property
    def install_fixed_s(self) -> float: ...  # per transfer, receive side

    @property
    def link(self) -> dict[str, Any]: ...  # link calibration; the receive path's cost (`ReceiveContention`)


class OracleWorld(Protocol):
    """The parts of a world (`sparkv.engine.world.World`) the oracle's options come from."""

    @property
    def scenario(self) -> Scenario: ...

    @property
    def trace(self) -> BandwidthForecast: ...  # scaled by the scenario's bandwidth scale; bytes/s

    @property
    def profile(self) -> _Profile: ...

    @property
    def availability(self) -> BandwidthForecast | None: ...  # fraction of the device available, 0..1


def foresight_of(world: OracleWorld) -> Foresight:
    """Everything the simulator does in `world` that a policy cannot see, as the simulator reads it: the
    scaled trace, the link's constants, the profile's fixed installation cost and receive slowdown, the
    device's availability, the server's other clients and the compute noise (with the scenario's seed)."""
    scenario = world.scenario
    link = scenario.link
    contention = ReceiveContention.from_link(world.profile.link)
    return Foresight(
        world.trace, link.trace_offset_s, link.efficiency, link.per_transfer_s, link.rtt_s,
        world.profile.install_fixed_s, contention.constant, contention.points, world.availability,
        link.server_concurrency, link.server_background_rps, scenario.compute_noise, scenario.seed,
    )  # fmt: skip


def oracle_options(world: OracleWorld) -> dict[str, Any]:
    """make_policy("oracle", **options): the world's whole future (`foresight_of`)."""
    return {"foresight": foresight_of(world)}


class OraclePolicy(TrackingPolicy):
    name = "oracle"

    def __init__(
        self,
        foresight: Foresight | None = None,
        forecast: BandwidthForecast | None = None,
        offset_s: float = 0.0,
        efficiency: float = 1.0,
        pre_s: float | None = None,
        post_s: float = 0.0,
        availability: BandwidthForecast | None = None,
        groups: tuple[int, ...] = (1, 3),
        transfer_targets_s: tuple[float, ...] = (2.0, 8.0, math.inf),
        window: int = 6,
        refine_replays: int = REFINE_REPLAYS,
        shake_moves: int = SHAKE_MOVES,
    ) -> None:
        """`foresight` says everything; without it, `forecast`... `availability` give the link and the
        device alone (an idle server, no slowdown, no noise), and without a forecast the oracle plans on
        the cost table's bandwidth prior as if it were exact."""
        super().__init__()
        if foresight is not None and forecast is not None:
            raise ValueError("give the oracle either a foresight or a forecast, not both")
        self.foresight = foresight
        self.forecast = foresight.forecast if foresight is not None else forecast  # the future link it plans on
        self.offset_s, self.efficiency = offset_s, efficiency
        self.pre_s, self.post_s = pre_s, post_s
        self.availability = foresight.availability if foresight is not None else availability
        self.groups, self.targets, self.window = groups, transfer_targets_s, window
        self.refine_replays, self.shake_moves = refine_replays, shake_moves
        self.compute_q: deque[CellBlock] = deque()
        self.link_q: deque[CellBlock] = deque()
        self._stats: dict[str, Any] = {}
        self.compute_start_s = 0.0

    def _foresight(self, costs: CostTable) -> Foresight | None:
        if self.foresight is not None or self.forecast is None:
            return self.foresight  # (no forecast: the cost table's prior, planned on the timeline alone)
        pre = costs.transfer_fixed_s - self.post_s if self.pre_s is None else self.pre_s
        # an idle server: only the sum service + round trip matters, so it all counts as service
        return Foresight(self.forecast, self.offset_s, self.efficiency, service_s=pre, rtt_s=0.0,
                         install_fixed_s=self.post_s, availability=self.availability)  # fmt: skip

    def _models(self, costs: CostTable) -> tuple[LinkModel, ComputeSpeed]:
        fs = self._foresight(costs)
        if fs is None:  # no forecast given: the cost table's prior, as if it were exact
            prior = ConstantLink(costs.bandwidth_prior_bps, costs.transfer_fixed_s, costs.install_s_per_byte)
            return prior, ComputeSpeed(1.0, self.availability)
        server = fs.server() if fs.contended else None
        link = ForecastLink(fs.forecast, fs.offset_s, fs.efficiency, fs.first_byte_s, fs.install_fixed_s,
                            costs.install_s_per_byte, server, fs.rtt_s)  # fmt: skip
        # the planner models one slowdown: where it varies with the rate, the curve at the mean rate of
        # streaming the whole context (the replay that picks the schedule applies the exact rule)
        return link, ComputeSpeed(1.0, fs.availability, fs.planning_slowdown(float(costs.cell_bytes.sum())))

    def on_begin(self, ctx: RequestContext) -> None:
        costs = ctx.costs
        fs = self._foresight(costs)
        if fs is None or ctx.start_s != 0.0:
            snap = Snapshot.fresh(ctx.request.num_chunks, ctx.model.num_layers, ctx.start_s)
            self._replan(snap)
            self._stats["predicted_ttft_s"] = self.plan.prediction.ttft_s
            self._stats["plan_k"] = list(self.plan.k)
            self._stats["source"] = "planner"
            return
        best = self.best_schedule(costs, fs)
        self.compute_q, self.link_q = deque(best.schedule.compute), deque(best.schedule.link)
        self._stats.update(best.stats)
        self._stats.update(predicted_ttft_s=best.replayed.ttft_s, cells_computed=best.cells_computed,
                          group_layers=best.group, transfer_bytes=best.target_bytes)  # fmt: skip
        if best.k is not None:
            self._stats["plan_k"] = list(best.k)

    def best_schedule(self, costs: CostTable, foresight: Foresight) -> Found:
        """The schedule the oracle runs for a request with `costs` starting at 0 (a pure function of both)."""
        link, speed = self._models(costs)
        rate = max(costs.bandwidth_prior_bps, 1.0)
        targets = tuple(t * rate for t in self.targets)
        search = OracleSearch(costs, Replayer(costs, foresight), link, speed, self.groups, targets, self.window,
                              self.refine_replays, self.shake_moves)  # fmt: skip
        return search.best()

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
        """The planner's best plan from `snap` on its own timeline (a re-plan after a lost transfer)."""
        ctx = self._context()
        link, speed = self._models(ctx.costs)
        rate = max(ctx.costs.bandwidth_prior_bps, 1.0)
        best: tuple[Plan, Evaluator, float] | None = None
        for g in self.groups:
            ev = Evaluator(ctx.costs, g)
            planner = Planner(ev, window=self.window)
            for target_s in self.targets:
                target = target_s * rate
                plan = planner.plan(snap, link, speed, target)
                if snap.fetching is None and all(p == 0 for p in snap.prefix):
                    plan = exhaustive_monotone(ev, snap, link, speed, target, plan)
                if best is None or plan.prediction.ttft_s < best[0].prediction.ttft_s - 1e-9:
                    best = (plan, ev, target)
        assert best is not None
        self.plan, ev, target = best
        comp, fetch = ev.blocks(list(self.plan.k), snap, target)
        self.compute_q, self.link_q = deque(comp), deque(fetch)
        self._stats.update(group_layers=ev.group, transfer_bytes=target)

    def next_compute(self, now_s: float) -> CellBlock | None:
        if self.compute_q and self._progress().can_compute(self.compute_q[0]):
            return self.compute_q.popleft()
        return None

    def next_fetch(self, now_s: float) -> CellBlock | None:
        return self.link_q.popleft() if self.link_q else None

    def config(self) -> dict[str, Any]:
        known = self.foresight.describe() if self.foresight is not None else {
            "forecast": getattr(self.forecast, "name", None), "offset_s": self.offset_s}  # fmt: skip
        return {"name": self.name, "groups": list(self.groups), "refine_replays": self.refine_replays,
                "shake_moves": self.shake_moves,
                **known}  # fmt: skip

    def stats(self) -> dict[str, Any]:
        return dict(self._stats)


__all__ = [
    "EXHAUSTIVE_MAX",
    "OraclePolicy",
    "OracleWorld",
    "count_monotone",
    "foresight_of",
    "monotone_vectors",
    "oracle_options",
]
