"""Decode plain data: scenario checks, geometry and budget, the summary and the Result's decode field."""

from __future__ import annotations

import pytest

from sparkv.core.decode import DecodeScenario, DecodeSummary, StepStats, decode_geometry, min_budget_bytes
from sparkv.core.errors import UserError
from sparkv.core.model import BUILTIN_SPECS
from sparkv.core.result import Result

SPEC = BUILTIN_SPECS["smollm2-135m"]


def test_geometry_of_smollm2_at_8k() -> None:
    geo = decode_geometry(SPEC, DecodeScenario(context_tokens=8192, group_tokens=4))
    assert geo.group_bytes == 4 * 768 and geo.slot_bytes == 3072
    assert geo.context_groups == 2048 and geo.context_tail_tokens == 0
    assert geo.kv_bytes == 8192 * 768 * 30
    assert geo.budget_bytes == geo.kv_bytes // 8
    assert geo.select_tokens == 400 and geo.select_groups == 100


def test_slot_is_rounded_to_the_direct_block() -> None:
    geo = decode_geometry(SPEC, DecodeScenario(context_tokens=1001, group_tokens=1))
    assert geo.group_bytes == 768 and geo.slot_bytes == 1024
    assert geo.context_tail_tokens == 0
    assert decode_geometry(SPEC, DecodeScenario(context_tokens=1001, group_tokens=4)).context_tail_tokens == 1


def test_select_is_capped_by_the_budget() -> None:
    geo = decode_geometry(SPEC, DecodeScenario(context_tokens=4096, budget_fraction=1 / 64, select_tokens=400))
    assert geo.select_groups == geo.free_groups < 100


def test_budget_below_sinks_and_tail_is_refused_naming_the_minimum() -> None:
    scenario = DecodeScenario(budget_bytes=1000)
    floor = min_budget_bytes(SPEC, scenario)
    assert floor == (2 * 4 + 1) * 768 * 30  # one sink group + one tail group + the current token, every layer
    with pytest.raises(UserError, match=f"minimum is {floor} bytes"):
        decode_geometry(SPEC, scenario)
    decode_geometry(SPEC, scenario.with_(budget_bytes=floor))  # exactly the minimum is allowed


@pytest.mark.parametrize(
    "changes", [{"group_tokens": 0}, {"steps": 0}, {"budget_fraction": 0.0}, {"sink_tokens": -1}, {"context_tokens": 3}]
)
def test_bad_scenarios_raise(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DecodeScenario().with_(**changes)


def test_summary_totals_and_round_trip_through_a_result(tmp_path) -> None:  # type: ignore[no-untyped-def]
    steps = [StepStats(i, i * 1.0, i * 1.0 + 0.1 * (i + 1), 100, 2, 10, 5, 0.05, 0.01) for i in range(10)]
    summary = DecodeSummary(geometry={"g": 1}, steps=steps, memory_hwm_bytes=123)
    t = summary.totals()
    assert t["steps"] == 10 and t["bytes_read"] == 1000 and t["hit_rate"] == 0.5
    assert t["step_max_s"] == pytest.approx(1.0) and t["step_median_s"] == pytest.approx(0.55)
    assert t["step_p90_s"] == pytest.approx(1.0)
    result = Result("sim", "kvswap", 0.0, {}, [], {"x": 1}, decode=summary.to_dict())
    back = Result.load(result.save(tmp_path / "r.json"))
    assert back.decode is not None
    assert DecodeSummary.from_dict(back.decode).totals() == t
