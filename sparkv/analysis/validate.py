"""Simulator vs real executor: the same (trace, policy, context, device profile) run in both worlds.

For every real run the simulator predicts the same request from the same `World` (same cost table, same
trace, same link settings); the table pairs predicted and measured TTFT and energy, and each real run's
policy log is replayed through a fresh policy, which must make exactly the same decisions.
"""

from __future__ import annotations

import json
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkv.core.config import Scenario
from sparkv.core.costs import CostTable
from sparkv.core.replay import replay
from sparkv.core.result import Result
from sparkv.policies import make_policy
from sparkv.policies.base import Policy, RequestContext
from sparkv.policies.planner_energy import EnergyRates
from sparkv.sim import simulate

if TYPE_CHECKING:
    from sparkv.engine.world import World
    from sparkv.executor.session import RealSession


@dataclass(frozen=True)
class Pair:
    """One real run and the simulator's prediction of it. With speed probes, `sim` is predicted with the
    device at the speed probed around the run and `sim_profile` at the profile's own speed."""

    trace: str
    real: Result
    sim: Result
    replay_mismatches: int
    sim_profile: Result | None = None
    device_speed: float | None = None  # probed / profiled compute seconds around the run (None: no probes)
    sim_charged: Result | None = None  # `sim` with the real run's decision time and hand-over charged


def replay_check(real: Result, policy: Policy, template: RequestContext) -> int:
    """Mismatching decisions when the real run's log is fed to a fresh policy (0: identical).

    The context is rebuilt from the costs saved in the result, on `template`'s request and model.
    """
    costs = CostTable.from_dict(real.extra["context"]["costs"])
    hint = real.extra["context"].get("speed_hint")
    rates = real.extra["context"].get("energy")
    energy = EnergyRates.from_dict(rates) if rates else template.energy
    policy.begin(RequestContext(template.request, template.model, costs, 0.0, hint, energy))
    return len(replay(policy, real.log))


def charged_prediction(world: World, policy: Policy, real: Result, uncharged: Result,
                       speed_hint: float | None) -> Result | None:  # fmt: skip
    """`uncharged`'s request simulated again with the real run's decision time charged: each dispatch's policy
    calls, as timed by the simulator, scaled so that their total is the real run's measured total, plus the
    real run's median hand-overs between its threads (the compute lane's report to the control thread, and
    the work back) on every decision that starts work. None where either run timed no decision."""
    d, ds = real.extra.get("decision", {}), uncharged.extra.get("decision", {})
    real_ms, sim_ms = d.get("total_ms"), ds.get("total_ms")
    if not real_ms or not sim_ms:
        return None
    latency_s = (d.get("handover_median_ms", 0.0) + d.get("report_median_ms", 0.0)) / 1e3
    return simulate(world, policy, speed_hint=speed_hint, decision_scale=real_ms / sim_ms,
                    command_latency_s=latency_s)


def pair_row(pair: Pair) -> dict[str, Any]:
    real, sim = pair.real, pair.sim
    sc = real.config["scenario"]
    err = _err(sim, real)
    decision = real.extra.get("decision", {})
    charged = pair.sim_charged
    return {
        "trace": pair.trace,
        "policy": real.policy,
        "bandwidth_scale": sc["link"]["bandwidth_scale"],
        "context_tokens": sc["context_tokens"],
        "chunk_tokens": sc["chunk_tokens"],
        "codec": sc["codec"],
        "device": sc["device"],
        "link": real.extra.get("link", ""),
        "sim_ttft_s": sim.ttft_s,
        "real_ttft_s": real.ttft_s,
        "ttft_err_pct": 100 * err,
        "device_speed": pair.device_speed if pair.device_speed is not None else "",
        "sim_profile_ttft_s": pair.sim_profile.ttft_s if pair.sim_profile is not None else "",
        "ttft_err_profile_pct": 100 * _err(pair.sim_profile, real) if pair.sim_profile is not None else "",
        "sim_charged_ttft_s": charged.ttft_s if charged is not None else "",
        "ttft_err_charged_pct": 100 * _err(charged, real) if charged is not None else "",
        "real_decision_ms": decision.get("total_ms", ""),
        "sim_decision_ms": sim.extra.get("decision", {}).get("total_ms", ""),
        "handover_median_ms": decision.get("handover_median_ms", ""),
        "report_median_ms": decision.get("report_median_ms", ""),
        "probe_attempts": real.extra.get("device_speed", {}).get("attempts", ""),
        "speed_steady": real.extra.get("device_speed", {}).get("steady", ""),
        "foreign_cpu_cores": ((real.extra.get("device_speed", {}).get("cpu_share") or {}).get("foreign_cores", "")),
        "sim_energy_j": sim.energy_total_j,
        "real_energy_j": real.energy_total_j,  # modelled over the measured timeline
        "sim_cells_computed": sim.cells_computed,
        "real_cells_computed": real.cells_computed,
        "real_mb_streamed": real.bytes_streamed / 1e6,
        "faults": len(real.faults),
        "replay_mismatches": pair.replay_mismatches,
        "answer": str(real.extra.get("text", "")).strip()[:60],
    }


