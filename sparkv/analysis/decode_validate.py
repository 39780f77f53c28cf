"""Decode validation: fit the decode compute model to real runs, replay real runs' score traces in the
simulator, and compare step times (per-step relative error) and decisions (bytes read, hits: exactly)."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
from scipy.optimize import nnls

from sparkv.core.decode import DecodeSummary, LayerPlan
from sparkv.core.result import Result
from sparkv.cost_models.decode_compute import DecodeCompute
from sparkv.engine.decode import DecodeEngine


def _plans(engine: DecodeEngine) -> dict[tuple[int, int], LayerPlan]:
    return {(p.step, p.layer): p for kind, p in engine.log if kind == "plan"}


def fit_decode_compute(runs: list[tuple[str, str, DecodeEngine]], rank: int) -> DecodeCompute:
    """Least squares over the layer spans of calibration runs (score kind, policy name, engine with a log):
    layer seconds = fixed + per attended token x attended + per scored token x scored; exact scoring from the
    gap before each oracle layer. The step's fixed part (and the appends) is the rest of each step: its time
    less its compute spans (layers, scoring phases), its stalls, its exact-scoring gaps and its layer-0
    scoring as the simulator charges it, so the work no span covers (the first layer's plan, the
    bookkeeping between layers, the LM head) is counted once, where the simulator charges it."""
    rows: list[list[float]] = []
    ys: list[float] = []
    gaps: list[tuple[float, int]] = []
    rests: list[tuple[str, float, int, bool]] = []  # (score kind, unexplained s, tokens scored, appended)
    for kind, _name, engine in runs:
        geo = engine.geo
        plans = _plans(engine)
        layer_spans = [s for s in engine.spans if s.kind == "layer"]
        by_key = {(s.step, s.layer): s for s in layer_spans}
        reads = {(s.step, s.layer): s for s in engine.spans if s.kind == "read"}
        step_gaps: dict[int, float] = {}
        for (step, layer), span in by_key.items():
            if step == 0:  # the first step warms up (allocations, first touches): not the steady cost
                continue
            plan = plans[(step, layer)]
            tokens = geo.context_groups * geo.group_tokens + geo.context_tail_tokens + step  # cached before the step
            full_tokens = tokens // geo.group_tokens * geo.group_tokens  # in full groups: what is scored
            attended = len(plan.attend) * geo.group_tokens + tokens % geo.group_tokens + 1
            scored = full_tokens if kind == "predicted" and layer + 1 < geo.num_layers else 0
            rows.append([1.0, attended, scored])
            ys.append(span.end_s - span.start_s)
            if kind == "exact" and layer > 0:
                prev = by_key.get((step, layer - 1))
                if prev is not None:  # scoring ends where the layer's reads start (or its compute, without reads)
                    began = reads[(step, layer)].start_s if (step, layer) in reads else span.start_s
                    gaps.append((began - prev.end_s, full_tokens))
                    step_gaps[step] = step_gaps.get(step, 0.0) + began - prev.end_s
        busy: dict[int, float] = {}
        for s in engine.spans:
            if s.lane == "compute":  # layers and (storage-scoring worlds) scoring phases
                busy[s.step] = busy.get(s.step, 0.0) + s.end_s - s.start_s
        for st in engine.steps:
            if (st.step, geo.num_layers - 1) not in by_key or st.step == 0:
                continue
            tokens = geo.context_groups * geo.group_tokens + geo.context_tail_tokens + st.step
            rest = st.end_s - st.start_s - busy.get(st.step, 0.0) - st.stall_s - step_gaps.get(st.step, 0.0)
            appended = (geo.context_tail_tokens + st.step + 1) % geo.group_tokens == 0
            rests.append((kind, rest, tokens // geo.group_tokens * geo.group_tokens, appended))
    x, y = np.asarray(rows), np.asarray(ys)
    used = [0, 1] + ([2] if x[:, 2].any() else [])
    coef, _ = nnls(x[:, used], y)  # costs are never negative: non-negative least squares
    resid = y - x[:, used] @ coef  # one pass of outlier rejection: a shared machine stalls now and then
    mad = float(np.median(np.abs(resid - np.median(resid)))) or 1e-12
    inliers = np.abs(resid) <= 4 * 1.4826 * mad
    if inliers.sum() >= len(used) * 4:
        coef, _ = nnls(x[inliers][:, used], y[inliers])
    fixed, per_att = float(coef[0]), float(coef[1])
    per_scored = float(coef[2]) if len(used) == 3 else 0.0
    per_exact = statistics.median(g / t for g, t in gaps) if gaps else 0.0
    first = {"predicted": per_scored, "exact": per_exact}  # layer 0's scoring, charged apart by the simulator
    tails = [r - first.get(k, 0.0) * t for k, r, t, appended in rests if not appended]
    appends = [r - first.get(k, 0.0) * t for k, r, t, appended in rests if appended]
    step_fixed = max(statistics.median(tails), 0.0) if tails else 0.0
    append = (statistics.median(appends) - step_fixed) if appends else 0.0
    num_layers = runs[0][2].geo.num_layers if runs else 1
    return DecodeCompute(
        layer_fixed_s=max(fixed, 0.0), per_attended_token_s=per_att, per_scored_token_s=per_scored,
        per_exact_token_s=per_exact, step_fixed_s=step_fixed, append_layer_s=max(append, 0.0) / num_layers,
        kind="calibrated", source=f"least squares over {len(ys)} real decode layers of {len(runs)} calibration runs",
    )  # fmt: skip


def compare_runs(real: Result, sim: Result) -> dict[str, Any]:
    """Per-step relative error of the simulated step time, and whether bytes and hits match exactly."""
    rs, ss = DecodeSummary.from_dict(real.decode or {}), DecodeSummary.from_dict(sim.decode or {})
    errors = sorted(abs(b.step_s - a.step_s) / a.step_s for a, b in zip(rs.steps, ss.steps, strict=True))
    n = len(errors)
    rt, st = rs.totals(), ss.totals()
    same_bytes = [a.bytes_read for a in rs.steps] == [b.bytes_read for b in ss.steps]
    same_hits = [a.hits for a in rs.steps] == [b.hits for b in ss.steps]
    real_spread, sim_spread = step_spread([a.step_s for a in rs.steps]), step_spread([b.step_s for b in ss.steps])
    return {
        "policy": real.policy,
        "real_median_ms": rt["step_median_s"] * 1e3, "sim_median_ms": st["step_median_s"] * 1e3,
        "real_p90_ms": rt["step_p90_s"] * 1e3, "sim_p90_ms": st["step_p90_s"] * 1e3,
        "err_median": statistics.median(errors) if n else 0.0,
        "err_p90": errors[min(n - 1, int(0.9 * n))] if n else 0.0,
        "median_err": abs(st["step_median_s"] - rt["step_median_s"]) / rt["step_median_s"] if n else 0.0,
        "p90_err": abs(st["step_p90_s"] - rt["step_p90_s"]) / rt["step_p90_s"] if n else 0.0,
        "real_spread": real_spread, "sim_spread": sim_spread,
        "bytes_match": same_bytes, "hits_match": same_hits,
        "real_hit_rate": rt["hit_rate"], "sim_hit_rate": st["hit_rate"],
        "real_read_mb": rt["bytes_read"] / 1e6, "sim_read_mb": st["bytes_read"] / 1e6,
        "real_hidden": 1 - rt["stall_s"] / rt["read_s"] if rt["read_s"] else 1.0,
        "sim_hidden": 1 - st["stall_s"] / st["read_s"] if st["read_s"] else 1.0,
    }  # fmt: skip


def step_spread(times: list[float]) -> float:
    """(p90 - p10) / median of step times past the first (which warms up): the swing within one run."""
    xs = sorted(times[1:] if len(times) > 2 else times)
    n = len(xs)
    if n == 0 or statistics.median(xs) <= 0:
        return 0.0
    return (xs[min(n - 1, int(0.9 * n))] - xs[int(0.1 * n)]) / statistics.median(xs)
