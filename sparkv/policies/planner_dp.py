"""Seeds for the planner from a separable model: each chunk's k costs compute time and link time alone.

Ignoring how the lanes interleave (dependencies, query layers, merged transfers), the request is a
two-resource knapsack: choose k_c per chunk to minimise max(compute + a, link + b). A dynamic
programme over chunks keeps the Pareto front of (compute, link) totals, thinned to one point per
bucket of compute time, and returns the k vectors nearest that optimum for the exact timeline to judge.
"""

from __future__ import annotations

from sparkv.policies.planner_model import ComputeSpeed, ConstantLink, Evaluator, LinkModel, Snapshot

BUCKETS = 48  # Pareto points kept per DP step


def dp_seeds(
    ev: Evaluator, snap: Snapshot, link: LinkModel, speed: ComputeSpeed, target_bytes: float,
    lo: list[int], hi: list[int], count: int = 4,
) -> list[list[int]]:  # fmt: skip
    """Up to `count` k vectors from the separable model, best first."""
    if isinstance(link, ConstantLink):
        fixed, per_byte = link.fixed_s, 1.0 / max(link.bandwidth_bps, 1e-9) + link.install_s_per_byte
    else:  # a forecast: its average over the first transfer as a steady rate
        probe = max(target_bytes, 1.0) if target_bytes < float("inf") else 1e6
        fixed = link.transfer_end(snap.link_free_s, 0.0) - snap.link_free_s
        per_byte = max(link.transfer_end(snap.link_free_s, probe) - snap.link_free_s - fixed, 0.0) / probe
    scale, g = speed.scale, ev.group
    options: list[list[tuple[float, float, int]]] = []  # per chunk: (compute s, link s, k)
    for c in range(ev.C):
        p, cum = snap.prefix[c], ev.cum_s[c]
        ks = sorted({lo[c], hi[c], *(b for b in ev.bounds if lo[c] <= b <= hi[c])})
        opts = []
        for x in ks:
            n_cmds = (x - 1) // g - p // g + 1 if x > p else 0
            comp = (cum[x] - cum[p] + n_cmds * ev.launch_s) * scale
            pieces = ev._pieces(c, x, snap, target_bytes)
            opts.append((comp, sum(fixed + n * per_byte for _, _, n in pieces), x))
        options.append(opts)
    total = sum(max(o[0] for o in opts) for opts in options) or 1.0
    front: list[Point] = [(0.0, 0.0, ())]
    for opts in options:
        # (compute, link, k, x) sorts as (compute, link, (*k, x)) would (every k has the same length), and
        # only the points kept get their k extended
        merged = sorted([(a + ca, b + lb, k, x) for a, b, k in front for ca, lb, x in opts])
        front = [(comp, link, (*k, x)) for comp, link, k, x in _thin(merged, total / BUCKETS)]
    a0 = snap.compute_free_s + (sum(ev.query_s[snap.query_next :]) + ev.first_token_s) * scale
    b0 = snap.link_free_s + (ev.query_s[-1] + ev.first_token_s) * scale
    ranked = sorted(front, key=lambda f: max(a0 + f[0], b0 + f[1]))
    return [list(k) for _, _, k in ranked[:count]]


Point = tuple[float, float, tuple[int, ...]]  # (compute s, link s, k so far)
Candidate = tuple[float, float, tuple[int, ...], int]  # a point extended by one more chunk's k: (..., k, x)


def _thin(points: list[Candidate], width: float) -> list[Candidate]:
    """Pareto points (sorted by compute), at most one per `width` of compute time."""
    out: list[Candidate] = []
    best_link = float("inf")
    for point in points:
        comp, link = point[0], point[1]
        if link >= best_link:
            continue  # dominated
        best_link = link
        if out and int(out[-1][0] / width) == int(comp / width):
            out[-1] = point  # same bucket: the lower link time wins
        else:
            out.append(point)
    return out

