"""The receive path's per-byte cost: fitted from link fits at several rates, applied to the world's trace (so
the simulator, oracle and planners see it) while a real link still plays the unlimited trace."""

from __future__ import annotations

import dataclasses

import pytest

from sparkv.commands.profile import receive_rates
from sparkv.core.config import LinkConfig, Scenario
from sparkv.core.errors import UserError
from sparkv.cost_models.link_calibration import apply_calibration, apply_receive_fit, fit_link, fit_receive_cost
from sparkv.cost_models.profiles import load_profile
from sparkv.policies import make_policy
from sparkv.sim import build_world, simulate

SIZES = (16_384, 65_536, 262_144, 1_048_576, 4_194_304)


def link_fit(rate_bps: float, efficiency: float, s_per_byte: float, fixed_s: float = 0.001):  # type: ignore[no-untyped-def]
    samples = [(n, fixed_s + n / (rate_bps * efficiency) + n * s_per_byte) for n in SIZES]
    return fit_link(samples, rate_bps, 0.0001)


def test_fits_at_three_rates_give_back_the_wire_efficiency_and_the_receivers_cost() -> None:
    fits = [link_fit(r, 0.97, 3e-9) for r in (5e6, 20e6, 80e6)]
    fit = fit_receive_cost(fits)
    assert fit.efficiency == pytest.approx(0.97, rel=1e-6)
    assert fit.s_per_byte == pytest.approx(3e-9, rel=1e-5)
    assert fit.rel_error["max"] < 1e-6
    assert fit.goodput_at(80e6) == pytest.approx(1 / (1 / (80e6 * 0.97) + 3e-9))
    keeps_up = fit_receive_cost([link_fit(r, 0.95, 0.0) for r in (5e6, 20e6)])  # no receive cost at all
    assert keeps_up.s_per_byte == pytest.approx(0.0, abs=1e-15) and keeps_up.efficiency == pytest.approx(0.95)
    with pytest.raises(ValueError, match="two or more rates"):
        fit_receive_cost([link_fit(5e6, 0.97, 3e-9), link_fit(5e6, 0.97, 3e-9)])


def test_the_fit_lands_in_the_kinds_calibration_and_a_link_refit_keeps_the_measured_contention() -> None:
    base = dataclasses.replace(load_profile("analytic-cpu-2core"), link={}, links={}, measurements={})
    p = apply_calibration(base, link_fit(5e6, 0.97, 3e-9), kind="netns")
    p = dataclasses.replace(p, links={"netns": {**p.links["netns"], "compute_slowdown": 1.3}},
                            link={**p.link, "compute_slowdown": 1.3})  # fmt: skip
    p = apply_calibration(p, link_fit(5e6, 0.97, 3e-9, fixed_s=0.002), kind="netns")  # link re-fitted alone
    assert p.links["netns"]["compute_slowdown"] == 1.3 and p.link["compute_slowdown"] == 1.3
    fit = fit_receive_cost([link_fit(r, 0.97, 3e-9) for r in (5e6, 20e6)])
    q = apply_receive_fit(p, fit, "netns")
    for link in (q.links["netns"], q.link):
        assert link["receive_s_per_byte"] == pytest.approx(3e-9, rel=1e-5)
        assert link["efficiency"] == pytest.approx(0.97, rel=1e-6)
    assert q.measurements["receive_by_kind"]["netns"]["points"][1][0] == 20e6
    assert type(q).from_dict(q.to_dict()).links == q.links


def test_the_world_receives_at_the_limited_rate_and_a_real_link_plays_the_unlimited_one() -> None:
    c, eff = 4e-9, 0.99
    link = LinkConfig(efficiency=eff, receive_s_per_byte=c)
    sc = Scenario(context_tokens=2048, chunk_tokens=256, trace="steps:5s@40mbps,5s@320mbps", link=link)
    world = build_world(sc)
    for r_shaped, r_seen in zip(world.link_trace.rates_bps, world.trace.rates_bps, strict=True):
        assert r_seen * eff == pytest.approx(1 / (1 / (r_shaped * eff) + c))  # what the link model delivers
    assert world.link_trace.rates_bps.tolist() == [40e6 / 8, 320e6 / 8]
    plain = build_world(dataclasses.replace(sc, link=LinkConfig(efficiency=eff)))
    assert plain.trace is plain.link_trace and plain.unlimited_trace is None


def test_stream_only_takes_the_receivers_time_on_top_of_the_wires() -> None:
    mbps, c = 320.0, 4e-9
    sc = Scenario(context_tokens=2048, chunk_tokens=256, trace=f"const:{mbps:g}mbps,600s")
    fast = simulate(build_world(sc), make_policy("stream"))
    slow = simulate(build_world(sc.with_(receive_s_per_byte=c)), make_policy("stream"))
    wire = fast.bytes_streamed / (mbps * 1e6 / 8 * sc.link.efficiency)
    # every byte pays c more; fixed per-transfer time and the query are the same in both
    assert slow.ttft_s - fast.ttft_s == pytest.approx(fast.bytes_streamed * c, rel=0.02)
    assert slow.ttft_s - fast.ttft_s > 0.05 * wire


def test_the_field_is_saved_only_when_set_and_bad_values_are_refused() -> None:
    assert "receive_s_per_byte" not in Scenario().to_dict()["link"]
    sc = Scenario().with_(receive_s_per_byte=2e-9)
    assert sc.to_dict()["link"]["receive_s_per_byte"] == 2e-9
    assert Scenario.from_dict(sc.to_dict()) == sc
    with pytest.raises(ValueError, match="receive_s_per_byte"):
        LinkConfig(receive_s_per_byte=-1.0)


def test_the_further_rates_default_to_x4_and_x8_and_none_skips_them() -> None:
    assert receive_rates(None, 40.0) == [160.0, 320.0]
    assert receive_rates("none", 40.0) == []
    assert receive_rates("40,100", 40.0) == [100.0]
    with pytest.raises(UserError, match="--receive-rates-mbps"):
        receive_rates("fast", 40.0)
