"""Analytic (roofline) profiles: sane numbers, the files agree with their table, usable for any model."""

from __future__ import annotations

import json

import pytest

from sparkv.core.config import Scenario
from sparkv.core.model import BUILTIN_SPECS
from sparkv.cost_models.compute import RooflineCompute
from sparkv.cost_models.profiles import load_profile
from sparkv.cost_models.roofline import ANALYTIC_DEVICES, analytic_profile, builtin_folder
from sparkv.policies import make_policy
from sparkv.sim import build_world, simulate

LLAMA = BUILTIN_SPECS["llama-3.1-8b"]


@pytest.mark.parametrize("device", ANALYTIC_DEVICES, ids=lambda d: d.name)
def test_builtin_file_matches_table_and_states_sources(device: object) -> None:
    profile = analytic_profile(device.name)  # type: ignore[attr-defined]
    on_disk = json.loads((builtin_folder() / f"{profile.name}.json").read_text())
    assert on_disk == json.loads(json.dumps(profile.to_dict()))  # regenerate: write_builtin_profiles()
    assert load_profile(profile.name).kind == "analytic"
    for key in ("peak_flops", "mem_bw_bps", "power", "flops_efficiency"):
        assert profile.sources.get(key), f"{profile.name} lacks a source for {key}"
    assert profile.power.active_w > profile.power.idle_w > 0


def test_compute_bound_for_long_prefill_memory_bound_for_one_token() -> None:
    for device in ANALYTIC_DEVICES:
        compute = analytic_profile(device.name).compute
        assert isinstance(compute, RooflineCompute)
        assert compute.bound(LLAMA, 2048, 0) == "compute", device.name
        assert compute.bound(LLAMA, 1, 8192) == "memory", device.name


def test_monotone_in_new_and_past_tokens() -> None:
    compute = load_profile("jetson-agx-orin-30w").compute
    by_n = [compute.layer_s(LLAMA, n, 1024) for n in (1, 16, 64, 256, 1024, 4096)]
    by_past = [compute.layer_s(LLAMA, 512, p) for p in (0, 1024, 4096, 16384)]
    assert by_n == sorted(by_n) and by_past == sorted(by_past)
    assert by_n[-1] > 10 * by_n[2]  # compute-bound: time grows with tokens


def test_power_modes_ordered() -> None:
    times = [load_profile(f"jetson-agx-orin-{m}").compute.layer_s(LLAMA, 512, 0) for m in ("15w", "30w", "50w", "maxn")]
    assert times == sorted(times, reverse=True)
    assert load_profile("h100-sxm").compute.layer_s(LLAMA, 512, 0) < times[-1]


def test_what_if_simulation_with_any_model() -> None:
    world = build_world(Scenario(model="llama-3.1-8b", device="jetson-agx-orin-30w", context_tokens=4096))
    result = simulate(world, make_policy("local"))
    expected = sum(world.costs.compute_cell_s.ravel())
    assert result.ttft_s >= expected
