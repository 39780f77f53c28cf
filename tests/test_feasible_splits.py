"""Dependency-feasible splits (no compute command waits for a streamed cell), the TTFT drift test, and the
device-speed hint a request can start from."""

from __future__ import annotations

import random

import pytest

from sparkv.core.config import Scenario
from sparkv.policies.base import RequestContext
from sparkv.policies.controller import Controller, SparKVConfig
from sparkv.policies.estimators import BandwidthEstimator
from sparkv.policies.planner import Planner, feasible_k
from sparkv.policies.planner_model import ComputeSpeed, ConstantLink, Evaluator, Prediction, Snapshot
from sparkv.policies.sparkv import SparKVPolicy
from sparkv.sim import build_world, simulate


def _feasible(k: list[int], snap: Snapshot) -> bool:
    """Every cell chunk c will compute has, in every earlier chunk, a computed or held cell."""
    for c in range(len(k)):
        for layer in range(snap.prefix[c], k[c]):
            for e in range(c):
                if layer >= k[e] and snap.state[e][layer] == 0:
                    return False
    return True


def test_feasible_k_caps_each_chunk_at_what_earlier_chunks_provide() -> None:
    assert feasible_k([9, 18, 30], [0, 0, 0], [30, 30, 30], [0, 0, 0]) == [9, 9, 9]
    # chunk 1 already holds layers [0, 20) (received), so chunk 2 may compute up to min(9 or held) = 9 via chunk 0
    assert feasible_k([9, 3, 30], [0, 0, 0], [30, 30, 30], [0, 20, 0]) == [9, 3, 9]
    # computed cells stay computed; in-flight limits hold
    assert feasible_k([0, 0, 30], [0, 12, 0], [30, 30, 6], [0, 12, 0]) == [0, 12, 0]


def test_planner_with_feasible_splits_never_plans_a_wait() -> None:
    world = build_world(Scenario(context_tokens=8192, trace="const:6mbps,600s", device="analytic-cpu-2core"))
    ev = Evaluator(world.costs, 3)
    link = ConstantLink(world.costs.bandwidth_prior_bps, world.costs.transfer_fixed_s, world.costs.install_s_per_byte)
    rng = random.Random(3)
    for _ in range(20):
        snap = Snapshot.fresh(ev.C, ev.L)
        for c in range(ev.C):  # a request part-way: random computed prefixes and received cells
            snap.prefix[c] = rng.choice([0, 0, 3, 9])
            for layer in range(snap.prefix[c]):
                snap.state[c][layer] = 3
            for layer in range(ev.L - rng.choice([0, 0, 6]), ev.L):
                snap.state[c][layer] = 3
        plan = Planner(ev, feasible=True).plan(snap, link, ComputeSpeed(), 1e6)
        assert _feasible(list(plan.k), snap), plan.k


def test_a_rising_predicted_ttft_is_drift_even_when_the_lanes_end_together() -> None:
    world = build_world(Scenario(context_tokens=4096, trace="const:6mbps,600s", device="analytic-cpu-2core"))
    for flag, expected in ((True, True), (False, False)):
        ctl = Controller(world.costs, SparKVConfig(ttft_drift=flag))
        ctl.adopt(Prediction(10.0, 8.0, 8.0))
        assert ctl.drifted(Prediction(20.0, 18.0, 18.0), now_s=1.0) is expected


@pytest.mark.parametrize("where", ["context", "config"])
def test_speed_hint_starts_the_estimate_and_moves_work_to_the_link(where: str) -> None:
    world = build_world(Scenario(context_tokens=8192, trace="const:8mbps,600s", device="analytic-cpu-2core"))
    plain = SparKVPolicy()
    plain.begin(RequestContext(world.request, world.spec, world.costs))
    slow = SparKVPolicy(speed_hint=3.0) if where == "config" else SparKVPolicy()
    slow.begin(RequestContext(world.request, world.spec, world.costs, 0.0, 3.0 if where == "context" else None))
    assert slow.ctl is not None and slow.ctl.speed.scale == 3.0
    assert sum(slow.k) < sum(plain.k)


def test_speed_hint_helps_on_a_slow_device() -> None:
    slow = "const:0.4B/s,3600s"  # the device runs at 0.4 x its profile's speed
    sc = Scenario(context_tokens=8192, trace="const:8mbps,600s", device="analytic-cpu-2core", availability=slow)
    world = build_world(sc)
    told = simulate(world, SparKVPolicy(), record=False, speed_hint=2.5).ttft_s
    untold = simulate(world, SparKVPolicy(), record=False).ttft_s
    assert told <= untold * 1.001


def test_bad_speed_hints_are_refused() -> None:
    with pytest.raises(ValueError, match="speed_hint"):
        SparKVConfig(speed_hint=0.0)
    world = build_world(Scenario(context_tokens=2048, trace="const:8mbps,600s", device="analytic-cpu-2core"))
    with pytest.raises(ValueError, match="speed_hint"):
        RequestContext(world.request, world.spec, world.costs, 0.0, -1.0)


def test_a_far_off_prior_fades_within_a_second_of_samples() -> None:
    kw = {"prior_bps": 1e7, "window_s": 4.0, "alpha": 0.3, "quantile": 0.3}
    plain = BandwidthEstimator("ewma", **kw)
    weighted = BandwidthEstimator("ewma", **kw, prior_weight_s=0.5)
    for i in range(4):
        for est in (plain, weighted):
            est.add(0.25 * (i + 1), 25_000, 0.25)  # 100 kB/s against a 10 MB/s prior
    assert weighted.estimate() < 0.5 * plain.estimate()
    assert weighted.estimate() == pytest.approx((0.5 * 1e7 + 1e5) / 1.5, rel=0.1)


def test_transfers_are_short_until_the_first_sample() -> None:
    world = build_world(Scenario(context_tokens=4096, trace="const:6mbps,600s", device="analytic-cpu-2core"))
    ctl = Controller(world.costs, SparKVConfig(transfer_target_s=2.0, first_transfer_s=0.5))
    before = ctl.target_bytes()
    ctl.bw.add(0.25, ctl.planning_bps() * 0.25, 0.25)
    assert ctl.target_bytes() == pytest.approx(4 * before, rel=0.01)


def test_transfers_carry_at_most_max_chunks_chunks() -> None:
    world = build_world(Scenario(context_tokens=8192, trace="const:6mbps,600s", device="analytic-cpu-2core"))
    snap = Snapshot.fresh(world.costs.num_chunks, world.costs.num_layers)
    k = [0] * world.costs.num_chunks
    merged = Evaluator(world.costs, 3).link_blocks(k, snap, 1e12)
    capped = Evaluator(world.costs, 3, max_chunks=2).link_blocks(k, snap, 1e12)
    assert max(c1 - c0 for c0, c1, *_ in merged) > 2
    assert max(c1 - c0 for c0, c1, *_ in capped) == 2
    assert sum(b[-1] for b in capped) == sum(b[-1] for b in merged)  # the same bytes, in more transfers
