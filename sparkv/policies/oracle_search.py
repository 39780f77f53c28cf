"""The oracle's search: candidate schedules from the planner and the baselines, judged by exact replay.

The planner (`planner.Planner` on `planner_model.Evaluator`, with the future link, the device's
availability and the receive slowdown) proposes a k vector per planning granularity and transfer
size. Each becomes a `Schedule` by the planner's order rule; the baselines' schedules join them (local
prefill chunk by chunk, layer-major streaming, and whole chunks computed from the front while whole
chunks stream from the back, for every meeting point, which is what cake and the static split run).
Every candidate is replayed with the simulator's arithmetic (`oracle_replay.Replayer`: server
queueing, noise and the slowdown's exact rule included), and the best few are improved by local
search on the replay itself, one layer-group move at a time, within a fixed number of replays.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from sparkv.core.costs import CostTable
from sparkv.core.request import CellBlock
from sparkv.policies.oracle_replay import Replayed, Replayer, Schedule
from sparkv.policies.planner import Plan, Planner
from sparkv.policies.planner_model import ComputeSpeed, Evaluator, LinkModel, Snapshot

SHAKE_SEED = 0  # the random moves are seeded: same request, same plan
SHAKE_TARGETS_S = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, math.inf)  # transfer sizes the replayed moves try, s at the prior
EXHAUSTIVE_REPLAYS = 1000  # replay every (non-increasing k, transfer size) when there are at most this many
EXHAUSTIVE_MAX = 3000  # monotone k vectors scored exhaustively (on the planner's timeline) up to this many
_TIE = 1e-12  # relative: TTFTs closer than this are equal, and the plan computing fewer cells wins


def baseline_schedules(num_chunks: int, num_layers: int) -> list[Schedule]:
    """What local, stream (one layer per transfer), cake and static run, as fixed schedules."""
    C, L = num_chunks, num_layers
    whole = [CellBlock.one(c, 0, L) for c in range(C)]
    layers = tuple(CellBlock(0, C, x, x + 1) for x in range(L))
    out = [Schedule(tuple(whole), (), "local"), Schedule((), layers, "stream")]
    for m in range(C):  # chunks [0, m) computed, [m, C) streamed from the back, whole chunks each
        out.append(Schedule(tuple(whole[:m]), tuple(CellBlock.one(c, 0, L) for c in range(C - 1, m - 1, -1)),
                            f"meet@{m}"))  # fmt: skip
    return out


@dataclass
class Found:
    """The best schedule so far and how it was found."""

    schedule: Schedule
    replayed: Replayed
    cells_computed: int
    k: tuple[int, ...] | None = None  # the planner's k when it came from the planner
    group: int = 0
    target_bytes: float = math.inf
    variant: int = 0  # bits: 1 one compute command per chunk (its whole prefix), 2 a chunk's layers bottom up
    stats: dict[str, float | int | str] = field(default_factory=dict)

    def beats(self, other: Found | None) -> bool:
        if other is None:
            return True
        a, b = self.replayed.ttft_s, other.replayed.ttft_s
        if a < b - _TIE * max(b, 1.0):
            return True
        return abs(a - b) <= _TIE * max(b, 1.0) and self.cells_computed < other.cells_computed


class OracleSearch:
    """One request's search from a fresh start; `best()` returns the schedule the oracle runs."""

    def __init__(
        self, costs: CostTable, replayer: Replayer, link: LinkModel, speed: ComputeSpeed,
        groups: tuple[int, ...], targets_bytes: tuple[float, ...], window: int, refine_replays: int,
        shake_moves: int = 300,
    ) -> None:  # fmt: skip
        self.rate = max(costs.bandwidth_prior_bps, 1.0)  # bytes/s the transfer sizes are counted in
        self.costs, self.replayer, self.link, self.speed = costs, replayer, link, speed
        self.C, self.L = costs.num_chunks, costs.num_layers
        self.groups, self.targets, self.window = groups, targets_bytes, window
        self.refine_replays = refine_replays
        self.shake_moves = shake_moves
        self.snap = Snapshot.fresh(self.C, self.L)
        self.evaluators = {g: Evaluator(costs, g) for g in groups}
        self.bottom_up = {g: Evaluator(costs, g, top_down=False) for g in groups}
        self.seen: dict[tuple[object, ...], Found] = {}

    def _from_k(self, k: tuple[int, ...], group: int, target: float, variant: int = 0) -> Found:
        """The planner's order rule for k (at `variant`, see `Found`), replayed (cached)."""
        key = (k, group, target, variant)
        got = self.seen.get(key)
        if got is None:
            ev = self.bottom_up[group] if variant & 2 else self.evaluators[group]
            comp, link = ev.blocks(list(k), self.snap, target)
            if variant & 1:
                comp = [CellBlock.one(c, 0, x) for c, x in enumerate(k) if x > 0]
            label = f"planner g={group}" + (" whole-chunk compute" if variant & 1 else "") + (
                " bottom-up link" if variant & 2 else "")  # fmt: skip
            schedule = Schedule(tuple(comp), tuple(link), label)
            got = Found(schedule, self.replayer.run(schedule), sum(k), k, group, target, variant)
            self.seen[key] = got
        return got

    def _variants(self, found: Found) -> Found:
        """The best of `found`'s order variants."""
        best = found
        if found.k is not None:
            for variant in range(4):
                f = self._from_k(found.k, found.group, found.target_bytes, variant)
                if f.beats(best):
                    best = f
        return best

    def _split_at_link_end(self, found: Found) -> Found:
        """`found` with the compute command running as the link goes idle cut in two, at each layer in turn:
        the simulator slows a command by the receive slowdown when a transfer is in flight as it starts, so a
        second part started after the last transfer runs at full speed (for one more launch)."""
        if self.replayer.fs.contention.neutral or not found.schedule.link:
            return found
        run = self.replayer.run(found.schedule, record=True)
        comp = found.schedule.compute
        i = sum(1 for t in run.compute_starts_s if t < run.link_end_s) - 1
        if not 0 <= i < len(comp):
            return found
        block, best = comp[i], found
        for cut in range(block.layer_lo + 1, block.layer_hi):
            if block.chunk_hi - block.chunk_lo != 1:
                break
            parts = (
                CellBlock.one(block.chunk_lo, block.layer_lo, cut),
                CellBlock.one(block.chunk_lo, cut, block.layer_hi),
            )
            schedule = Schedule((*comp[:i], *parts, *comp[i + 1 :]), found.schedule.link,
                                found.schedule.label + " split at link end")  # fmt: skip
            f = Found(schedule, self.replayer.run(schedule), found.cells_computed, found.k, found.group,
                      found.target_bytes, found.variant)  # fmt: skip
            if f.beats(best):
                best = f
        return best

    def planner_candidates(self) -> list[Found]:
        """Per granularity: the planner's plan for each transfer size, and at the size whose plan predicts
        best, the best non-increasing k where there are few enough to score them all."""
        out: list[Found] = []
        for g in self.groups:
            ev = self.evaluators[g]
            planner = Planner(ev, window=self.window)
            plans = [(planner.plan(self.snap, self.link, self.speed, target), target) for target in self.targets]
            out.extend(self._from_k(plan.k, g, target) for plan, target in plans)
            plan, target = min(plans, key=lambda p: p[0].prediction.ttft_s)
            best = exhaustive_monotone(ev, self.snap, self.link, self.speed, target, plan)

            def predicted(k: tuple[int, ...], target: float, ev: Evaluator = ev) -> float:
                return ev.predict(list(k), self.snap, self.link, self.speed, target).ttft_s

            k, _ = shake(predicted, best.k, target, (target,), ev.bounds, self.L, self.shake_moves, self.window)
            out.extend(self._from_k(x, g, t) for x in {best.k, k} for t in self.targets)
        return out

    def best(self) -> Found:
        found = self.planner_candidates()
        for schedule in baseline_schedules(self.C, self.L):
            cells = sum(b.num_cells for b in schedule.compute)
            found.append(Found(schedule, self.replayer.run(schedule), cells))
        best: Found | None = None
        for f in found:
            if f.beats(best):
                best = f
        assert best is not None
        planned = sorted((f for f in found if f.k is not None), key=lambda f: f.replayed.ttft_s)
        planned = sorted({id(f): f for f in (self._variants(f) for f in planned[:4])}.values(),
                         key=lambda f: f.replayed.ttft_s) + planned[4:]  # fmt: skip
        for f in planned[:4]:
            if f.beats(best):
                best = f
        budget = self.refine_replays
        for start in planned[:2]:
            if budget <= 0:
                break
            improved, used = self._descend(start, budget)
            budget -= used
            if improved.beats(best):
                best = improved
        sizes = tuple(sorted({*self.targets, *(self.rate * s for s in SHAKE_TARGETS_S)}))
        for g in self.groups:  # a small request: every non-increasing k at every transfer size, replayed
            bounds = self.evaluators[g].bounds
            if count_monotone(self.C, len(bounds) - 1) * len(sizes) <= EXHAUSTIVE_REPLAYS:
                for vector in monotone_vectors(self.C, bounds):
                    for size in sizes:
                        f = self._from_k(tuple(vector), g, size)
                        if f.beats(best):
                            best = f
        if budget > 0 and best.k is not None:  # the rest of the budget: random moves, scored by replay
            group, variant = best.group, best.variant

            def replayed(k: tuple[int, ...], target: float) -> float:
                return self._from_k(k, group, target, variant).replayed.ttft_s

            bounds = self.evaluators[group].bounds
            moved, target = shake(replayed, best.k, best.target_bytes, sizes, bounds, self.L, budget, self.window)
            shaken = self._from_k(moved, group, target, variant)
            if shaken.beats(best):
                best = shaken
        best = self._split_at_link_end(self._variants(best))
        best.stats = {"source": best.schedule.label, "candidates": len(found), "replays": self.replayer.runs}
        return best

    def _descend(self, start: Found, budget: int) -> tuple[Found, int]:
        """First-improvement local search on replayed TTFT over the planner's one-group moves."""
        assert start.k is not None
        ev = self.evaluators[start.group]
        lo, hi = self.snap.k_bounds()
        cur, used = start, 0
        while used < budget:
            k = list(cur.k or ())
            m = next((c for c in range(self.C) if k[c] < self.L), self.C - 1)
            chunks = range(max(0, m - self.window), min(self.C, m + self.window + 1))
            improved = False
            for cand in Planner._moves(k, chunks, lo, hi, ev.bounds):
                if used >= budget:
                    break
                key = (tuple(cand), start.group, start.target_bytes, start.variant)
                used += key not in self.seen
                f = self._from_k(tuple(cand), start.group, start.target_bytes, start.variant)
                if f.beats(cur):
                    cur, improved = f, True
                    break
            if not improved:
                break
        return cur, used