def _err(sim: Result, real: Result) -> float:
    return (sim.ttft_s - real.ttft_s) / real.ttft_s


def error_stats(rows: Sequence[dict[str, Any]], column: str = "ttft_err_pct") -> dict[str, float]:
    """Median and p90 of |TTFT error| in % (from `column`), and the bias (mean signed error, %)."""
    signed = [float(r[column]) for r in rows if r.get(column, "") != ""]
    errs = sorted(abs(e) for e in signed)
    if not errs:
        return {"runs": 0}
    return {
        "runs": len(errs),
        "median_abs_err_pct": statistics.median(errs),
        "p90_abs_err_pct": errs[min(len(errs) - 1, round(0.9 * (len(errs) - 1)))],
        "bias_pct": statistics.fmean(signed),
        "replay_mismatches": sum(r["replay_mismatches"] for r in rows),
    }


def grouped_stats(rows: Sequence[dict[str, Any]], column: str = "ttft_err_pct") -> dict[str, dict[str, float]]:
    """`error_stats` over all rows and per policy; {} when no row has `column`."""
    if not any(r.get(column, "") != "" for r in rows):
        return {}
    stats = {"all": error_stats(rows, column)}
    for policy in sorted({r["policy"] for r in rows}):
        stats[policy] = error_stats([r for r in rows if r["policy"] == policy], column)
    return stats


