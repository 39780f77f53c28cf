"""The planner: its timeline against the simulator, its search against exhaustive optima."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sparkv.analysis.planner_exact import exact_plan, model_instance, planner_plan, random_instance
from sparkv.core.config import LinkConfig, Scenario
from sparkv.policies import make_policy
from sparkv.policies.oracle import count_monotone, monotone_vectors
from sparkv.policies.planner import Planner
from sparkv.policies.planner_model import ComputeSpeed, ConstantLink, Evaluator, Snapshot
from sparkv.sim import build_world, simulate

DEVICE = "analytic-cpu-2core"


def test_planner_within_two_percent_of_exhaustive_optimum() -> None:
    rng = np.random.default_rng(7)
    ratios = []
    for _ in range(8):
        inst = model_instance(rng, chunks=4, groups=6)  # 2,401 k vectors: beyond the planner's exhaustive limit
        best = exact_plan(inst, monotone=False)  # every k vector: the true optimum
        plan = planner_plan(inst)
        assert plan.prediction.ttft_s >= best.prediction.ttft_s - 1e-9
        ratios.append(plan.prediction.ttft_s / best.prediction.ttft_s)
    assert sum(r <= 1.02 for r in ratios) >= 0.95 * len(ratios), ratios


def test_planner_on_noisy_synthetic_instances_is_close() -> None:
    rng = np.random.default_rng(3)
    ratios = []
    for _ in range(6):
        inst = random_instance(rng, chunks=4, groups=6)
        ratios.append(planner_plan(inst).prediction.ttft_s / exact_plan(inst, monotone=False).prediction.ttft_s)
    assert max(ratios) < 1.08 and float(np.median(ratios)) < 1.01, ratios


@pytest.mark.parametrize(("group", "context", "rate", "rtt"), [
    (1, 2048, "3mbps", 0.03), (3, 4096, "8mbps", 0.01), (5, 3000, "20mbps", 0.08), (2, 4096, "0.5mbps", 0.03),
])  # fmt: skip
def test_predicted_ttft_equals_simulated_on_constant_trace(group: int, context: int, rate: str, rtt: float) -> None:
    scenario = Scenario(context_tokens=context, trace=f"const:{rate},3000s", device=DEVICE,
                        link=LinkConfig(rtt_s=rtt, efficiency=0.9))  # fmt: skip
    world = build_world(scenario)
    result = simulate(world, make_policy("sparkv", group_layers=group, first_transfer_s=2.0))  # one transfer size
    stats = result.extra["policy_stats"]
    assert stats["replans"] == 0 and stats["cancels"] == 0
    assert result.ttft_s == pytest.approx(stats["predicted_ttft_s"], rel=1e-6)
    assert result.cells_computed == sum(stats["plan_k"])


def test_blocks_cover_every_cell_once() -> None:
    rng = np.random.default_rng(0)
    inst = model_instance(rng, chunks=6, groups=5)
    ev = Evaluator(inst.costs, inst.group_layers)
    snap = Snapshot.fresh(ev.C, ev.L)
    for _ in range(20):
        k = [int(rng.choice(ev.bounds)) for _ in range(ev.C)]
        comp, link = ev.blocks(k, snap, inst.target_bytes)
        cells = [cell for block in comp + link for cell in block.cells()]
        assert sorted(cells) == [(c, lyr) for c in range(ev.C) for lyr in range(ev.L)]
        assert all((lyr < k[c]) == (b in comp) for b in comp + link for c, lyr in b.cells())
        for block in link:  # transfers stay within the target unless a single cell is larger
            n = inst.costs.block_bytes(block)
            assert n <= inst.target_bytes or block.num_cells == 1 or block.layer_hi - block.layer_lo == 1


def test_migration_cap_bounds_moved_cells() -> None:
    rng = np.random.default_rng(1)
    inst = model_instance(rng, chunks=6, groups=6)
    ev = Evaluator(inst.costs, inst.group_layers)
    snap = Snapshot.fresh(ev.C, ev.L)
    current = [ev.L] * ev.C  # everything computed
    plan = Planner(ev).plan(snap, inst.link, ComputeSpeed(), inst.target_bytes, current, cap_cells=2 * ev.group)
    assert sum(abs(a - b) for a, b in zip(plan.k, current, strict=True)) <= 2 * ev.group


def test_faster_link_streams_more() -> None:
    rng = np.random.default_rng(2)
    inst = model_instance(rng, chunks=6, groups=6)
    ev = Evaluator(inst.costs, inst.group_layers)
    snap = Snapshot.fresh(ev.C, ev.L)
    planner = Planner(ev)
    slow = planner.plan(snap, ConstantLink(inst.link.bandwidth_bps / 4, inst.link.fixed_s, 0.0), ComputeSpeed(), 1e9)
    fast = planner.plan(snap, ConstantLink(inst.link.bandwidth_bps * 4, inst.link.fixed_s, 0.0), ComputeSpeed(), 1e9)
    assert sum(fast.k) < sum(slow.k)


def test_monotone_vectors_are_all_non_increasing_vectors() -> None:
    bounds = [0, 2, 4, 5]
    vectors = monotone_vectors(4, bounds)
    assert len(vectors) == count_monotone(4, 3) == len({tuple(v) for v in vectors})
    assert all(all(a >= b for a, b in itertools.pairwise(v)) and set(v) <= set(bounds) for v in vectors)
