"""The decode engine: plan checks, residency and memory accounting, appends, coalescing of reads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sparkv.core.decode import DecodeScenario, LayerPlan, ScoresReady, decode_geometry
from sparkv.core.model import ModelSpec
from sparkv.engine.decode import DecodeEngine, PlanError, coalesce
from sparkv.policies.decode import make_decode_policy
from sparkv.policies.decode.base import DecodeContext, DecodePolicyBase

SPEC = ModelSpec("tiny", 2, 64, 4, 2, 16, 128, 256)


def _ctx(budget_fraction: float = 1.0) -> DecodeContext:
    scenario = DecodeScenario(context_tokens=64, group_tokens=4, select_tokens=12, budget_fraction=budget_fraction)
    return DecodeContext(decode_geometry(SPEC, scenario), "tiny")


class Scripted(DecodePolicyBase):
    """Returns whatever plan the test puts in `next_plan`."""

    name = "scripted"

    def __init__(self, bounded: bool = True) -> None:
        super().__init__()
        self.bounded = bounded
        self.next_plan: dict[str, Any] = {}

    def plan(self, scores: ScoresReady) -> LayerPlan:
        return LayerPlan(scores.step, scores.layer, **self.next_plan)


def _ask(engine: DecodeEngine, step: int = 0, layer: int = 0) -> Any:
    return engine.plan(engine.scores_for(step, layer, 0.0, np.zeros(engine.full_groups, np.float32)))


def test_coalesce_matches_a_plain_run_split() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        groups = tuple(sorted(rng.choice(40, size=int(rng.integers(0, 40)), replace=False).tolist()))
        runs = coalesce(groups, 3)
        assert [g for first, n in runs for g in range(first, first + n)] == list(groups)
        assert all(1 <= n <= 3 for _, n in runs)
    assert coalesce(tuple(range(10)), 4) == ((0, 4), (4, 4), (8, 2))
    assert coalesce((1, 2, 5), 8) == ((1, 2), (5, 1))


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        ({"read": (1,), "attend": (2,), "keep": (2,)}, "must come from"),  # attends a group neither resident nor read
        ({"read": (1, 2), "attend": (1,), "keep": (1,)}, "must come from"),  # reads a group for nothing
        ({"read": (99,), "attend": (99,), "keep": ()}, "outside"),
    ],
)
def test_invalid_plans_are_refused(plan: dict[str, Any], message: str) -> None:
    policy = Scripted()
    engine = DecodeEngine(_ctx(), policy, 1 << 20)
    engine.step_begin(0, 0.0)
    policy.next_plan = plan
    with pytest.raises(PlanError, match=message):
        _ask(engine)


def test_reading_a_resident_group_is_refused() -> None:
    policy = Scripted()
    engine = DecodeEngine(_ctx(), policy, 1 << 20)
    engine.step_begin(0, 0.0)
    policy.next_plan = {"read": (3,), "attend": (3,), "keep": (3,)}
    _ask(engine)
    engine.layer_done(0, 0, 0.0, 1.0)
    with pytest.raises(PlanError, match="resident"):
        _ask(engine)


def test_memory_follows_plans_and_a_bounded_policy_is_held_to_its_budget() -> None:
    policy = Scripted()
    ctx = _ctx(budget_fraction=0.25)  # 16 tokens per layer
    engine = DecodeEngine(ctx, policy, 1 << 20)
    geo = ctx.geometry
    tail = geo.token_bytes * geo.num_layers  # the current token
    assert engine.memory_bytes == tail
    engine.step_begin(0, 0.0)
    policy.next_plan = {"read": (0, 4, 5), "attend": (0, 4, 5), "keep": (0, 4)}
    _, job = _ask(engine)
    assert job.requests == ((0, 1), (4, 2)) and job.bytes == 3 * geo.slot_bytes
    assert engine.memory_bytes == 3 * geo.group_bytes + tail
    engine.layer_done(0, 0, 0.0, 1.0)
    assert engine.memory_bytes == 2 * geo.group_bytes + tail
    policy.next_plan = {"read": tuple(range(6, 16)), "attend": tuple(range(6, 16)), "keep": ()}
    with pytest.raises(PlanError, match="over its budget"):
        _ask(engine, layer=1)


def test_a_full_tail_is_appended_and_resident_everywhere() -> None:
    policy = make_decode_policy("kvswap")
    engine = DecodeEngine(_ctx(), policy, 1 << 20)
    for step in range(4):
        engine.step_begin(step, float(step))
        assert engine.appends_at_step_end == (step == 3)
        event = engine.step_end(step, step + 0.5)
        assert (event is not None) == (step == 3)
    assert engine.full_groups == 17 and all(16 in res for res in engine.resident)
    assert policy.full_groups == 17 and all(16 in res for res in policy.resident)  # type: ignore[attr-defined]
    assert len(engine.steps) == 4 and engine.steps[3].step_s == pytest.approx(0.5)
