"""Validation of per-head decode (AERP, H2O): fit the per-head compute model to real runs, replay a real run's
attention in the simulator, compare step times (median, p90) and decisions (every step's bytes, exactly)."""

from __future__ import annotations

import statistics
from typing import Any

import numpy as np
from scipy.optimize import nnls

from sparkv.core.decode import DecodeSummary, LayerPlan
from sparkv.core.result import Result
from sparkv.cost_models.kelle import HeadDecodeCompute
from sparkv.engine.decode import DecodeEngine

BYTE_SERIES = ("kv_read_bytes_by_step", "x_read_bytes_by_step", "written_bytes_by_step", "held_bytes_by_step",
               "recomputed_tokens_by_step")  # fmt: skip


def fit_head_compute(engines: list[DecodeEngine], kv_heads: int) -> HeadDecodeCompute:
    """Non-negative least squares over the layer spans of calibration runs (engines with a log):
    layer seconds = fixed + per entry x (head, token) entries + per recomputed token; the step's fixed part is
    the median gap after the last layer. Step 0 (first touches) is left out."""
    rows: list[list[float]] = []
    ys: list[float] = []
    tails: list[float] = []
    for engine in engines:
        plans = {(p.step, p.layer): p for kind, p in engine.log if kind == "plan" and isinstance(p, LayerPlan)}
        layers = {(s.step, s.layer): s for s in engine.spans if s.kind == "layer"}
        for (step, layer), span in layers.items():
            if step == 0:
                continue
            plan = plans[(step, layer)]
            rows.append([1.0, float(sum(len(h) for h in plan.heads) + kv_heads), float(len(plan.recompute))])
            ys.append(span.end_s - span.start_s)
        last = engine.geo.num_layers - 1
        for st in engine.steps:
            final = layers.get((st.step, last))
            if final is not None and st.step > 0:
                tails.append(st.end_s - final.end_s)
    x, y = np.asarray(rows), np.asarray(ys)
    used = [0, 1] + ([2] if x[:, 2].any() else [])
    coef, _ = nnls(x[:, used], y)
    resid = y - x[:, used] @ coef  # one pass of outlier rejection (a shared machine stalls now and then)
    mad = float(np.median(np.abs(resid - np.median(resid)))) or 1e-12
    keep = np.abs(resid) <= 4 * 1.4826 * mad
    if keep.sum() >= 4 * len(used):
        coef, _ = nnls(x[keep][:, used], y[keep])
    return HeadDecodeCompute(float(coef[0]), float(coef[1]), float(coef[2]) if len(used) == 3 else 0.0,
                             statistics.median(tails) if tails else 0.0, "calibrated",
                             f"least squares over {len(ys)} real layers of {len(engines)} runs")  # fmt: skip


def compare_head_runs(real: Result, sim: Result) -> dict[str, Any]:
    """Step-time errors of the simulator against the real run, and whether every per-step byte count matches."""
    rs, ss = DecodeSummary.from_dict(real.decode or {}), DecodeSummary.from_dict(sim.decode or {})
    rt, st = rs.totals(), ss.totals()
    rstats, sstats = rs.policy_stats, ss.policy_stats
    same = all(rstats.get(k) == sstats.get(k) for k in BYTE_SERIES)
    errors = sorted(abs(b.step_s - a.step_s) / a.step_s for a, b in zip(rs.steps, ss.steps, strict=True))
    n = len(errors)
    return {
        "policy": real.policy,
        "real_median_ms": rt["step_median_s"] * 1e3, "sim_median_ms": st["step_median_s"] * 1e3,
        "median_err": abs(st["step_median_s"] - rt["step_median_s"]) / rt["step_median_s"] if n else 0.0,
        "real_p90_ms": rt["step_p90_s"] * 1e3, "sim_p90_ms": st["step_p90_s"] * 1e3,
        "p90_err": abs(st["step_p90_s"] - rt["step_p90_s"]) / rt["step_p90_s"] if n else 0.0,
        "err_median": statistics.median(errors) if n else 0.0,
        "bytes_match": same, "evictions_match": rstats.get("evictions") == sstats.get("evictions"),
        "real_held_mb": rstats.get("held_bytes_mean", 0.0) / 1e6,
    }  # fmt: skip
