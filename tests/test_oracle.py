"""The oracle (the planner with the future known) and the fluid lower bound."""

from __future__ import annotations

import pytest

from sparkv.analysis.evaluate import fluid_bound
from sparkv.core.config import LinkConfig, Scenario
from sparkv.core.errors import UserError
from sparkv.policies import make_policy
from sparkv.policies.bounds import fluid_bound_s
from sparkv.policies.oracle import oracle_options
from sparkv.policies.planner_model import ConstantLink
from sparkv.sim import build_world, simulate

TRACES = ["lte:seed=2,mean=6mbps", "steps:3s@20mbps,8s@0mbps,40s@4mbps", "ge:seed=3,good=12mbps,bad=1mbps"]


def world(trace: str, context: int = 3072, offset: float = 0.0, scale: float = 1.0):  # type: ignore[no-untyped-def]
    link = LinkConfig(rtt_s=0.04, efficiency=0.9, trace_offset_s=offset, bandwidth_scale=scale)
    return build_world(Scenario(context_tokens=context, trace=trace, device="analytic-cpu-2core", link=link))


@pytest.mark.parametrize(("trace", "offset"), [(TRACES[0], 0.0), (TRACES[1], 1.5), (TRACES[2], 7.0)])
def test_oracle_prediction_is_the_simulated_ttft(trace: str, offset: float) -> None:
    w = world(trace, offset=offset)
    result = simulate(w, make_policy("oracle", **oracle_options(w)))
    assert result.ttft_s == pytest.approx(result.extra["policy_stats"]["predicted_ttft_s"], rel=1e-6)


@pytest.mark.parametrize("trace", TRACES)
def test_oracle_beats_sparkv_and_the_bound_beats_everyone(trace: str) -> None:
    w = world(trace)
    bound = fluid_bound(w)
    oracle = simulate(w, make_policy("oracle", **oracle_options(w))).ttft_s
    sparkv = simulate(w, make_policy("sparkv")).ttft_s
    assert oracle <= sparkv * 1.01
    assert bound <= oracle
    for name in ("local", "stream", "cake", "static"):
        assert bound <= simulate(w, make_policy(name)).ttft_s


def test_oracle_without_a_forecast_plans_on_the_prior() -> None:
    w = world("const:5mbps,600s")
    result = simulate(w, make_policy("oracle", forecast=None))
    assert result.ttft_s == pytest.approx(result.extra["policy_stats"]["predicted_ttft_s"], rel=1e-6)


def test_an_oracle_without_a_forecast_is_refused() -> None:
    with pytest.raises(UserError, match="future bandwidth"):
        make_policy("oracle")


def test_fluid_bound_falls_with_bandwidth_and_is_tight_at_the_extremes() -> None:
    w = world("const:5mbps,600s")
    costs = w.costs
    bounds = [fluid_bound_s(costs, ConstantLink(bw, costs.transfer_fixed_s, costs.install_s_per_byte))
              for bw in (1e3, 1e5, 1e6, 1e7, 1e9)]  # fmt: skip
    assert bounds == sorted(bounds, reverse=True)
    local = simulate(w, make_policy("local")).ttft_s
    assert bounds[0] == pytest.approx(local, rel=0.05)  # no link: (almost) all computed
    tail = float(costs.query_layer_s.sum()) + costs.first_token_s
    assert tail <= bounds[-1] < tail + 0.5  # an infinitely fast link: just the query
