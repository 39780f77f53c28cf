"""Seeds for the planner from a separable model: each chunk's k costs compute time and link time alone.

Ignoring how the lanes interleave (dependencies, query layers, merged transfers), the request is a
two-resource knapsack: choose k_c per chunk to minimise max(compute + a, link + b). A dynamic
programme over chunks keeps the Pareto front of (compute, link) totals, thinned to one point per
bucket of compute time, and returns the k vectors nearest that optimum for the exact timeline to judge.
"""

from __future__ import annotations

import numpy as np

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
        sums: dict[int, float] = {}
        for x in reversed(ks):  # from the top: the link sums of lower k build on those above
            n_cmds = (x - 1) // g - p // g + 1 if x > p else 0
            comp = (cum[x] - cum[p] + n_cmds * ev.launch_s) * scale
            opts.append((comp, _link_s(ev, c, x, snap, target_bytes, fixed, per_byte, sums), x))
        opts.reverse()
        options.append(opts)
    total = sum(max(o[0] for o in opts) for opts in options) or 1.0
    a0 = snap.compute_free_s + (sum(ev.query_s[snap.query_next :]) + ev.first_token_s) * scale
    b0 = snap.link_free_s + (ev.query_s[-1] + ev.first_token_s) * scale
    return front_seeds(options, total / BUCKETS, a0, b0, count)


def _link_s(ev: Evaluator, c: int, x: int, snap: Snapshot, target_bytes: float, fixed: float, per_byte: float,
            sums: dict[int, float]) -> float:  # fmt: skip
    """Link seconds of chunk c's transfers from layer x on: `sum(fixed + n * per_byte)` over `ev._pieces` in
    their order, each cut's sum built from the one it extends (the same additions, in the same order)."""
    pieces = ev._pieces(c, x, snap, target_bytes)
    if not pieces:
        return 0
    if not ev.top_down:
        return sum(fixed + n * per_byte for _, _, n in pieces)
    lo, hi, n = pieces[-1]  # the cut from x is the cut from hi, then this piece
    got = sums.get(lo)
    if got is None:
        got = sums[lo] = _link_s(ev, c, hi, snap, target_bytes, fixed, per_byte, sums) + (fixed + n * per_byte)
    return got


def front_seeds(options: list[list[tuple[float, float, int]]], width: float, a0: float, b0: float,
                count: int) -> list[list[int]]:  # fmt: skip
    """The DP over chunks of `options` ((compute s, link s, k) per chunk), thinned to a Pareto point per
    `width` of compute, ranked by max(a0 + compute, b0 + link): the points `front_seeds_plain` keeps, found with
    whole-array steps (ties broken as its tuple sort breaks them: by k in lexicographic order)."""
    comp, link = np.zeros(1), np.zeros(1)
    rank = np.zeros(1, dtype=np.int64)  # each point's k, ranked lexicographically among the front's
    steps: list[tuple[np.ndarray, np.ndarray]] = []  # per chunk: each kept point's parent and its option
    for opts in options:  # the options of a chunk come in ascending k
        oc = np.array([o[0] for o in opts], dtype=float)
        ol = np.array([o[1] for o in opts], dtype=float)
        m = len(opts)
        raw_c = (comp[:, None] + oc[None, :]).ravel()  # point-major, as the plain DP's merged list
        raw_l = (link[:, None] + ol[None, :]).ravel()
        order = np.lexsort((raw_l, raw_c))
        mc, ml = raw_c[order], raw_l[order]
        if len(mc) > 1 and ((mc[1:] == mc[:-1]) & (ml[1:] == ml[:-1])).any():  # ties: by k, lexicographic
            tie = (rank[:, None] * m + np.arange(m)[None, :]).ravel()
            order = np.lexsort((tie, raw_l, raw_c))
            mc, ml = raw_c[order], raw_l[order]
        best = np.minimum.accumulate(ml)
        keep = np.empty(len(ml), dtype=bool)  # not dominated by an earlier point
        keep[0] = True
        keep[1:] = ml[1:] < best[:-1]
        mc, ml, order = mc[keep], ml[keep], order[keep]
        bucket = np.trunc(mc / width)
        last = np.empty(len(mc), dtype=bool)  # the last point of each bucket of compute time
        last[-1] = True
        last[:-1] = bucket[:-1] != bucket[1:]
        comp, link, order = mc[last], ml[last], order[last]
        parent, xi = order // m, order % m
        lexical = rank[parent] * m + xi  # (*k, x) in lexicographic order
        rank = np.empty(len(comp), dtype=np.int64)
        rank[np.argsort(lexical)] = np.arange(len(comp))
        steps.append((parent, np.array([o[2] for o in opts], dtype=np.int64)[xi]))
    key = np.maximum(a0 + comp, b0 + link)
    out = []
    for i in np.argsort(key, kind="stable")[:count]:
        k, j = [], int(i)
        for parent, mx in reversed(steps):
            k.append(int(mx[j]))
            j = int(parent[j])
        out.append(k[::-1])
    return out


def front_seeds_plain(options: list[list[tuple[float, float, int]]], width: float, a0: float, b0: float,
                      count: int) -> list[list[int]]:  # fmt: skip
    """`front_seeds` with tuples and one sort per chunk (the plain form it must agree with)."""
    front: list[Point] = [(0.0, 0.0, ())]
    for opts in options:
        # (compute, link, k, x) sorts as (compute, link, (*k, x)) would (every k has the same length), and
        # only the points kept get their k extended
        merged = sorted([(a + ca, b + lb, k, x) for a, b, k in front for ca, lb, x in opts])
        front = [(comp, link, (*k, x)) for comp, link, k, x in _thin(merged, width)]
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
