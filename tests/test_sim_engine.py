"""The SimPy world against closed-form TTFT on a constant trace, determinism, and cancellation."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from sparkv.core.config import LinkConfig, Scenario
from sparkv.core.costs import CostTable
from sparkv.core.events import Command, Event, Fetch, Resource, TransferCancelled
from sparkv.core.model import BUILTIN_SPECS
from sparkv.core.replay import replay
from sparkv.core.request import CellBlock, Request
from sparkv.cost_models.compute import FittedCompute
from sparkv.cost_models.energy import ComputePower, get_radio
from sparkv.cost_models.profiles import DeviceProfile
from sparkv.policies import make_policy
from sparkv.policies.tracking import TrackingPolicy
from sparkv.sim import SimulationStalled, World, simulate
from sparkv.traces import constant, steps

RATE = 1_000_000.0  # bytes/s
CELL_BYTES = 100_000
CELL_S = 0.05
QUERY_S = 0.01
FIRST_S = 0.02
RTT = 0.03
SERVICE = 0.002
INSTALL_PER_BYTE = 1e-8


def make_world(
    chunks: int = 4, layers: int = 3, trace: Any = None, noise: float = 0.0, seed: int = 0, eff: float = 1.0
) -> World:
    spec = BUILTIN_SPECS["smollm2-135m"]
    request = Request(context_tokens=chunks * 100, query_tokens=10, chunk_tokens=100)
    link = LinkConfig(rtt_s=RTT, per_transfer_s=SERVICE, efficiency=eff)
    scenario = Scenario(context_tokens=request.context_tokens, chunk_tokens=100, link=link, seed=seed,
                        compute_noise=noise)
    profile = DeviceProfile(
        name="test", kind="analytic", device="test",
        compute=FittedCompute("smollm2-135m", CELL_S, 0.0, 0.0, launch_s=0.0, lm_head_s=FIRST_S),
        power=ComputePower(active_w=10.0, idle_w=1.0),
        install_s_per_byte=INSTALL_PER_BYTE,
    )
    costs = CostTable(
        compute_cell_s=np.full((chunks, layers), CELL_S),
        compute_launch_s=0.0,
        cell_bytes=np.full((chunks, layers), CELL_BYTES, dtype=np.int64),
        transfer_fixed_s=RTT + SERVICE,
        install_s_per_byte=INSTALL_PER_BYTE,
        query_layer_s=np.full(layers, QUERY_S),
        first_token_s=FIRST_S,
        bandwidth_prior_bps=RATE * eff,
        link_efficiency=eff,
    )
    spec = type(spec)(**{**spec.to_dict(), "num_layers": layers})
    return World(scenario, request, spec, trace or constant(RATE, 1000.0), profile, costs, get_radio("lte"), None)


def fetch_s(n_bytes: float, rate: float = RATE, eff: float = 1.0) -> float:
    return SERVICE + RTT + n_bytes / (rate * eff) + n_bytes * INSTALL_PER_BYTE


def test_local_only_closed_form() -> None:
    w = make_world()
    r = simulate(w, make_policy("local"))
    expected = 4 * 3 * CELL_S + 3 * QUERY_S + FIRST_S
    assert r.ttft_s == pytest.approx(expected, rel=1e-9)
    assert r.cells_computed == 12 and r.bytes_streamed == 0


def test_stream_only_closed_form() -> None:
    w = make_world(eff=0.8)
    r = simulate(w, make_policy("stream"))
    # one transfer per layer (all 4 chunks); query layer l runs as soon as layer l has landed
    t = 0.0
    q = 0.0
    for _ in range(3):
        t += fetch_s(4 * CELL_BYTES, eff=0.8)
        q = max(t, q) + QUERY_S
    assert r.ttft_s == pytest.approx(q + FIRST_S, rel=1e-9)
    assert r.bytes_streamed == 12 * CELL_BYTES and r.cells_streamed == 12


def test_cake_meets_in_the_middle() -> None:
    w = make_world()
    r = simulate(w, make_policy("cake"))
    # compute: 0.15 s per chunk from the front; stream: fetch_s(3 cells) = 0.332 s per chunk from the back.
    # t=0: compute c0 and fetch c3; c0 done .15 -> c1 (.30) -> c2 (.45); c3 lands at .332; c2 is
    # already being computed when the link frees up, so nothing is left to stream.
    assert r.cells_streamed == 3 and r.cells_computed == 9
    assert r.ttft_s == pytest.approx(0.45 + 3 * QUERY_S + FIRST_S, rel=1e-9)


def test_static_split_uses_prior_bandwidth() -> None:
    w = make_world()
    r = simulate(w, make_policy("static"))
    # split m minimises max(0.15 m, 0.332 (4 - m)) -> m = 3 (0.45 vs 0.332)
    assert r.cells_computed == 9 and r.cells_streamed == 3
    assert r.extra["policy_stats"]["split_chunk"] == 3 and "split_chunk" not in r.config["policy"]


def test_step_trace_closed_form() -> None:
    # 0.1 s at 0 B/s then 1 MB/s: the first payload starts at RTT + SERVICE = 0.032 s, waits for the step.
    trace = steps([(0.1, 0.0), (1000.0, RATE)])
    w = make_world(chunks=1, layers=1, trace=trace)
    r = simulate(w, make_policy("stream"))
    expected = 0.1 + CELL_BYTES / RATE + CELL_BYTES * INSTALL_PER_BYTE + QUERY_S + FIRST_S
    assert r.ttft_s == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("policy", ["local", "stream", "cake", "static"])
def test_same_seed_same_result(policy: str) -> None:
    a = simulate(make_world(noise=0.2, seed=5), make_policy(policy))
    b = simulate(make_world(noise=0.2, seed=5), make_policy(policy))
    assert a.to_dict() == b.to_dict()


def test_noise_changes_with_seed() -> None:
    a = simulate(make_world(noise=0.2, seed=1), make_policy("local"))
    b = simulate(make_world(noise=0.2, seed=2), make_policy("local"))
    assert a.ttft_s != b.ttft_s


@pytest.mark.parametrize("policy", ["local", "stream", "cake", "static"])
def test_log_replays_to_the_same_decisions(policy: str) -> None:
    w = make_world()
    r = simulate(w, make_policy(policy))
    fresh = make_policy(policy)
    from sparkv.policies.base import RequestContext

    fresh.begin(RequestContext(w.request, w.spec, w.costs, 0.0))
    assert replay(fresh, r.log) == []
    assert any(entry["call"] == "schedule" and entry["commands"] for entry in r.log)


@pytest.mark.parametrize("policy", ["local", "stream", "cake", "static", "sparkv"])
def test_a_run_without_log_gives_the_same_result(policy: str) -> None:
    """Without a log the engine leaves out the events a policy's `update` ignores; nothing else changes."""
    w = make_world(trace=steps([(2.0, RATE), (1.0, RATE / 8)]), noise=0.1, seed=3)
    logged, unlogged = simulate(w, make_policy(policy)), simulate(w, make_policy(policy), record=False)
    assert unlogged.log == [] and logged.log
    for r in (logged, unlogged):
        r.log, r.extra = [], {}
    assert unlogged.to_dict() == logged.to_dict()


