"""A fluid lower bound on TTFT that ignores the dependencies between cells.

By time T the device can compute `T - (query + first token)` seconds of cells, and the link can have
delivered every byte it carries before `T - (last query layer + first token)`. Cells are divisible,
and the device computes those with the least compute time per wire byte first (a fractional
knapsack); T is the least time at which the two together cover the whole context. No schedule that
respects the rules can beat it, because each relaxation only helps:

- the link: on a steady link one transfer from time 0 delivers the most by any time. On a trace, many
  transfers could put their installation gaps where the rate is low, so the bound lets the payload
  flow in the fastest stretches of [first byte, T - fixed install] that leave room for installing
  every byte (the trace's rates sorted, best first); queueing at the server only delays, so it is left out;
- the device: the receive slowdown only slows, so it is left out; seeded compute noise can speed a
  piece up, so every piece is credited with the luckiest draw any schedule could get (`work_floor`).
"""

from __future__ import annotations

import math

import numpy as np

from sparkv.core.costs import CostTable
from sparkv.policies.foresight import Foresight
from sparkv.policies.planner_model import ComputeSpeed, ForecastLink, LinkModel

_ITERATIONS = 60


def deliverable_bytes(link: LinkModel, t_s: float, total_bytes: float) -> float:
    """Most wire bytes one transfer issued at 0 can install by `t_s` (bisection; capped at the total)."""
    if link.transfer_end(0.0, 0.0) > t_s:
        return 0.0
    if link.transfer_end(0.0, total_bytes) <= t_s:
        return total_bytes
    lo, hi = 0.0, total_bytes
    for _ in range(_ITERATIONS):
        mid = 0.5 * (lo + hi)
        if link.transfer_end(0.0, mid) <= t_s:
            lo = mid
        else:
            hi = mid
    return lo


def _segments(forecast: object, t0_s: float, t1_s: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(rates, lengths) of a looping piecewise-constant trace over [t0_s, t1_s]; None if it is not one."""
    times, rates, duration = (getattr(forecast, a, None) for a in ("times_s", "rates_bps", "duration_s"))
    if not isinstance(times, np.ndarray) or not isinstance(rates, np.ndarray) or not isinstance(duration, float):
        return None
    loops = np.arange(math.floor(t0_s / duration), math.floor(t1_s / duration) + 1, dtype=np.float64)
    starts = (loops[:, None] * duration + times[None, :]).ravel()
    ends = (loops[:, None] * duration + np.append(times[1:], duration)[None, :]).ravel()
    lengths = np.clip(ends, t0_s, t1_s) - np.clip(starts, t0_s, t1_s)
    keep = lengths > 0
    return np.tile(rates, loops.size)[keep], lengths[keep]


def trace_deliverable_bytes(link: ForecastLink, t_s: float, total_bytes: float) -> float | None:
    """An upper bound on the wire bytes any sequence of transfers on `link` installs by `t_s`: payload in
    the best stretches of [first byte, t_s - fixed install] whose total length leaves room to install
    every byte at `install_s_per_byte`. None when the forecast is not a piecewise-constant trace."""
    a, b = link.pre_s, t_s - link.post_s
    if b <= a:
        return 0.0
    seg = _segments(link.forecast, a + link.offset_s, b + link.offset_s)
    if seg is None:
        return None
    rates, lengths = seg
    order = np.argsort(-rates, kind="stable")
    cum_len = np.concatenate(([0.0], np.cumsum(lengths[order])))
    cum_bytes = np.concatenate(([0.0], np.cumsum(rates[order] * lengths[order])))
    eff, per_byte = link.efficiency, link.install_s_per_byte

    def best_bytes(span_s: float) -> float:
        """Wire bytes in the fastest `span_s` seconds of the window."""
        if span_s <= 0:
            return 0.0
        i = int(np.searchsorted(cum_len, span_s, side="right")) - 1
        if i >= len(order):
            return float(cum_bytes[-1]) * eff
        return float(cum_bytes[i] + rates[order[i]] * (span_s - cum_len[i])) * eff

    span = b - a
    if best_bytes(span - total_bytes * per_byte) >= total_bytes:
        return total_bytes
    lo, hi = 0.0, total_bytes  # the largest n with n <= best_bytes(span - n * per_byte)
    for _ in range(_ITERATIONS):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if best_bytes(span - mid * per_byte) >= mid else (lo, mid)
    return hi


def fluid_bound_s(
    costs: CostTable, link: LinkModel, speed: ComputeSpeed | None = None, work_floor: float = 1.0
) -> float:
    """Least TTFT any policy could reach for a request starting at time 0 (seconds); `work_floor` is the
    least wall time / work any piece of compute can get (below 1 under compute noise)."""
    speed = speed or ComputeSpeed()
    if not 0 < work_floor <= 1:
        raise ValueError(f"work_floor must be in (0, 1], got {work_floor}")
    work = costs.compute_cell_s.ravel()  # seconds per cell at full speed
    nbytes = costs.cell_bytes.ravel().astype(float)
    order = sorted(range(work.size), key=lambda i: work[i] / max(nbytes[i], 1.0))
    w_sorted = [float(work[i]) for i in order]
    b_sorted = [float(nbytes[i]) for i in order]
    total_bytes = sum(b_sorted)
    query = float(costs.query_layer_s.sum()) + costs.first_token_s
    last = (float(costs.query_layer_s[-1]) + costs.first_token_s) * work_floor * speed.scale

    def deliverable(t_s: float) -> float:
        if isinstance(link, ForecastLink):
            got = trace_deliverable_bytes(link, t_s, total_bytes)
            if got is not None:
                return got
            if link.install_s_per_byte > 0:  # not a trace: payload alone, installation left out
                link_free = ForecastLink(link.forecast, link.offset_s, link.efficiency, link.pre_s, link.post_s, 0.0)
                return deliverable_bytes(link_free, t_s, total_bytes)
        return deliverable_bytes(link, t_s, total_bytes)

    def capacity(t_s: float) -> float:
        """Seconds of full-speed work the device can do in [0, t_s]."""
        if speed.availability is None:
            return t_s / (speed.scale * work_floor)
        lo, hi = 0.0, t_s / work_floor
        for _ in range(_ITERATIONS):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if speed.end(0.0, mid * work_floor) <= t_s else (lo, mid)
        return hi

    def feasible(t_s: float) -> bool:
        budget = capacity(t_s) - query
        if budget < 0:
            return False
        left = total_bytes
        for w, b in zip(w_sorted, b_sorted, strict=True):
            if budget <= 0:
                break
            take = min(1.0, budget / w) if w > 0 else 1.0
            budget -= take * w
            left -= take * b
        return left <= deliverable(t_s - last) * (1 + 1e-12) + 1e-6

    hi = max(speed.end(0.0, (float(work.sum()) + query) * work_floor), 1e-9)
    while not feasible(hi):
        hi *= 2
    lo = 0.0
    for _ in range(_ITERATIONS):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return hi


def fluid_bound_for(costs: CostTable, foresight: Foresight) -> float:
    """The bound for a request whose future `foresight` describes (what the oracle is told)."""
    link = ForecastLink(foresight.forecast, foresight.offset_s, foresight.efficiency, foresight.first_byte_s,
                        foresight.install_fixed_s, costs.install_s_per_byte)  # fmt: skip
    pieces = costs.num_chunks * costs.num_layers + costs.num_layers + 1  # most a schedule can draw noise for
    floor = foresight.noise().smallest(pieces)
    return fluid_bound_s(costs, link, ComputeSpeed(1.0, foresight.availability), floor)
