"""TTFT and energy together: who dominates whom per scenario, the energy objective's targets, Pareto fronts.

Energies are the simulator's modelled joules (`cost_models.energy`). A policy is dominated in a scenario when
a baseline is both faster and uses less energy (strictly, by more than 1e-9 relative). The fronts are per
regime (the bandwidth target: a stream-only / local-only ratio or an absolute scale): each policy's median
TTFT and median energy over the regime's scenarios, each relative to local-only's in the same scenario.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

BASELINES = ("local", "stream", "cake", "static")
ENERGY_TOLERANCE = 0.03  # the energy objective's target: within 3 % of the lowest-energy baseline


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["trace_path"], r["context_tokens"], r["scale_kind"], r["scale_target"])


def by_scenario(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, dict[str, Any]]]:
    out: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok" and math.isfinite(float(r.get("energy_j", math.nan))):
            out.setdefault(_key(r), {})[r["policy"]] = r
    return out


def _stats(values: list[float]) -> dict[str, float]:
    vals = sorted(values)
    if not vals:
        return {"n": 0, "median": math.nan, "p90": math.nan, "max": math.nan}
    return {"n": len(vals), "median": statistics.median(vals), "p90": vals[min(len(vals) - 1, int(0.9 * len(vals)))],
            "max": vals[-1]}  # fmt: skip


def dominance(rows: list[dict[str, Any]], policy: str = "sparkv") -> dict[str, Any]:
    """Scenarios where `policy` is dominated by a baseline (both faster and lower energy), with the worst."""
    count, total, cases = 0, 0, []
    for key, pols in by_scenario(rows).items():
        me = pols.get(policy)
        if me is None:
            continue
        total += 1
        t, e = float(me["ttft_s"]), float(me["energy_j"])
        by = [b for b in BASELINES if b in pols and float(pols[b]["ttft_s"]) < t * (1 - 1e-9)
              and float(pols[b]["energy_j"]) < e * (1 - 1e-9)]  # fmt: skip
        if by:
            count += 1
            cases.append({"scenario": list(key), "by": by, "ttft_s": t, "energy_j": e,
                          "baseline_ttft_s": [float(pols[b]["ttft_s"]) for b in by],
                          "baseline_energy_j": [float(pols[b]["energy_j"]) for b in by]})  # fmt: skip
    return {"policy": policy, "scenarios": total, "dominated": count, "cases": cases[:20]}


def energy_target(rows: list[dict[str, Any]], policy: str = "sparkv[energy]") -> dict[str, Any]:
    """Per scenario: `policy`'s energy / the lowest-energy baseline's, and its TTFT / that baseline's; the
    target is energy within `ENERGY_TOLERANCE` while at least as fast."""
    energy, ttft, met = [], [], 0
    lowest: dict[str, int] = {}
    for pols in by_scenario(rows).values():
        me = pols.get(policy)
        base = [pols[b] for b in BASELINES if b in pols]
        if me is None or not base:
            continue
        low = min(base, key=lambda r: float(r["energy_j"]))
        lowest[low["policy"]] = lowest.get(low["policy"], 0) + 1
        e, t = float(me["energy_j"]) / float(low["energy_j"]), float(me["ttft_s"]) / float(low["ttft_s"])
        energy.append(e)
        ttft.append(t)
        met += e <= 1 + ENERGY_TOLERANCE and t <= 1 + 1e-9
    return {"policy": policy, "energy_over_lowest_baseline": _stats(energy), "ttft_over_it": _stats(ttft),
            "met": met, "scenarios": len(energy), "lowest_energy_baseline": lowest,
            "target": f"energy <= {1 + ENERGY_TOLERANCE:g} x the lowest-energy baseline's and TTFT <= its"}  # fmt: skip


def pareto_fronts(rows: list[dict[str, Any]], configs: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Per regime and policy: median TTFT / local TTFT and median energy / local energy over the regime's
    scenarios, whether the point is on the regime's Pareto front, and the policy's configuration."""
    groups: dict[tuple[str, float], dict[str, list[tuple[float, float]]]] = {}
    for key, pols in by_scenario(rows).items():
        local = pols.get("local")
        if local is None:
            continue
        lt, le = float(local["ttft_s"]), float(local["energy_j"])
        for name, r in pols.items():
            groups.setdefault((key[2], key[3]), {}).setdefault(name, []).append(
                (float(r["ttft_s"]) / lt, float(r["energy_j"]) / le))
    out = []
    for (kind, target), per_policy in sorted(groups.items()):
        points = {n: (statistics.median(t for t, _ in v), statistics.median(e for _, e in v), len(v))
                  for n, v in per_policy.items()}  # fmt: skip
        for name, (t, e, n) in sorted(points.items()):
            front = not any(t2 <= t and e2 <= e and (t2 < t or e2 < e) for t2, e2, _ in points.values())
            out.append({"regime": f"{kind} {target:g}", "policy": name, "scenarios": n, "ttft_over_local_med": t,
                        "energy_over_local_med": e, "on_front": front,
                        "config": (configs or {}).get(name, "")})  # fmt: skip
    return out