class EventCounter(TrackingPolicy):
    """Stream-only by layers, counting the events it is given: it reacts to events, so it gets them all."""

    name = "count-test"

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = {}

    def on_event(self, event: Event) -> None:
        self.seen[type(event).__name__] = self.seen.get(type(event).__name__, 0) + 1

    def next_fetch(self, now_s: float) -> CellBlock | None:
        p = self._progress()
        missing = [layer for layer in range(p.num_layers) if not p.layer_complete(layer)]
        return CellBlock(0, p.num_chunks, missing[0], missing[0] + 1) if missing else None


def test_a_policy_that_reacts_gets_every_event_without_a_log() -> None:
    assert EventCounter.ignored_events == frozenset() and make_policy("stream").ignored_events
    policy = EventCounter()
    simulate(make_world(), policy, record=False)
    assert policy.seen == {"RequestStarted": 1, "BandwidthSample": 3, "TransferDone": 3, "QueryLayerStarted": 3,
                           "QueryLayerDone": 3}  # every layer, the last one included


class CancelAt(TrackingPolicy):
    """Fetch everything as one block, cancel it at `cancel_s`, then compute everything."""

    name = "cancel-test"
    tick_s = 0.05

    def __init__(self, cancel_s: float) -> None:
        super().__init__()
        self.cancel_s = cancel_s
        self.fetched = False
        self.cancelled = False

    def next_fetch(self, now_s: float) -> CellBlock | None:
        if self.fetched:
            return None
        self.fetched = True
        p = self._progress()
        return CellBlock(0, p.num_chunks, 0, p.num_layers)

    def maybe_cancel(self, now_s: float) -> CellBlock | None:
        if now_s >= self.cancel_s and not self.cancelled:
            self.cancelled = True
            return self.in_flight
        return None

    def next_compute(self, now_s: float) -> CellBlock | None:
        p = self._progress()
        if not self.cancelled or self.in_flight is not None:
            return None
        for c in range(p.num_chunks):
            if p.computed_prefix[c] == 0:
                return CellBlock.one(c, 0, p.num_layers)
        return None


def test_cancel_accounts_bytes_received() -> None:
    w = make_world()
    r = simulate(w, CancelAt(cancel_s=0.2))
    cancelled = [s for s in r.spans if s.kind == "cancelled"]
    assert len(cancelled) == 1
    # the first tick at or after 0.2 s is 0.2 (ticks every 0.05 s); payload flowed from RTT + SERVICE
    data_s = 0.2 - (RTT + SERVICE)
    assert cancelled[0].end_s == pytest.approx(0.2)
    assert cancelled[0].bytes == int(data_s * RATE)
    assert r.bytes_wasted == cancelled[0].bytes and r.bytes_streamed == 0
    assert r.cells_computed == 12
    events = [e["event"]["type"] for e in r.log if e["call"] == "update"]
    assert "TransferCancelled" in events and "BandwidthSample" in events