def monotone_vectors(num_chunks: int, bounds: list[int]) -> list[list[int]]:
    """Every non-increasing k over the group boundaries (C(C + G, C) of them)."""
    n, g = num_chunks, len(bounds) - 1
    out = []
    for bars in combinations(range(n + g), n):  # stars and bars: n chunks over g + 1 levels
        levels = [b - i for i, b in enumerate(bars)]  # non-decreasing in [0, g]
        out.append([bounds[g - x] for x in levels])
    return out


def count_monotone(num_chunks: int, groups: int) -> int:
    return math.comb(num_chunks + groups, num_chunks)


def exhaustive_monotone(
    ev: Evaluator, snap: Snapshot, link: LinkModel, speed: ComputeSpeed, target: float, plan: Plan
) -> Plan:
    if count_monotone(ev.C, len(ev.bounds) - 1) > EXHAUSTIVE_MAX:
        return plan
    best = plan
    for k in monotone_vectors(ev.C, ev.bounds):
        pred = ev.predict(k, snap, link, speed, target)
        if pred.ttft_s < best.prediction.ttft_s - 1e-9:
            best = Plan(tuple(k), pred, best.evaluations + 1)
    return best


def shake(
    score: Callable[[tuple[int, ...], float], float], k: tuple[int, ...], target: float, targets: tuple[float, ...],
    bounds: list[int], num_layers: int, moves: int, window: int,
) -> tuple[tuple[int, ...], float]:  # fmt: skip
    """Hill climbing by `moves` random moves of (k, transfer size) scored by `score`: one to three chunks
    near the cut, each up or down by one to three layer groups, and now and then another transfer size
    from `targets` (seeded, so the same request gets the same plan). It escapes the local optima of
    one-group moves, where cells must leave the top layers of early chunks and join the bottom of a
    later one at once."""
    rng = np.random.default_rng(SHAKE_SEED)
    C, top = len(k), len(bounds) - 1
    level = [bisect_left(bounds, x) for x in k]
    best = score(k, target)
    sizes = rng.integers(0 if len(targets) > 1 else 1, 4, moves).tolist()  # chunks moved
    steps = rng.choice([-3, -2, -1, 1, 2, 3], (moves, 3)).tolist()
    picks = rng.random((moves, 4)).tolist()  # the last: the transfer size, moved a third of the time
    for size, step, pick in zip(sizes, steps, picks, strict=True):
        m = next((c for c in range(C) if bounds[level[c]] < num_layers), C - 1)
        a, b = max(0, m - window), min(C, m + window + 1)
        cand, t_cand = list(level), target
        if len(targets) > 1 and (size == 0 or pick[3] < 1 / 3):
            t_cand = targets[int(pick[3] * 3 % 1 * len(targets))] if size else targets[int(pick[3] * len(targets))]
        for j in range(size):
            c = a + int(pick[j] * (b - a))
            cand[c] = min(max(cand[c] + step[j], 0), top)
        if cand == level and t_cand == target:
            continue
        t = score(tuple(bounds[x] for x in cand), t_cand)
        if t < best - 1e-12:
            best, level, target = t, cand, t_cand
    return tuple(bounds[x] for x in level), target
