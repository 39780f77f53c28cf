"""Receive contention that grows with the received rate: the curve, the simulator's use of it, and the
profile fields `sparkv profile --link` writes."""

from __future__ import annotations

import dataclasses

import pytest

from sparkv.analysis.validate import lane_ratios
from sparkv.commands.profile import contention_rates
from sparkv.core.config import Scenario
from sparkv.core.contention import ReceiveContention
from sparkv.core.errors import UserError
from sparkv.cost_models.profiles import load_profile
from sparkv.policies import make_policy
from sparkv.profiling.contention import ReceiveSlowdown, apply_slowdown, apply_slowdown_curve
from sparkv.sim import build_world, simulate

CURVE = [[2.5e6, 1.04], [10e6, 1.18], [35e6, 1.94]]  # bytes/s received, factor (netns as measured)


def test_the_factor_interpolates_from_one_at_rest_and_holds_past_the_last_point() -> None:
    c = ReceiveContention(1.2, tuple((r, f) for r, f in CURVE))
    assert c.varies and not c.neutral
    assert c.factor(0.0) == 1.0
    assert c.factor(1.25e6) == pytest.approx(1.02)
    assert c.factor(2.5e6) == pytest.approx(1.04)
    assert c.factor(6.25e6) == pytest.approx(1.11)
    assert c.factor(35e6) == pytest.approx(1.94) and c.factor(1e9) == pytest.approx(1.94)
    flat = ReceiveContention(1.2)
    assert not flat.varies and flat.factor(0.0) == flat.factor(1e9) == 1.2
    assert ReceiveContention().neutral
    for bad in (((2.0, 1.1), (1.0, 1.2)), ((0.0, 1.1),), ((1.0, 0.0),)):
        with pytest.raises(ValueError):
            ReceiveContention(1.0, bad)
    assert ReceiveContention.from_link({"compute_slowdown": 1.1, "compute_slowdown_curve": CURVE}).factor(35e6) == 1.94
    assert ReceiveContention.from_link({"compute_slowdown": 1.1}).factor(35e6) == 1.1


def world_with(link: dict[str, object], trace: str):  # type: ignore[no-untyped-def]
    world = build_world(Scenario(context_tokens=4096, chunk_tokens=512, trace=trace))
    return dataclasses.replace(world, profile=dataclasses.replace(world.profile, link=link))


@pytest.mark.parametrize("mbps", [10.0, 40.0, 400.0])
def test_the_simulator_stretches_compute_by_the_factor_at_the_delivered_rate(mbps: float) -> None:
    world = world_with({"compute_slowdown_curve": CURVE}, f"const:{mbps:g}mbps")
    want = ReceiveContention.from_link({"compute_slowdown_curve": CURVE}).factor(
        mbps * 1e6 / 8 * world.scenario.link.efficiency)
    busy = lane_ratios(simulate(world, make_policy("cake")))["compute, link busy"]
    assert busy and all(r == pytest.approx(want, rel=1e-9) for r in busy)
    flat = world_with({"compute_slowdown": want}, f"const:{mbps:g}mbps")  # the same factor, as one number
    assert simulate(world, make_policy("cake")).ttft_s == pytest.approx(simulate(flat, make_policy("cake")).ttft_s,
                                                                        rel=1e-12)  # fmt: skip


def test_a_stepped_trace_gives_each_compute_the_factor_of_its_start() -> None:
    world = world_with({"compute_slowdown_curve": CURVE}, "steps:0.05s@280mbps,10s@20mbps")
    result = simulate(world, make_policy("cake"))
    got = sorted(set(round(r, 6) for r in lane_ratios(result)["compute, link busy"]))
    c = ReceiveContention.from_link({"compute_slowdown_curve": CURVE})
    eff = world.scenario.link.efficiency
    assert got == pytest.approx(sorted({round(c.factor(20e6 / 8 * eff), 6), round(c.factor(280e6 / 8 * eff), 6)}))


def slow(kind: str, rate_mbps: float, received_mbps: float, ratio: float) -> ReceiveSlowdown:
    return ReceiveSlowdown(ratio, 0.01, 0.01 * ratio, 20, received_mbps * 1e6 / 8, kind, rate_mbps * 1e6 / 8,
                           "fp16", 512, 2)  # fmt: skip


def test_a_measured_curve_goes_into_the_link_kinds_calibration() -> None:
    base = load_profile("cpu-smollm2")
    p = apply_slowdown_curve(base, [slow("netns", 320, 281.5, 1.94), slow("netns", 20, 19.9, 1.04),
                                    slow("netns", 80, 76.9, 1.18)])  # fmt: skip
    netns = p.link_for("netns")
    assert netns is not None
    assert netns["compute_slowdown_curve"] == [[19.9e6 / 8, 1.04], [76.9e6 / 8, 1.18], [281.5e6 / 8, 1.94]]
    assert netns["compute_slowdown"] == 1.04  # the lowest rate's, for readers of the single factor
    assert len(p.measurements["receive_contention_curve_by_kind"]["netns"]) == 3
    assert "compute_slowdown_curve" not in p.link  # the default link is pacing's: untouched
    # two asked rates above the receiver's ceiling arrive at one received rate: one point, the larger factor
    q = apply_slowdown_curve(base, [slow("pacing", 20, 19.3, 1.04), slow("pacing", 320, 212.9, 1.2),
                                    slow("pacing", 640, 213.5, 1.25)])  # fmt: skip
    assert q.link["compute_slowdown_curve"] == [[19.3e6 / 8, 1.04], [213.5e6 / 8, 1.25]]
    # a single factor measured later replaces the curve
    r = apply_slowdown(q, slow("pacing", 20, 19.3, 1.07))
    assert "compute_slowdown_curve" not in r.link and r.link["compute_slowdown"] == 1.07
    with pytest.raises(ValueError, match="one link kind"):
        apply_slowdown_curve(base, [slow("netns", 20, 19.9, 1.04), slow("pacing", 20, 19.3, 1.04)])


def test_contention_rates_default_to_multiples_of_the_link_rate() -> None:
    assert contention_rates(None, 20.0) == [20.0, 80.0, 320.0]
    assert contention_rates("80, 20", 20.0) == [20.0, 80.0]
    for bad in ("fast", "0,20", ""):
        with pytest.raises(UserError):
            contention_rates(bad, 20.0)
