"""The planner's objective: parsing, choosing by TTFT and energy, and what the sparkv policy does with it."""

from __future__ import annotations

import argparse
import math

import pytest

from sparkv.core.config import Scenario
from sparkv.policies import make_policy
from sparkv.policies.controller import Controller, SparKVConfig
from sparkv.policies.objective import Objective, parse_objective
from sparkv.policies.planner_energy import EnergyRates
from sparkv.policies.planner_model import Snapshot
from sparkv.sim import World, build_world, simulate

# a fast link: streaming costs the radio ~1.3 W, computing the device 11 W (cpu-smollm2), so streaming is cheap
STREAM_CHEAP = Scenario(context_tokens=4096, trace="const:40mbps,2000s", device="cpu-smollm2")


def _plan(world: World, objective: str) -> tuple[tuple[int, ...], float, float]:
    ctl = Controller(world.costs, SparKVConfig(objective=objective), None,
                     EnergyRates.of(world.radio, world.profile.power))  # fmt: skip
    snap = Snapshot.fresh(world.request.num_chunks, world.spec.num_layers)
    plan = ctl.plan(snap)
    probe = Controller(world.costs, SparKVConfig(objective="weighted:0.5"), None,
                       EnergyRates.of(world.radio, world.profile.power))  # fmt: skip
    pred = probe.predict(list(plan.k), snap)  # energy predicted the same way for every objective
    return plan.k, pred.ttft_s, pred.energy_j


@pytest.mark.parametrize(("text", "spec"), [("ttft", "ttft"), ("ENERGY", "energy"), ("weighted:0.25", "weighted:0.25"),
                                            ("budget:12.5", "budget:12.5"), (None, "ttft")])  # fmt: skip
def test_parse_objective_reads_back(text: str | None, spec: str) -> None:
    assert parse_objective(text).spec() == spec
    assert parse_objective(parse_objective(text).spec()) == parse_objective(text)


@pytest.mark.parametrize("text", ["weighted:1.5", "weighted:-0.1", "weighted:x", "weighted", "budget:0", "budget:inf",
                                  "budget:-3", "energy:1", "ttft:2", "fastest", ""])  # fmt: skip
def test_parse_objective_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="objective"):
        parse_objective(text)


def test_config_and_cli_refuse_a_bad_objective() -> None:
    with pytest.raises(ValueError, match="objective"):
        SparKVConfig(objective="weighted:2")
    from sparkv.commands.common import objective_arg

    with pytest.raises(argparse.ArgumentTypeError):
        objective_arg("budget:")
    assert objective_arg("Weighted:0.50") == "weighted:0.5"


def test_choose_by_each_objective() -> None:
    points = [(10.0, 100.0), (12.0, 70.0), (20.0, 69.5), (30.0, 60.0)]
    assert Objective().choose(points) == 0
    assert Objective("energy").choose(points) == 3
    # within the 1 % slack of the least energy the faster plan wins
    assert Objective("energy").choose([(20.0, 100.0), (15.0, 100.5), (10.0, 102.0)]) == 1
    assert Objective("weighted", weight=0.0).choose(points) == 0
    assert Objective("weighted", weight=1.0).choose(points) == 3
    assert Objective("weighted", weight=0.5).choose(points) == 1  # 0.5 x 1.2 + 0.5 x 0.7 = 0.95 < 1 (ref)
    assert Objective("budget", budget_s=15.0).choose(points) == 1
    assert Objective("budget", budget_s=5.0).choose(points) == 0  # none within: the fastest
    assert Objective("energy").choose([(math.inf, 1.0), (5.0, 50.0)]) == 1


def test_gains_turn_on_the_chosen_quantity() -> None:
    energy = Objective("energy")
    assert energy.gains((12.0, 80.0), (10.0, 100.0), 0.01)
    assert not energy.gains((10.0, 100.0), (12.0, 80.0), 0.01)
    assert not energy.gains((12.0, 99.5), (10.0, 100.0), 0.01)  # less energy, but not by 1 %
    budget = Objective("budget", budget_s=11.0)
    assert budget.gains((10.5, 90.0), (10.0, 100.0), 0.01)
    assert not budget.gains((12.0, 50.0), (10.0, 100.0), 0.01)


