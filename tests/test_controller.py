"""SparKV's run-time controller: estimators, re-planning when the link changes, cancelling a stuck transfer,
the link-failure fallback, and its one config dataclass."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from sparkv.core.config import Scenario
from sparkv.policies import make_policy
from sparkv.policies.controller import SparKVConfig
from sparkv.policies.estimators import BandwidthEstimator, SpeedEstimator
from sparkv.policies.sparkv import SparKVPolicy
from sparkv.sim import World, build_world, simulate

FROZEN = {"drift_threshold": 1e9, "drift_min_s": 1e9, "stall_s": 1e9, "starvation_check": False}  # never re-plans


def world_with_prior(trace: str, prior_mbps: float, context: int = 4096) -> World:
    """A world whose cost table expects `prior_mbps` (goodput), whatever the trace then does."""
    world = build_world(Scenario(context_tokens=context, trace=trace, device="analytic-cpu-2core"))
    costs = dataclasses.replace(world.costs, bandwidth_prior_bps=prior_mbps * 1e6 / 8 * world.costs.link_efficiency)
    return dataclasses.replace(world, costs=costs)


@pytest.mark.parametrize("kind", ["ewma", "harmonic", "mean", "quantile"])
def test_estimators_follow_the_samples(kind: str) -> None:
    est = BandwidthEstimator(kind, prior_bps=1e6, window_s=2.0, alpha=0.5, quantile=0.5)
    assert est.estimate() == 1e6
    for i in range(40):
        est.add(0.25 * (i + 1), 25_000, 0.25)  # 100 kB/s
    assert est.estimate() == pytest.approx(1e5, rel=0.05)


def test_harmonic_mean_is_pulled_down_by_a_slow_window() -> None:
    harmonic = BandwidthEstimator("harmonic", 1e6, 10.0, 0.5, 0.5)
    mean = BandwidthEstimator("mean", 1e6, 10.0, 0.5, 0.5)
    for est in (harmonic, mean):
        est.add(1.0, 1_000_000, 1.0)
        est.add(2.0, 10_000, 1.0)
    assert harmonic.estimate() < 0.05 * mean.estimate()


def test_silence_is_measured_from_the_first_empty_window() -> None:
    est = BandwidthEstimator("ewma", 1e6, 2.0, 0.3, 0.5)
    est.add(1.0, 100_000, 1.0)
    assert est.silent_s(1.5, 0.0) == 0.0
    est.add(1.25, 0, 0.25)
    est.add(1.5, 0, 0.25)
    assert est.silent_s(2.0, 0.0) == pytest.approx(1.0)
    assert est.estimate() > 0


def test_speed_estimator_tracks_ratio() -> None:
    speed = SpeedEstimator(alpha=0.5)
    for _ in range(20):
        speed.add(2.0, 1.0)
    assert speed.scale == pytest.approx(2.0, rel=1e-3)


def test_bad_estimator_settings_raise() -> None:
    with pytest.raises(ValueError, match="estimator"):
        BandwidthEstimator("median", 1e6, 1.0, 0.5, 0.5)
    with pytest.raises(ValueError, match="window_s"):
        SparKVConfig(window_s=0)
    with pytest.raises(ValueError, match="bandwidth_margin"):
        SparKVConfig(bandwidth_margin=1.5)


def test_controller_moves_work_to_compute_when_bandwidth_drops() -> None:
    world = world_with_prior("steps:5s@16mbps,300s@2mbps", 16.0)  # planned for 16 Mbit/s, 2 after 5 s
    adaptive = simulate(world, make_policy("sparkv"))
    frozen = simulate(world, make_policy("sparkv", **FROZEN))
    stats = adaptive.extra["policy_stats"]
    assert stats["replans"] >= 1
    assert adaptive.cells_computed > sum(stats["plan_k"])  # cells moved from the link to the device
    assert frozen.cells_computed == sum(frozen.extra["policy_stats"]["plan_k"])
    assert adaptive.ttft_s < 0.5 * frozen.ttft_s


def test_controller_moves_work_to_the_link_when_bandwidth_rises() -> None:
    world = world_with_prior("steps:5s@2mbps,300s@16mbps", 2.0)
    adaptive = simulate(world, make_policy("sparkv"))
    frozen = simulate(world, make_policy("sparkv", **FROZEN))
    assert adaptive.cells_computed < sum(adaptive.extra["policy_stats"]["plan_k"])
    assert adaptive.ttft_s < 0.9 * frozen.ttft_s


def test_controller_cancels_a_transfer_stuck_on_a_dead_link() -> None:
    world = world_with_prior("steps:6s@16mbps,40s@0mbps,100s@16mbps", 16.0)  # dead from 6 s to 46 s
    result = simulate(world, make_policy("sparkv"))
    assert result.extra["policy_stats"]["cancels"] >= 1
    assert any(s.kind == "cancelled" and s.start_s < 6.0 for s in result.spans)
    local = simulate(world, make_policy("local"))
    assert result.ttft_s < local.ttft_s < 46.0  # finished on the device long before the link came back
    frozen = simulate(world, make_policy("sparkv", **FROZEN))
    assert frozen.ttft_s > 46.0




def test_config_round_trip(tmp_path: Path) -> None:
    cfg = SparKVConfig(estimator="harmonic", window_s=3.0, group_layers=2, migration_cap_cells=12, tick_s=0.5)
    assert SparKVConfig.from_dict(cfg.to_dict()) == cfg
    assert SparKVConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    path = tmp_path / "sparkv.json"
    path.write_text(json.dumps(cfg.to_dict()))
    assert SparKVConfig.load(path) == cfg
    for made in (make_policy("sparkv", config=cfg), make_policy("sparkv", config=str(path)),
                 make_policy("sparkv", config=cfg.to_dict())):  # fmt: skip
        assert isinstance(made, SparKVPolicy) and made.cfg == cfg and made.tick_s == 0.5
    saved = tmp_path / "result.json"  # a policy's own config() (name, fields, stats) loads back too
    saved.write_text(json.dumps({"policy": make_policy("sparkv", config=cfg).config()}))
    assert SparKVConfig.load(saved) == cfg
    assert make_policy("sparkv", group_layers=5).cfg.group_layers == 5
    with pytest.raises(ValueError, match="unknown SparKVConfig keys"):
        SparKVConfig.from_dict({"no_such_knob": 1})


def test_controller_notices_a_slower_device_and_streams_more() -> None:
    world = build_world(Scenario(context_tokens=4096, trace="const:6mbps,3000s", device="analytic-cpu-2core",
                                 availability="const:0.5B/s,3000s"))  # the device runs at half speed  # fmt: skip
    adaptive = simulate(world, make_policy("sparkv"))
    frozen = simulate(world, make_policy("sparkv", **FROZEN))
    assert adaptive.extra["policy_stats"]["replans"] >= 1
    assert adaptive.cells_computed < frozen.cells_computed
    assert adaptive.ttft_s < 0.9 * frozen.ttft_s
