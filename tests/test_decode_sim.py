"""The simulated decode world: every policy runs, the numbers relate as they must, and runs replay."""

from __future__ import annotations

import pytest

from sparkv.core.decode import DecodeScenario, DecodeSummary
from sparkv.engine.decode import replay_decode
from sparkv.policies.decode import DECODE_POLICIES, make_decode_policy
from sparkv.policies.decode.base import DecodeContext
from sparkv.sim.decode import DecodeWorld, build_decode_world, run_decode_sim, simulate_decode

SCENARIO = DecodeScenario(context_tokens=2048, steps=9, select_tokens=128)


@pytest.fixture(scope="module")
def world() -> DecodeWorld:
    return build_decode_world(SCENARIO)


def _totals(world: DecodeWorld, name: str) -> dict[str, float]:
    result = simulate_decode(world, make_decode_policy(name))
    assert result.world == "sim" and result.decode is not None
    assert result.config["decode_scenario"] == SCENARIO.to_dict()
    return DecodeSummary.from_dict(result.decode).totals()


def test_every_policy_decodes_every_step(world: DecodeWorld) -> None:
    for name in DECODE_POLICIES:
        t = _totals(world, name)
        assert t["steps"] == SCENARIO.steps and t["tokens_per_s"] > 0


def test_bytes_hits_and_memory_relate_as_they_must(world: DecodeWorld) -> None:
    geo = world.geometry
    full, reload, kvswap, stream = (_totals(world, n) for n in ("full-kv", "full-reload", "kvswap", "streaming"))
    assert full["bytes_read"] == 0 and full["hit_rate"] == 1.0 and full["memory_hwm_bytes"] >= geo.kv_bytes
    assert stream["bytes_read"] == 0
    groups_per_step = geo.num_layers * (geo.context_groups + 2)  # every group, every layer (2 appended by step 9)
    assert reload["bytes_read"] <= SCENARIO.steps * groups_per_step * geo.slot_bytes
    assert reload["bytes_read"] >= SCENARIO.steps * geo.num_layers * geo.context_groups * geo.slot_bytes
    assert 0 < kvswap["bytes_read"] < reload["bytes_read"] / 5
    assert 0 < kvswap["hit_rate"] < 1
    assert kvswap["memory_hwm_bytes"] <= geo.budget_bytes
    assert kvswap["step_median_s"] < reload["step_median_s"]


def test_reads_are_hidden_behind_compute_with_lookahead(world: DecodeWorld) -> None:
    kvswap, oracle = _totals(world, "kvswap"), _totals(world, "oracle-topm")
    assert kvswap["stall_s"] < kvswap["read_s"]
    assert oracle["stall_s"] == pytest.approx(oracle["read_s"])  # no lookahead: every read is waited for


def test_a_run_replays_through_a_fresh_policy(world: DecodeWorld) -> None:
    for name in ("kvswap", "oracle-topm", "streaming"):
        _, engine = run_decode_sim(world, make_decode_policy(name), log=True)
        assert engine.log
        ctx = DecodeContext(world.geometry, world.spec.name)
        assert replay_decode(ctx, make_decode_policy(name), engine.log) == []


def test_same_world_same_result(world: DecodeWorld) -> None:
    a = simulate_decode(world, make_decode_policy("kvswap"))
    b = simulate_decode(world, make_decode_policy("kvswap"))
    assert a.decode == b.decode