def test_energy_objective_plans_a_lower_energy_split_where_streaming_is_cheap() -> None:
    world = build_world(STREAM_CHEAP)
    k_t, t_t, e_t = _plan(world, "ttft")
    k_e, t_e, e_e = _plan(world, "energy")
    assert e_e < 0.95 * e_t
    assert t_e >= t_t
    assert sum(k_e) < sum(k_t)  # fewer cells computed


def test_weighted_interpolates_between_ttft_and_energy() -> None:
    world = build_world(STREAM_CHEAP)
    got = [_plan(world, f"weighted:{lam}") for lam in (0.0, 0.3, 0.7, 1.0)]
    ttfts, energies = [g[1] for g in got], [g[2] for g in got]
    assert ttfts == sorted(ttfts) and energies == sorted(energies, reverse=True)
    assert got[0][0] == _plan(world, "ttft")[0]
    assert energies[-1] <= _plan(world, "energy")[2] * 1.0101
    assert energies[0] > energies[-1]


def test_energy_objective_lowers_simulated_energy() -> None:
    world = build_world(STREAM_CHEAP)
    fast = simulate(world, make_policy("sparkv"), record=False)
    frugal = simulate(world, make_policy("sparkv", objective="energy"), record=False)
    assert frugal.energy_total_j < 0.95 * fast.energy_total_j
    assert frugal.ttft_s >= fast.ttft_s
    assert "predicted_energy_j" in frugal.extra["policy_stats"]
    assert "predicted_energy_j" not in fast.extra["policy_stats"]


def test_default_objective_changes_nothing() -> None:
    world = build_world(Scenario(context_tokens=4096, trace="lte:seed=2", device="cpu-smollm2"))
    runs = [simulate(world, make_policy("sparkv", **o), record=False) for o in ({}, {"objective": "ttft"},
                                                                               {"objective": "weighted:0"})]
    assert len({(r.ttft_s, r.energy_total_j, r.cells_computed, r.bytes_streamed) for r in runs}) == 1


def test_budget_keeps_the_predicted_ttft_within_it() -> None:
    world = build_world(STREAM_CHEAP)
    _, t_fast, e_fast = _plan(world, "ttft")
    _, t_slow, e_slow = _plan(world, "energy")
    budget = (t_fast + t_slow) / 2
    _, t_b, e_b = _plan(world, f"budget:{budget}")
    assert t_b <= budget + 1e-9
    assert e_slow <= e_b <= e_fast


def test_energy_objective_needs_the_power_models() -> None:
    world = build_world(STREAM_CHEAP)
    with pytest.raises(ValueError, match="power models"):
        Controller(world.costs, SparKVConfig(objective="energy"))
    Controller(world.costs, SparKVConfig())  # the TTFT objective needs none


def test_predicted_energy_of_stream_only_matches_the_simulator() -> None:
    """A stream-only plan on a constant link: the prediction's joules are the simulator's modelled ones."""
    world = build_world(STREAM_CHEAP)
    ctl = Controller(world.costs, SparKVConfig(objective="energy"), None,
                     EnergyRates.of(world.radio, world.profile.power))  # fmt: skip
    snap = Snapshot.fresh(world.request.num_chunks, world.spec.num_layers)
    k = [0] * world.request.num_chunks
    pred = ctl.predict(k, snap)
    stream = simulate(world, make_policy("stream"), record=False)
    assert pred.energy_j == pytest.approx(stream.energy_total_j, rel=0.15)


def test_candidates_hold_every_baseline_plan_in_a_re_plan() -> None:
    from sparkv.policies.planner_energy import candidates
    from sparkv.policies.planner_model import Evaluator

    world = build_world(STREAM_CHEAP)
    ev = Evaluator(world.costs, 3)
    snap = Snapshot.fresh(world.request.num_chunks, world.spec.num_layers)
    C, L = ev.C, ev.L
    best = [L, 3] + [0] * (C - 2)
    family = {tuple(k) for k in candidates(ev, snap, best, None, near=True)}
    cuts = {tuple([L] * q + [0] * (C - q)) for q in range(C + 1)}
    assert cuts <= family  # stream-only, compute-only and cake's split wherever it lands

