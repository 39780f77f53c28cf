"""Validation's lane breakdown: measured / predicted span seconds, split by whether the link was busy."""

from __future__ import annotations

import dataclasses

import pytest

from sparkv.analysis.validate import Pair, lane_ratios, lane_summary
from sparkv.core.config import Scenario
from sparkv.core.contention import ReceiveContention
from sparkv.core.result import Span
from sparkv.policies import make_policy
from sparkv.sim import build_world, simulate


def test_simulated_spans_match_their_own_cost_table() -> None:
    world = build_world(Scenario(context_tokens=4096, chunk_tokens=512, trace="const:20mbps"))
    # the profile's receive contention at the trace's rate
    slowdown = ReceiveContention.from_link(world.profile.link).factor(20e6 / 8 * world.scenario.link.efficiency)
    ratios = lane_ratios(simulate(world, make_policy("cake")))
    assert len(ratios["compute, link busy"]) > 0 and len(ratios["query"]) == world.spec.num_layers
    assert all(r == pytest.approx(slowdown, rel=1e-9) for r in ratios["compute, link busy"])
    for group in ("query", "compute, link idle"):  # stretched only when started with a transfer in flight
        assert all(r == pytest.approx(1.0, rel=1e-9) or r == pytest.approx(slowdown, rel=1e-9) for r in ratios[group])


def test_slow_compute_under_a_busy_link_shows_in_its_group() -> None:
    world = build_world(Scenario(context_tokens=4096, chunk_tokens=512, trace="const:20mbps"))
    world = dataclasses.replace(world, profile=dataclasses.replace(world.profile, link={}))  # no contention
    result = simulate(world, make_policy("cake"))
    stretched = [
        Span(s.lane, s.kind, s.start_s, s.start_s + 1.25 * (s.end_s - s.start_s), s.block, s.bytes, s.layer)
        if s.kind == "compute" else s
        for s in result.spans
    ]
    slow = dataclasses.replace(result, spans=stretched)
    summary = lane_summary([Pair("t", slow, result, 0)])
    assert summary["compute, link busy"]["median"] == pytest.approx(1.25)
    assert summary["query"]["median"] == pytest.approx(1.0)
    assert summary.get("compute, link idle", {"median": 1.25})["median"] == pytest.approx(1.25)
