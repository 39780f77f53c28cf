"""The evaluation: every policy over traces x context lengths x bandwidth scales in the simulator.

A bandwidth scale is either absolute (multiply the trace) or set from a target ratio of stream-only to
local-only TTFT (`ratios`): local and stream-only are simulated at scale 1, and the scale that brings
their ratio to the target is used, so every trace is evaluated in the regime where the split matters.
Where stream-only cannot finish at scale 1 (long contexts on slow traces), the scale is solved from the
trace's integral and refined by simulation (`calibrate_scale`); each row says which (`calibration`).
Each scenario also gets the oracle (the trace itself as forecast, see `oracle_options`) and the fluid
lower bound. One row per (scenario, policy), with the scenario's full configuration.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sparkv.core.config import Scenario
from sparkv.core.paths import shared_path
from sparkv.policies import make_policy
from sparkv.policies.base import RequestContext
from sparkv.policies.bounds import fluid_bound_for
from sparkv.policies.controller import SparKVConfig
from sparkv.policies.oracle import foresight_of, oracle_options
from sparkv.policies.planner_energy import EnergyRates
from sparkv.sim import SimulationStalled, World, build_world, simulate
from sparkv.traces import Trace, get_trace, is_spec
from sparkv.traces.expand import expand_traces

POLICY_ORDER = ("local", "stream", "cake", "static", "sparkv", "oracle")
SYNTHETIC = ("lte:seed=1", "lte:seed=2", "lte:seed=3", "ge:seed=1", "ge:seed=2", "steps:20s@16mbps,20s@2mbps")


@dataclass(frozen=True)
class EvalConfig:
    """What `sparkv evaluate` runs; saved beside its results."""

    traces: list[str]
    context_tokens: list[int] = field(default_factory=lambda: [4096, 8192, 16384])
    ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])  # stream-only / local-only targets
    scales: list[float] = field(default_factory=list)  # absolute bandwidth scales, in addition
    policies: list[str] = field(default_factory=lambda: list(POLICY_ORDER))
    base: dict[str, Any] = field(default_factory=dict)  # Scenario.to_dict() every point starts from
    sparkv: dict[str, Any] = field(default_factory=dict)  # SparKVConfig.to_dict()
    # the sparkv policy once per objective (`policies.objective`): rows "sparkv" (ttft) and "sparkv[OBJECTIVE]"
    objectives: list[str] = field(default_factory=lambda: ["ttft"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_traces() -> list[str]:
    """The real traces under ../shared/traces if present, else synthetic families."""
    root = shared_path("traces")
    return expand_traces([str(root)]) if root else list(SYNTHETIC)


def fluid_bound(world: World) -> float:
    """The fluid lower bound on what the oracle is told of `world` (`sparkv.policies.bounds`)."""
    return fluid_bound_for(world.costs, foresight_of(world))


def jobs_for(cfg: EvalConfig) -> list[dict[str, Any]]:
    """One job per (trace, context, scale target); each runs every policy on one world."""
    out = []
    for trace in cfg.traces:
        for ctx in cfg.context_tokens:
            targets = [("ratio", r) for r in cfg.ratios] + [("scale", s) for s in cfg.scales]
            for kind, value in targets:
                out.append({"trace": trace, "context_tokens": ctx, "kind": kind, "value": value,
                            "policies": cfg.policies, "base": cfg.base, "sparkv": cfg.sparkv,
                            "objectives": cfg.objectives})  # fmt: skip
    return out


def _ttft(world: World, name: str) -> float:
    try:
        return simulate(world, make_policy(name), record=False).ttft_s
    except SimulationStalled:
        return math.inf


def run_job(job: dict[str, Any]) -> list[dict[str, Any]]:
    """Every policy on one scenario; rows of plain data (runs in a worker process)."""
    base = Scenario.from_dict(job["base"]) if job["base"] else Scenario()
    scenario = base.with_(trace=job["trace"], context_tokens=job["context_tokens"])
    trace = _trace(job["trace"])
    world = build_world(scenario, trace=trace)
    scale, calibration = (float(job["value"]), "absolute") if job["kind"] == "scale" else (1.0, "")
    if job["kind"] == "ratio":
        scale, calibration = calibrate_scale(scenario, trace, float(job["value"]))
    if scale != scenario.link.bandwidth_scale:
        scenario = scenario.with_(bandwidth_scale=scale * scenario.link.bandwidth_scale)
        world = build_world(scenario, trace=trace)
    bound = fluid_bound(world)
    rows: list[dict[str, Any]] = []
    runs: list[tuple[str, str, dict[str, Any]]] = []  # (row label, policy, options)
    for name in job["policies"]:
        if name == "oracle":
            runs.append((name, name, oracle_options(world)))
        elif name == "sparkv":
            base_cfg = SparKVConfig.from_dict(job["sparkv"]) if job["sparkv"] else SparKVConfig()
            for objective in job.get("objectives") or ["ttft"]:
                cfg = base_cfg if objective == base_cfg.objective else base_cfg.with_(objective=objective)
                runs.append((objective_label(objective), name, {"config": cfg} if cfg != SparKVConfig() else {}))
        else:
            runs.append((name, name, {}))
    for label, name, options in runs:
        plan_ms = _plan_ms(world, name, options) if name in ("sparkv", "oracle") else math.nan
        policy = make_policy(name, **options)
        t0 = time.perf_counter()
        try:
            result = simulate(world, policy, record=False)
        except SimulationStalled as exc:
            rows.append({"policy": label, "status": "stalled", "reason": str(exc), "ttft_s": math.inf})
            continue
        wall = time.perf_counter() - t0
        stats = result.extra.get("policy_stats", {})
        rows.append({
            "policy": label, "status": "ok", "ttft_s": result.ttft_s, "energy_j": result.energy_total_j,
            **{f"energy_{k}_j": v for k, v in result.energy_j.items()},
            "mb_streamed": result.bytes_streamed / 1e6, "mb_wasted": result.bytes_wasted / 1e6,
            "cells_computed": result.cells_computed, "cells_streamed": result.cells_streamed,
            "predicted_ttft_s": stats.get("predicted_ttft_s", math.nan), "replans": stats.get("replans", 0),
            "cancels": stats.get("cancels", 0), "plan_ms": plan_ms, "sim_wall_s": wall,
            "policy_config": json.dumps(result.config["policy"]),
        })  # fmt: skip
    ttft = {r["policy"]: r["ttft_s"] for r in rows}
    energy = {r["policy"]: r.get("energy_j", math.nan) for r in rows}
    common = {
        "trace": Path(job["trace"]).name if not is_spec(job["trace"]) else job["trace"],
        "trace_path": job["trace"], "context_tokens": job["context_tokens"], "scale_kind": job["kind"],
        "scale_target": job["value"], "bandwidth_scale": scenario.link.bandwidth_scale,
        "calibration": calibration, "trace_mean_mbps": world.trace.mean_bps * 8 / 1e6, "fluid_bound_s": bound,
        "local_ttft_s": ttft.get("local", math.nan), "stream_ttft_s": ttft.get("stream", math.nan),
        "oracle_ttft_s": ttft.get("oracle", math.nan), "cake_ttft_s": ttft.get("cake", math.nan),
        "local_energy_j": energy.get("local", math.nan),
        "scenario": json.dumps(scenario.to_dict()),
    }  # fmt: skip
    return [{**common, **row} for row in rows]


def objective_label(objective: str) -> str:
    """The row name of the sparkv policy under `objective`: "sparkv" for TTFT, else "sparkv[OBJECTIVE]"."""
    return "sparkv" if objective == "ttft" else f"sparkv[{objective}]"


CALIBRATION_STEPS = 4  # simulated stream-only runs at most when stream-only does not finish at scale 1
CALIBRATION_TOLERANCE = 0.02  # relative error of the stream/local ratio that ends the search


def calibrate_scale(scenario: Scenario, trace: Trace, target: float) -> tuple[float, str]:
    """Bandwidth scale (relative to the scenario's) at which stream-only TTFT / local-only TTFT is `target`.

    Where stream-only finishes at scale 1, that run is the first trial ("simulated"). Where it does not (a
    slow trace, a long context: the simulator stops at `DEFAULT_MAX_TIME_S`), stream-only need not finish
    at scale 1 at all: the first guess solves the trace's own integral, transfer by transfer, for the scale
    at which stream-only takes the target time (`integral_scale`; "trace-integral+simulated"). Either way
    each trial simulates stream-only and scales by its ratio's error, until within `CALIBRATION_TOLERANCE`
    or `CALIBRATION_STEPS` trials; a guess at which stream-only still does not finish is raised 4x.
    """
    world = build_world(scenario, trace=trace)
    local = _ttft(world, "local")
    stream: float | None = _ttft(world, "stream")
    finished = stream is not None and math.isfinite(stream)
    scale = 1.0
    if not finished:
        scale, stream = integral_scale(world, target * local), None
    for _ in range(CALIBRATION_STEPS):
        if stream is None:
            trial = build_world(scenario.with_(bandwidth_scale=scale * scenario.link.bandwidth_scale), trace=trace)
            stream = _ttft(trial, "stream")
        if not math.isfinite(stream):
            scale, stream = scale * 4.0, None
            continue
        ratio = stream / local
        if abs(ratio / target - 1.0) <= CALIBRATION_TOLERANCE:
            break
        scale, stream = scale * ratio / target, None
    return scale, "simulated" if finished else "trace-integral+simulated"


def stream_estimate_s(world: World, scale: float) -> float:
    """Stream-only TTFT at `scale` x `world`'s bandwidth from the trace's integral, without simulating: one
    transfer per layer, back to back, each its fixed cost, then its payload as the trace carries it, then
    installing; the last query layer and the first token after the last."""
    costs, link = world.costs, world.scenario.link
    t = link.trace_offset_s
    for n in costs.cell_bytes.sum(axis=0).tolist():
        t = world.trace.time_to_deliver(t + costs.transfer_fixed_s, n / link.efficiency / scale)
        t += n * costs.install_s_per_byte
    return t - link.trace_offset_s + float(costs.query_layer_s[-1]) + costs.first_token_s


def integral_scale(world: World, ttft_s: float) -> float:
    """The bandwidth scale (relative to `world`'s) at which `stream_estimate_s` is `ttft_s`: bisection in
    log scale (the estimate falls as the scale rises), to 0.1 %."""
    lo, hi = 1e-6, 1e9
    if stream_estimate_s(world, hi) > ttft_s:  # the fixed costs alone take longer
        return hi
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        if stream_estimate_s(world, mid) > ttft_s:
            lo = mid
        else:
            hi = mid
    return hi


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Per row: speed-ups over the baselines, gaps to the oracle and the bound, the regime test."""
    for r in rows:
        best = min(r["local_ttft_s"], r["stream_ttft_s"])
        t = r["ttft_s"]
        r["stream_local_ratio"] = r["stream_ttft_s"] / r["local_ttft_s"]
        r["in_band"] = 0.25 <= r["stream_local_ratio"] <= 4.0
        r["speedup_vs_best_single"] = best / t
        r["speedup_vs_cake"] = r["cake_ttft_s"] / t
        r["ttft_over_oracle"] = t / r["oracle_ttft_s"]
        r["ttft_over_bound"] = t / r["fluid_bound_s"]


def run_evaluation(
    cfg: EvalConfig, jobs: int = 1, progress: Callable[[int, int], None] | None = None
) -> list[dict[str, Any]]:
    """All jobs, in parallel across `jobs` processes; rows sorted by scenario and policy order."""
    tasks = jobs_for(cfg)
    rows: list[dict[str, Any]] = []
    if jobs <= 1:
        for i, task in enumerate(tasks):
            rows.extend(run_job(task))
            if progress:
                progress(i + 1, len(tasks))
    else:
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(run_job, t) for t in tasks]
            for i, fut in enumerate(as_completed(futures)):
                rows.extend(fut.result())
                if progress:
                    progress(i + 1, len(tasks))
    order = {name: i for i, name in enumerate(POLICY_ORDER)}
    rows.sort(key=lambda r: (r["trace_path"], r["context_tokens"], r["scale_kind"], r["scale_target"],
                             order.get(r["policy"], 99)))  # fmt: skip
    add_ratios(rows)
    return rows


def oracle_beaten(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """How often the bound did not hold: (scenario, policy) pairs whose TTFT is below the oracle's by more than
    0.1 % and 1 %, per policy, the least TTFT / oracle TTFT, and scenarios whose fluid bound is above the oracle."""
    by_scenario: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok":
            key = (r["trace_path"], r["context_tokens"], r["scale_kind"], r["scale_target"])
            by_scenario.setdefault(key, {})[r["policy"]] = r
    out: dict[str, Any] = {"scenarios": 0, "beat_0_1pct": 0, "beat_1pct": 0, "by_policy_0_1pct": {},
                           "least_ratio": math.inf, "bound_above_oracle": 0}  # fmt: skip
    for policies in by_scenario.values():
        oracle = policies.get("oracle")
        if oracle is None:
            continue
        out["scenarios"] += 1
        o = float(oracle["ttft_s"])
        out["bound_above_oracle"] += float(oracle["fluid_bound_s"]) > o * (1 + 1e-9)
        for name, r in policies.items():
            if name == "oracle":
                continue
            ratio = float(r["ttft_s"]) / o
            out["least_ratio"] = min(out["least_ratio"], ratio)
            if ratio < 1 - 1e-3:
                out["beat_0_1pct"] += 1
                out["by_policy_0_1pct"][name] = out["by_policy_0_1pct"].get(name, 0) + 1
            out["beat_1pct"] += ratio < 1 - 1e-2
    return out


def summarise(rows: list[dict[str, Any]], band_only: bool = True) -> list[dict[str, Any]]:
    """Per policy: medians over the scenarios (in the 4x band when `band_only`)."""
    out = []
    names = [n for n in POLICY_ORDER if any(r["policy"] == n for r in rows)]
    names += sorted({r["policy"] for r in rows} - set(names))
    for name in names:
        sel = [r for r in rows if r["policy"] == name and r["status"] == "ok" and (r["in_band"] or not band_only)]
        if not sel:
            continue

        def med(key: str, sel: list[dict[str, Any]] = sel) -> float:
            vals = [float(r[key]) for r in sel if math.isfinite(float(r[key]))]
            return statistics.median(vals) if vals else math.nan

        def p90(key: str, sel: list[dict[str, Any]] = sel) -> float:
            vals = sorted(float(r[key]) for r in sel)
            return vals[min(len(vals) - 1, int(0.9 * len(vals)))]

        out.append({
            "policy": name, "n": len(sel), "ttft_med_s": med("ttft_s"), "ttft_p90_s": p90("ttft_s"),
            "energy_med_j": med("energy_j"), "speedup_best_single": med("speedup_vs_best_single"),
            "speedup_cake": med("speedup_vs_cake"), "over_oracle": med("ttft_over_oracle"),
            "over_oracle_p90": p90("ttft_over_oracle"), "over_bound": med("ttft_over_bound"),
        })  # fmt: skip
    return out


def _plan_ms(world: World, name: str, options: dict[str, Any], clock: Callable[[], float] = time.perf_counter) -> float:
    """Milliseconds of the policy's first plan (its `begin`), timed outside the pure policy."""
    policy = make_policy(name, **options)
    t0 = clock()
    policy.begin(RequestContext(world.request, world.spec, world.costs, 0.0, None,
                                EnergyRates.of(world.radio, world.profile.power)))
    return (clock() - t0) * 1e3


@lru_cache(maxsize=64)
def _trace(name: str) -> Trace:
    return get_trace(name)  # once per worker process


def bench_planning(repeats: int = 30, device: str = "analytic-cpu-2core", trace: str = "const:5mbps,1000s") -> dict:
    """SparKV's first plan for an 8k-token (16 chunks of 512) 30-layer SmolLM2 request: wall and CPU ms here."""
    scenario = Scenario(model="smollm2-135m", context_tokens=8192, chunk_tokens=512, trace=trace, device=device)
    world = build_world(scenario)
    wall = sorted(_plan_ms(world, "sparkv", {}) for _ in range(repeats))
    cpu = sorted(_plan_ms(world, "sparkv", {}, time.process_time) for _ in range(repeats))
    return {"median_ms": statistics.median(wall), "max_ms": wall[-1], "median_cpu_ms": statistics.median(cpu),
            "repeats": repeats, "chunks": world.request.num_chunks, "layers": world.spec.num_layers,
            "device": device}  # fmt: skip