def run_validation(
    traces: Sequence[str],
    policies: Sequence[str],
    base: Scenario,
    document: tuple[str, str, str],
    link_kind: str,
    auto_scale: Callable[[Scenario], float] | None,
    progress: Callable[[str], None] = print,
    make: Callable[[str], Policy] = make_policy,
    repeats: int = 1,
    probe: bool = True,
    speed_tolerance: float = 0.08,
    attempts: int = 3,
    max_foreign_cores: float = 0.25,
    background_cores: int = 0,
) -> list[Pair]:
    """Run every (trace, policy) for real, predict each in the simulator, and check replay.

    With `repeats` > 1 each real run is repeated and the one with the median TTFT is kept (its
    `extra["repeat_ttft_s"]` lists them all): the machine's speed drifts, and one slow moment should not
    stand for the executor. Every repeat's decisions are replay-checked. With `probe`, the device's
    compute speed is measured just before and just after each real run (`RealSession.probe_speed`, kept
    in `extra["device_speed"]`) and the run is predicted both at that speed and at the profile's. A run
    whose two probes differ by more than `speed_tolerance` saw the machine change speed; it is measured
    again, up to `attempts` times in all, and the last attempt is kept either way (its
    `extra["device_speed"]` records the attempts and whether the speed held). So is a run during which
    other processes used more than `max_foreign_cores` cores of CPU (a burst of foreign load inside a run
    slows it without moving either probe); such a run is `disturbed`. With `background_cores`, that many
    busy processes run through every session (`executor.background`): the probes, taken under the load,
    give the speed both the policy and the prediction use.
    """
    from sparkv.executor.background import BackgroundLoad
    from sparkv.executor.session import RealSession

    pairs: list[Pair] = []
    loaded = None
    for trace in traces:
        session = RealSession(base.with_(trace=trace), document, link_kind=link_kind, loaded=loaded)
        loaded = session.loaded
        if auto_scale is not None:
            session = RealSession(
                session.scenario.with_(bandwidth_scale=auto_scale(session.scenario)), document, link_kind, loaded=loaded
            )
        with session, BackgroundLoad(background_cores):
            for name in policies:
                template = RequestContext(session.world.request, session.world.spec, session.world.costs,
                                          energy=EnergyRates.of(session.world.radio, session.world.profile.power))
                runs = [
                    _probed_run(session, make, name, speed_tolerance, attempts, max_foreign_cores) if probe
                    else session.run(make(name), max_new_tokens=1)
                    for _ in range(repeats)
                ]
                mismatches = sum(replay_check(r, make(name), template) for r in runs)
                runs.sort(key=lambda r: r.ttft_s)
                real = runs[(len(runs) - 1) // 2]
                real.extra["background_load_cores"] = background_cores
                if repeats > 1:
                    real.extra["repeat_ttft_s"] = [r.ttft_s for r in runs]
                probed = real.extra.get("device_speed")
                at_profile = simulate(session.world, make(name), time_decisions=probed is None)
                if probed is None:
                    charged = charged_prediction(session.world, make(name), real, at_profile, None)
                    pair = Pair(session.world.trace.name, real, at_profile, mismatches, sim_charged=charged)
                else:
                    hint = real.extra["context"].get("speed_hint")
                    world = session.world_at(probed["factor"])
                    sim = simulate(world, make(name), speed_hint=hint, time_decisions=True)
                    charged = charged_prediction(world, make(name), real, sim, hint)
                    pair = Pair(session.world.trace.name, real, sim, mismatches, at_profile, probed["factor"],
                                charged)
                pairs.append(pair)
                progress(_progress_line(pair, name))
    return pairs


def _probed_run(
    session: RealSession, make: Callable[[str], Policy], name: str, tolerance: float, attempts: int,
    max_foreign_cores: float = 0.25,
) -> Result:
    """One real run between two speed probes, measured again while the probes disagree or while other
    processes took more than `max_foreign_cores` of CPU during it (`sparkv.executor.cpu_share`)."""
    from sparkv.executor.cpu_share import CpuMeter
    from sparkv.executor.model.speed import RunSpeed

    meter = CpuMeter()
    for attempt in range(1, attempts + 1):
        before = session.probe_speed()
        meter.start()
        run = session.run(make(name), max_new_tokens=1, speed_hint=before.factor)
        share = meter.stop()
        speed = RunSpeed(before, session.probe_speed())
        foreign = share.foreign_cores if share is not None else 0.0
        disturbed = foreign > max_foreign_cores
        steady = speed.steady(tolerance) and not disturbed
        if steady or attempt == attempts:
            run.extra["device_speed"] = {**speed.to_dict(), "attempts": attempt, "steady": steady,
                                         "tolerance": tolerance, "disturbed": disturbed,
                                         "max_foreign_cores": max_foreign_cores,
                                         "cpu_share": share.to_dict() if share is not None else None}  # fmt: skip
            return run
    raise AssertionError("unreachable: the last attempt returns")


def _progress_line(pair: Pair, name: str) -> str:
    real, sim = pair.real, pair.sim
    line = (f"  {pair.trace:32s} {name:7s} real {real.ttft_s:7.3f} s  sim {sim.ttft_s:7.3f} s  "
            f"({100 * _err(sim, real):+.1f}%)")  # fmt: skip
    if pair.sim_profile is not None and pair.device_speed is not None:
        ds = real.extra["device_speed"]
        note = "" if ds["attempts"] == 1 else f", attempt {ds['attempts']}"
        if ds.get("disturbed"):
            note += f", other processes used {ds['cpu_share']['foreign_cores']:.2f} cores during the run"
        elif not ds["steady"]:
            note += ", speed changed during the run"
        line += (f"  probes: compute x{ds['before']['factor']:.3f} / x{ds['after']['factor']:.3f} of profiled "
                 f"time{note}; at profiled speed sim {pair.sim_profile.ttft_s:7.3f} s "
                 f"({100 * _err(pair.sim_profile, real):+.1f}%)")  # fmt: skip
    return line


def decision_summary(pairs: Sequence[Pair]) -> dict[str, dict[str, float]]:
    """Per policy: median over its real runs of the policy's decision time per request, the simulator's own
    timing of the same policy, and the compute lane's median hand-overs (ms)."""
    out: dict[str, dict[str, float]] = {}
    for policy in sorted({p.real.policy for p in pairs}):
        mine = [p for p in pairs if p.real.policy == policy]
        cols = {"real_decision_ms": [p.real.extra.get("decision", {}).get("total_ms") for p in mine],
                "sim_decision_ms": [p.sim.extra.get("decision", {}).get("total_ms") for p in mine],
                "handover_median_ms": [p.real.extra.get("decision", {}).get("handover_median_ms") for p in mine],
                "report_median_ms": [p.real.extra.get("decision", {}).get("report_median_ms") for p in mine]}
        out[policy] = {k: statistics.median(v) for k, vs in cols.items() if (v := [x for x in vs if x is not None])}
    return out


def lane_ratios(real: Result) -> dict[str, list[float]]:
    """Measured / predicted seconds of each compute span of a real run, grouped by what else was going on:
    "compute, link busy" (a transfer overlapped most of it), "compute, link idle", and "query" layers; and of
    each read from local disk ("disk read", where the run had local KV).
    The predictions are the run's own cost table, so these ratios show which cost the model misses."""
    costs = CostTable.from_dict(real.extra["context"]["costs"])
    links = [(s.start_s, s.end_s) for s in real.spans if s.lane == "link"]
    out: dict[str, list[float]] = {"compute, link busy": [], "compute, link idle": [], "query": []}
    for s in real.spans:
        dur = s.end_s - s.start_s
        if dur <= 0:
            continue
        if s.kind == "compute" and s.block is not None:
            overlap = sum(max(0.0, min(s.end_s, b) - max(s.start_s, a)) for a, b in links) / dur
            key = "compute, link busy" if overlap > 0.5 else "compute, link idle"
            out[key].append(dur / costs.compute_s(s.block))
        elif s.kind == "query" and s.layer >= 0:
            out["query"].append(dur / float(costs.query_layer_s[s.layer]))
        elif s.kind == "read" and s.block is not None and costs.local is not None:
            out.setdefault("disk read", []).append(dur / costs.local.read_s(s.block))
    return out


def lane_summary(pairs: Sequence[Pair]) -> dict[str, dict[str, float]]:
    """Per group of `lane_ratios` over all runs: spans, median and p10/p90 of measured / predicted."""
    pooled: dict[str, list[float]] = {}
    for p in pairs:
        for key, ratios in lane_ratios(p.real).items():
            pooled.setdefault(key, []).extend(ratios)
    summary = {}
    for key, ratios in pooled.items():
        if ratios:
            q = statistics.quantiles(ratios, n=10) if len(ratios) > 1 else [ratios[0]] * 9
            summary[key] = {"spans": len(ratios), "median": statistics.median(ratios), "p10": q[0], "p90": q[-1]}
    return summary


def write_validation(pairs: Sequence[Pair], out: Path, config: dict[str, Any]) -> dict[str, Any]:
    """validation.csv, validation.json (config, stats), per-run Results, and the figures; returns what
    validation.json holds."""
    from sparkv.analysis.plots import plot_predicted_vs_measured
    from sparkv.analysis.tables import write_csv
    from sparkv.analysis.validate_plots import plot_error_by_policy, plot_overlay

    out.mkdir(parents=True, exist_ok=True)
    rows = [pair_row(p) for p in pairs]
    write_csv(rows, out / "validation.csv")
    stats = grouped_stats(rows)
    steady_rows = [r for r in rows if r["speed_steady"] is not False]
    runs = out / "runs"
    for i, p in enumerate(pairs):
        p.real.save(runs / f"{i:03d}-real-{p.real.policy}.json")
        p.sim.save(runs / f"{i:03d}-sim-{p.sim.policy}.json")
    meta = {"kind": "validation", "config": config, "stats": stats,
            "stats_at_profiled_speed": grouped_stats(rows, "ttft_err_profile_pct"), "lanes": lane_summary(pairs),
            "stats_decisions_charged": grouped_stats(rows, "ttft_err_charged_pct"),
            "decision_ms": decision_summary(pairs),
            "stats_steady": grouped_stats(steady_rows) if len(steady_rows) < len(rows) else stats,
            "unsteady_runs": len(rows) - len(steady_rows),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "python": platform.python_version()}}  # fmt: skip
    (out / "validation.json").write_text(json.dumps(meta, indent=1))
    if rows:
        plot_predicted_vs_measured(rows, "ttft_s", "sim_ttft_s", "real_ttft_s", out / "ttft_scatter.png")
        plot_error_by_policy(rows, out / "ttft_error_by_policy.png")
        for i, p in enumerate(pairs[: min(len(pairs), 8)]):
            plot_overlay(p.sim, p.real, out / "timelines" / f"{i:03d}-{p.real.policy}.png", title=p.trace)
    return meta
