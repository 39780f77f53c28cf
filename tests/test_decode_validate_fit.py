"""The decode compute fit recovers the costs the simulator charged, and counts the work no span covers
(bookkeeping between layers, the first layer's plan) in the step's fixed part, where the simulator charges it."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from sparkv.analysis.decode_validate import compare_runs, fit_decode_compute
from sparkv.core.decode import DecodeScenario
from sparkv.cost_models.decode_compute import DecodeCompute
from sparkv.engine.decode import DecodeEngine
from sparkv.policies.decode import make_decode_policy
from sparkv.sim.decode import build_decode_world, run_decode_sim

SCENARIO = DecodeScenario(context_tokens=1024, steps=12, select_tokens=64, budget_fraction=0.25, rank=8)
TRUE = DecodeCompute(layer_fixed_s=2e-3, per_attended_token_s=1e-6, per_scored_token_s=2e-8, per_exact_token_s=0.0,
                     step_fixed_s=5e-3, append_layer_s=1e-4, kind="calibrated")  # fmt: skip


def _engine(policy: str) -> DecodeEngine:
    world = build_decode_world(SCENARIO, compute=TRUE)
    return run_decode_sim(world, make_decode_policy(policy), log=True)[1]


def _with_gaps(engine: DecodeEngine, gap_s: float) -> SimpleNamespace:
    """The same run with `gap_s` of work no span covers before every layer (as the real world's bookkeeping)."""
    layers = engine.geo.num_layers

    def shift(step: int, layer: int) -> float:
        return (step * layers + layer + 1) * gap_s

    spans = [replace(s, start_s=s.start_s + shift(s.step, s.layer), end_s=s.end_s + shift(s.step, s.layer))
             for s in engine.spans]  # fmt: skip
    steps = [replace(st, start_s=st.start_s + st.step * layers * gap_s,
                     end_s=st.end_s + (st.step + 1) * layers * gap_s) for st in engine.steps]  # fmt: skip
    return SimpleNamespace(geo=engine.geo, log=engine.log, spans=spans, steps=steps)


@pytest.mark.parametrize("policy", ["kvswap", "full-reload"])
def test_the_fit_recovers_the_simulated_costs(policy: str) -> None:
    kind = make_decode_policy(policy).score_kind
    fit = fit_decode_compute([(kind, policy, _engine(policy))], SCENARIO.rank)
    assert fit.layer_fixed_s == pytest.approx(TRUE.layer_fixed_s, rel=0.02)
    assert fit.per_attended_token_s == pytest.approx(TRUE.per_attended_token_s, rel=0.02)
    assert fit.step_fixed_s == pytest.approx(TRUE.step_fixed_s, rel=0.02, abs=2e-5)
    assert fit.append_layer_s == pytest.approx(TRUE.append_layer_s, rel=0.05)


def test_work_between_the_spans_goes_into_the_step_fixed_part() -> None:
    engine = _engine("kvswap")
    gap = 0.4e-3
    fit = fit_decode_compute([("predicted", "kvswap", _with_gaps(engine, gap))], SCENARIO.rank)  # type: ignore[list-item]
    layers = engine.geo.num_layers
    assert fit.step_fixed_s == pytest.approx(TRUE.step_fixed_s + layers * gap, rel=0.02)
    assert fit.layer_fixed_s == pytest.approx(TRUE.layer_fixed_s, rel=0.02)  # the layers themselves unchanged


def test_a_replay_with_the_fit_predicts_the_step_time_of_a_run_with_gaps() -> None:
    """The fit to a run with un-spanned work, simulated again, gives that run's step times."""
    engine = _engine("kvswap")
    gappy = _with_gaps(engine, 0.4e-3)
    fit = fit_decode_compute([("predicted", "kvswap", gappy)], SCENARIO.rank)  # type: ignore[list-item]
    world = build_decode_world(SCENARIO, compute=fit)
    sim, _ = run_decode_sim(world, make_decode_policy("kvswap"))
    base, _ = run_decode_sim(build_decode_world(SCENARIO, compute=TRUE), make_decode_policy("kvswap"))
    real = replace(base, decode={**(base.decode or {}), "steps": [
        {**st.__dict__} for st in gappy.steps]})  # fmt: skip
    row = compare_runs(real, sim)
    assert row["median_err"] < 0.01
