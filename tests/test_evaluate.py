"""`sparkv evaluate`: trace expansion, one scenario's rows, and the command's files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from sparkv.analysis.evaluate import POLICY_ORDER, add_ratios, calibrate_scale, run_job, summarise
from sparkv.analysis.evaluate_plots import plot_evaluation
from sparkv.cli import main
from sparkv.core.config import Scenario

BASE = Scenario(device="analytic-cpu-2core").to_dict()


@pytest.mark.parametrize("target", [0.5, 2.0])
def test_calibration_reaches_the_ratio_where_stream_only_cannot_finish_at_scale_1(target: float) -> None:
    """~47 MB over 10 kbit/s takes ~10 h at scale 1: the bytes give the first guess, simulation refines it."""
    from sparkv.engine.world import build_world
    from sparkv.policies import make_policy
    from sparkv.sim import simulate
    from sparkv.traces import get_trace

    scenario = Scenario(device="analytic-cpu-2core", context_tokens=2048, trace="lte:seed=1,mean=0.01mbps")
    trace = get_trace(scenario.trace)
    scale, how = calibrate_scale(scenario, trace, target)
    assert how == "trace-integral+simulated" and scale > 100
    world = build_world(scenario.with_(bandwidth_scale=scale), trace=trace)
    ratio = simulate(world, make_policy("stream"), record=False).ttft_s / simulate(
        world, make_policy("local"), record=False).ttft_s
    assert ratio == pytest.approx(target, rel=0.05)



def test_integral_scale_alone_is_close_on_a_varying_trace() -> None:
    """The first guess, before any simulation: stream-only at the solved scale takes about the asked time."""
    from sparkv.analysis.evaluate import integral_scale
    from sparkv.engine.world import build_world
    from sparkv.policies import make_policy
    from sparkv.sim import simulate

    scenario = Scenario(device="analytic-cpu-2core", context_tokens=4096, trace="steps:20s@4mbps,20s@0.5mbps")
    world = build_world(scenario)
    for goal_s in (8.0, 30.0):
        scale = integral_scale(world, goal_s)
        scaled = build_world(scenario.with_(bandwidth_scale=scale))
        assert simulate(scaled, make_policy("stream"), record=False).ttft_s == pytest.approx(goal_s, rel=0.1)


def test_one_scenario_rows_hit_the_ratio_and_carry_their_configuration() -> None:
    job = {"trace": "lte:seed=1,mean=8mbps", "context_tokens": 2048, "kind": "ratio", "value": 1.0,
           "policies": list(POLICY_ORDER), "base": BASE, "sparkv": {}}  # fmt: skip
    rows = run_job(job)
    add_ratios(rows)
    assert [r["policy"] for r in rows] == list(POLICY_ORDER)
    assert all(r["status"] == "ok" for r in rows)
    assert 0.5 < rows[0]["stream_local_ratio"] < 2.0  # the scale brought stream-only near local-only
    by = {r["policy"]: r for r in rows}
    assert by["oracle"]["ttft_s"] >= by["oracle"]["fluid_bound_s"]
    assert by["oracle"]["ttft_over_oracle"] == 1.0
    assert json.loads(by["sparkv"]["scenario"])["context_tokens"] == 2048
    assert json.loads(by["sparkv"]["policy_config"])["name"] == "sparkv"
    summary = summarise(rows)
    assert {s["policy"] for s in summary} == set(POLICY_ORDER)


def test_command_writes_table_json_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ev"
    code = main(["evaluate", "--trace", "const:6mbps,600s", "--context-tokens", "2048", "--ratios", "1",
                 "--policy", "local", "--policy", "stream", "--policy", "cake", "--policy", "sparkv",
                 "--policy", "oracle", "--jobs", "1", "--out", str(out), "--device", "analytic-cpu-2core",
                 "--bench-repeats", "2"])  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert "TTFT med s" in text and "target ttft_over_oracle_med" in text and "first plan" in text
    with (out / "rows.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["policy"] for r in rows} == {"local", "stream", "cake", "sparkv", "oracle"}
    assert "scenario" in rows[0] and "bandwidth_scale" in rows[0]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["config"]["context_tokens"] == [2048] and report["sparkv_config"]["estimator"] == "ewma"
    assert {"ttft_over_oracle_med", "speedup_cake_med"} <= set(report["targets"])
    assert sorted(p.name for p in out.glob("*.png")) == ["cdf_ttft_energy.png", "gap_oracle_bound.png",
                                                          "pareto_ttft_energy.png", "speedup_sparkv.png"]  # fmt: skip
    fronts = report["energy"]["pareto"]
    assert fronts and any(p["on_front"] for p in fronts) and {"regime", "policy", "config"} <= set(fronts[0])
    assert report["energy"]["dominated"][0]["policy"] == "sparkv"


def test_plots_survive_missing_policies(tmp_path: Path) -> None:
    rows = [{"policy": "sparkv", "status": "ok", "ttft_s": 2.0, "energy_j": 5.0, "trace_path": "t", "context_tokens": 1,
             "scale_kind": "ratio", "scale_target": 1.0, "fluid_bound_s": 1.0, "local_ttft_s": 4.0,
             "stream_ttft_s": 3.0, "ttft_over_oracle": 1.05, "ttft_over_bound": 2.0, "in_band": True}]  # fmt: skip
    assert len(plot_evaluation(rows, tmp_path)) == 3