def test_cancel_before_the_first_byte_wastes_nothing() -> None:
    class Early(CancelAt):
        tick_s = 0.01  # the second tick (0.02 s) falls inside the round trip (RTT + SERVICE = 0.032 s)

    r = simulate(make_world(), Early(cancel_s=0.02))
    (cancelled,) = [s for s in r.spans if s.kind == "cancelled"]
    assert cancelled.end_s == pytest.approx(0.02) and cancelled.bytes == 0 and r.bytes_wasted == 0
    assert r.cells_computed == 12 and r.bytes_streamed == 0


def test_cancel_during_installation_is_ignored() -> None:
    class Fine(CancelAt):
        tick_s = 0.001

    install_s = 12 * CELL_BYTES * INSTALL_PER_BYTE  # 12 ms after the last payload byte
    payload_end = RTT + SERVICE + 12 * CELL_BYTES / RATE
    r = simulate(make_world(), Fine(cancel_s=payload_end + install_s / 2))
    cancels = [c for e in r.log if e["call"] == "schedule" for c in e["commands"] if c["type"] == "Cancel"]
    assert len(cancels) == 1  # the policy asked, during installation
    assert not [s for s in r.spans if s.kind == "cancelled"]
    assert r.bytes_streamed == 12 * CELL_BYTES and r.bytes_wasted == 0


def test_zero_bandwidth_stream_only_stalls_with_reason() -> None:
    w = make_world()
    # a trace that is zero for the whole simulated horizon
    horizon = steps([(5000.0, 0.0), (1.0, RATE)])
    dead = World(w.scenario, w.request, w.spec, horizon, w.profile, w.costs, w.radio, None)
    with pytest.raises(SimulationStalled, match="no bytes") as stalled:
        simulate(dead, make_policy("stream"), max_time_s=100.0)
    assert not stalled.value.needs_longer


def test_a_request_cut_off_while_computing_needs_longer() -> None:
    with pytest.raises(SimulationStalled, match="needs longer") as stalled:
        simulate(make_world(), make_policy("local"), max_time_s=0.1)  # 12 cells of 0.05 s each
    assert stalled.value.needs_longer


def test_energy_components_are_positive_and_sum() -> None:
    r = simulate(make_world(), make_policy("cake"))
    assert set(r.energy_j) == {"radio", "compute", "idle"}
    assert r.energy_j["compute"] == pytest.approx(10.0 * sum(s.end_s - s.start_s for s in r.spans
                                                               if s.lane == "compute"))
    assert r.energy_total_j == pytest.approx(sum(r.energy_j.values()))
    assert not math.isnan(r.ttft_s)


class BadFetch(TrackingPolicy):
    name = "bad"

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]:
        return (Fetch(CellBlock(0, 1, 0, 1)), Fetch(CellBlock(1, 2, 0, 1))) if idle else ()


def test_two_fetches_at_once_is_a_policy_bug() -> None:
    with pytest.raises(RuntimeError, match="while the link is busy"):
        simulate(make_world(), BadFetch())


def test_transfer_cancelled_event_type_exists() -> None:
    assert TransferCancelled(0.0, CellBlock(0, 1, 0, 1), 0).bytes == 0


def test_background_load_slows_compute() -> None:
    w = make_world()
    half = World(w.scenario, w.request, w.spec, w.trace, w.profile, w.costs, w.radio, constant(0.5, 1000.0))
    full = simulate(w, make_policy("local")).ttft_s
    assert simulate(half, make_policy("local")).ttft_s == pytest.approx(2 * full, rel=1e-9)


def test_shared_server_queues_transfers() -> None:
    w = make_world()
    alone = simulate(w, make_policy("stream")).ttft_s
    shared = w.scenario.with_(server_background_rps=400.0, seed=1)
    busy = World(shared, w.request, w.spec, w.trace, w.profile, w.costs, w.radio, None)
    # other clients hold the single slot for the per-transfer service time (2 ms) at 400 transfers/s (80% busy)
    assert simulate(busy, make_policy("stream")).ttft_s > alone


def test_compute_slows_while_a_transfer_is_in_flight() -> None:
    from dataclasses import replace

    from sparkv.analysis.validate import lane_ratios

    base = make_world()
    slow = replace(base, profile=replace(base.profile, link={"compute_slowdown": 1.2}))
    local = simulate(slow, make_policy("local"))
    assert local.ttft_s == pytest.approx(simulate(base, make_policy("local")).ttft_s, rel=1e-12)  # no transfer
    cake = simulate(slow, make_policy("cake"))
    ratios = lane_ratios(cake)
    # c0 starts with the first fetch and c1 while it is still in flight: both 1.2x; nothing else computes
    assert ratios["compute, link busy"] == pytest.approx([1.2, 1.2])
    compute = [s for s in cake.spans if s.kind == "compute"]
    assert [s.end_s for s in compute] == pytest.approx([3 * CELL_S * 1.2, 6 * CELL_S * 1.2])
    assert cake.ttft_s > simulate(base, make_policy("cake")).ttft_s
