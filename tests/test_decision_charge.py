"""The policy's decision time: timed in every run, and charged by the simulator only when asked."""

from __future__ import annotations

import time
from typing import Any

import pytest

from sparkv.core.config import Scenario
from sparkv.core.events import Command, Event, Resource
from sparkv.policies import make_policy
from sparkv.policies.base import Policy, RequestContext
from sparkv.sim import build_world, simulate

SLOW_S = 0.02  # the slow policy's decision time per call with commands to give


def world(trace: str = "const:8mbps,600s"):  # type: ignore[no-untyped-def]
    return build_world(Scenario(context_tokens=2048, chunk_tokens=256, trace=trace))


class SlowDecisions:
    """A baseline whose `schedule` takes SLOW_S of wall time whenever it gives a command (a slow planner)."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = f"slow-{inner.name}"
        self.tick_s = getattr(inner, "tick_s", None)

    def begin(self, ctx: RequestContext) -> None:
        self.inner.begin(ctx)

    def update(self, event: Event) -> None:
        self.inner.update(event)

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]:
        commands = self.inner.schedule(now_s, idle)
        if commands:
            end = time.perf_counter() + SLOW_S
            while time.perf_counter() < end:  # real work on the clock, as a planner's search would be
                pass
        return commands

    def config(self) -> dict[str, Any]:
        return self.inner.config()


def compute_starts(result: Any) -> int:
    """Work the compute lane started after a decision: compute commands and query layers."""
    return sum(s.kind in ("compute", "query") for s in result.spans)


@pytest.mark.parametrize("name", ["local", "stream", "cake", "sparkv"])
def test_decisions_are_timed_on_request_and_charged_only_when_asked(name: str) -> None:
    w = world()
    plain = simulate(w, make_policy(name))
    assert "decision" not in plain.extra  # a simulated Result stays reproducible to the bit
    result = simulate(w, make_policy(name), time_decisions=True)
    assert result.ttft_s == plain.ttft_s and result.cells_computed == plain.cells_computed
    d = result.extra["decision"]
    assert d["dispatches"] > 0 and d["total_ms"] > 0
    assert d["median_ms"] <= d["p90_ms"] <= d["max_ms"] <= d["total_ms"]
    assert d["charged_scale"] == 0 and d["charged_latency_ms"] == 0
    assert "decision_charge" not in result.config


def test_a_command_latency_delays_every_compute_start_on_the_critical_path() -> None:
    w = world()
    base = simulate(w, make_policy("local"))
    latency = 0.01
    charged = simulate(w, make_policy("local"), command_latency_s=latency)
    # local-only is one serial lane: each compute command and each query layer starts `latency` later
    assert charged.ttft_s - base.ttft_s == pytest.approx(latency * compute_starts(base), rel=1e-6)
    assert charged.config["decision_charge"] == {"decision_scale": 0.0, "command_latency_s": latency}
    assert charged.cells_computed == base.cells_computed


def test_a_slow_policy_is_charged_its_own_decision_time() -> None:
    w = world()
    base = simulate(w, SlowDecisions(make_policy("local")), time_decisions=True)
    slow = base.extra["decision"]
    assert slow["max_ms"] >= 1e3 * SLOW_S  # the engine timed the slow calls
    charged = simulate(w, SlowDecisions(make_policy("local")), decision_scale=1.0)
    # every compute command waits for its decision (the query layers start before the policy is asked)
    computes = sum(s.kind == "compute" for s in base.spans)
    assert charged.ttft_s - base.ttft_s >= 0.95 * SLOW_S * computes
    assert charged.ttft_s - base.ttft_s <= 1e-3 * charged.extra["decision"]["total_ms"] + 1e-9
    assert charged.extra["decision"]["charged_scale"] == 1.0
    assert simulate(w, SlowDecisions(make_policy("local"))).ttft_s == base.ttft_s  # uncharged: not at all


def test_a_charged_sparkv_still_loads_every_cell_and_is_slower() -> None:
    w = world("steps:2s@12mbps,3s@0mbps,600s@4mbps")
    base = simulate(w, make_policy("sparkv"))
    charged = simulate(w, SlowDecisions(make_policy("sparkv")), decision_scale=1.0, command_latency_s=1e-3)
    cells = w.request.num_chunks * w.spec.num_layers  # (a computed block may recompute a streamed cell)
    assert charged.cells_computed + charged.cells_streamed >= cells
    assert charged.ttft_s > base.ttft_s


@pytest.mark.parametrize("kwargs", [{"decision_scale": -1.0}, {"command_latency_s": float("inf")}])
def test_bad_charges_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        simulate(world(), make_policy("local"), **kwargs)
