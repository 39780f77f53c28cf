"""A fluid lower bound on TTFT that ignores the dependencies between cells.

By time T the device can compute `T - (query + first token)` seconds of cells, and the link can have
delivered every byte it carries before `T - (last query layer + first token)` (one transfer's fixed
cost paid once). Cells are divisible, and the device computes those with the least compute time per
wire byte first (a fractional knapsack); T is the least time at which the two together cover the
whole context. No schedule that respects the rules can beat it.
"""

from __future__ import annotations

from sparkv.core.costs import CostTable
from sparkv.policies.planner_model import ComputeSpeed, LinkModel


def deliverable_bytes(link: LinkModel, t_s: float, total_bytes: float) -> float:
    """Most wire bytes one transfer issued at 0 can install by `t_s` (bisection; capped at the total)."""
    if link.transfer_end(0.0, 0.0) > t_s:
        return 0.0
    if link.transfer_end(0.0, total_bytes) <= t_s:
        return total_bytes
    lo, hi = 0.0, total_bytes
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if link.transfer_end(0.0, mid) <= t_s:
            lo = mid
        else:
            hi = mid
    return lo


def fluid_bound_s(costs: CostTable, link: LinkModel, speed: ComputeSpeed | None = None) -> float:
    """Least TTFT any policy could reach for a request starting at time 0 (seconds)."""
    speed = speed or ComputeSpeed()
    work = costs.compute_cell_s.ravel()  # seconds per cell at full speed
    nbytes = costs.cell_bytes.ravel().astype(float)
    order = sorted(range(work.size), key=lambda i: work[i] / max(nbytes[i], 1.0))
    w_sorted = [float(work[i]) for i in order]
    b_sorted = [float(nbytes[i]) for i in order]
    total_bytes = sum(b_sorted)
    query = float(costs.query_layer_s.sum()) + costs.first_token_s
    last = float(costs.query_layer_s[-1]) + costs.first_token_s

    def capacity(t_s: float) -> float:
        """Seconds of full-speed work the device can do in [0, t_s]."""
        if speed.availability is None:
            return t_s / speed.scale
        lo, hi = 0.0, t_s
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if speed.end(0.0, mid) <= t_s else (lo, mid)
        return lo

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
        return left <= deliverable_bytes(link, t_s - last, total_bytes) * (1 + 1e-12) + 1e-6

    hi = max(speed.end(0.0, float(work.sum()) + query), 1e-9)
    while not feasible(hi):
        hi *= 2
    lo = 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if feasible(mid) else (mid, hi)
    return hi
