"""The Python API: scenarios in, DataFrames out; the oracle gets its future; a trace that loops says so."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import sparkv
from sparkv import api
from sparkv.core.errors import UserError

SMALL = {"context_tokens": 1024, "chunk_tokens": 256, "device": "analytic-cpu-2core"}


def test_scenario_takes_flat_fields_and_refuses_unknown_ones() -> None:
    sc = api.scenario(trace=Path("x.csv"), rtt_ms=50, radio="5g", **SMALL)
    assert sc.trace == "x.csv" and sc.link.rtt_s == pytest.approx(0.05) and sc.link.radio == "5g"
    assert sc.context_tokens == 1024
    with pytest.raises(UserError, match="context_tokns"):
        api.scenario(context_tokns=10)


def test_simulate_gives_one_row_per_policy_with_its_configuration() -> None:
    sc = api.scenario(trace="const:20mbps,600s", **SMALL)
    run = api.simulate(sc, ["local", "stream", "oracle"])
    table = run.table
    assert list(table["policy"]) == ["local", "stream", "oracle"]
    assert (table["ttft_s"] > 0).all() and (table["status"] == "ok").all()
    assert (table["context_tokens"] == 1024).all() and (table["device"] == "analytic-cpu-2core").all()
    assert not table["trace_looped"].any() and run.notes == []
    # the oracle was handed the world's future: it is no slower than either single path
    ttft = dict(zip(table["policy"], table["ttft_s"], strict=True))
    assert ttft["oracle"] <= min(ttft["local"], ttft["stream"]) * 1.001


def test_the_oracle_without_a_world_is_refused_and_with_one_knows_the_trace() -> None:
    with pytest.raises(UserError, match="future bandwidth"):
        api.make_policy("oracle")
    world = api.build_world(api.scenario(trace="steps:5s@20mbps,5s@1mbps", **SMALL))
    oracle = api.make_policy("oracle", world)
    assert oracle.foresight is not None  # type: ignore[attr-defined]


def test_a_request_longer_than_its_trace_is_noted_and_warned() -> None:
    sc = api.scenario(trace="const:20mbps,2s", **SMALL)
    with pytest.warns(api.TraceLoopWarning, match="looped"):
        run = api.simulate(sc, ["local"])
    assert run.table["trace_looped"].all() and "2.0 s long" in run.notes[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        api.simulate(sc, ["local"], warn=False)  # no warning when asked not to


def test_sweep_runs_the_grid_and_summarises_per_policy() -> None:
    base = api.scenario(**SMALL)
    grid = api.sweep(base, trace=["const:20mbps,600s", "const:5mbps,600s"], bandwidth_scale=[0.5, 1],
                     policy=["local", "stream"])  # fmt: skip
    table = grid.table
    assert len(table) == 2 * 2 * 2 and (table["status"] == "ok").all()
    assert set(table["bandwidth_scale"]) == {0.5, 1.0} and set(table["trace"]) == {"const:20mbps,600s",
                                                                                  "const:5mbps,600s"}
    summary = grid.summary()
    assert set(summary["policy"]) == {"local", "stream"} and (summary["runs"] == 4).all()
    # streaming gets slower as the bandwidth falls; computing does not care
    stream = table[table["policy"] == "stream"].groupby("bandwidth_scale")["ttft_s"].median()
    assert stream[0.5] > stream[1.0]


def test_sweep_refuses_a_ray_address_without_ray() -> None:
    with pytest.raises(UserError, match="backend='ray'"):
        api.sweep(api.scenario(**SMALL), ray_address="auto")


def test_the_package_exports_the_api_lazily() -> None:
    assert sparkv.simulate is api.simulate and sparkv.Scenario is api.Scenario
    with pytest.raises(AttributeError):
        sparkv.no_such_name  # noqa: B018
