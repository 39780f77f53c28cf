"""The planner's timeline bound: never above the predicted TTFT, and pruning by it finds the same plans."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sparkv.core.config import Scenario
from sparkv.policies import controller, make_policy
from sparkv.policies.planner import Plan, Planner
from sparkv.sim import build_world, simulate


@pytest.mark.parametrize(("trace", "context", "codec"), [
    ("lte:seed=3", 4096, "fp16"), ("ge:seed=1", 4096, "int4-t32-s1-rot"), ("steps:6s@16mbps,6s@1mbps", 3072, "fp16"),
])  # fmt: skip
def test_bound_holds_and_pruning_changes_no_plan(
    trace: str, context: int, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(context)
    calls: list[int] = []

    class Checked(Planner):
        def plan(self, snap: Any, link: Any, speed: Any, target_bytes: float, *args: Any, **kwargs: Any) -> Plan:
            got = super().plan(snap, link, speed, target_bytes, *args, **kwargs)
            plain = Planner(self.ev, self.window, self.max_passes, self.dp, self.exhaustive_max, self.feasible,
                            prune=False).plan(snap, link, speed, target_bytes, *args, **kwargs)  # fmt: skip
            assert (got.k, got.prediction) == (plain.k, plain.prediction)
            floor = self.ev.lower_bound(snap, link, speed, target_bytes)
            assert floor is not None
            lo, hi = snap.k_bounds()
            for _ in range(20):
                k = [int(rng.integers(a, b + 1)) for a, b in zip(lo, hi, strict=True)]
                assert floor(k) <= self.ev.predict(k, snap, link, speed, target_bytes).ttft_s
            calls.append(1)
            return got

    monkeypatch.setattr(controller, "Planner", Checked)
    world = build_world(Scenario(context_tokens=context, trace=trace, codec=codec, compute_noise=0.1))
    simulate(world, make_policy("sparkv"), record=False)
    assert len(calls) >= 3  # re-plans were checked, not only the first plan
