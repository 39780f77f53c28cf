"""Choose k_c for every chunk (layers [0, k_c) computed, the rest streamed) to minimise predicted TTFT.

Search, on the exact timeline of `planner_model.Evaluator`:

1. the cut family: chunks before m computed fully, chunk m up to some layer group, later chunks
   streamed (what a fluid optimum looks like, since compute cost grows with position while bytes do
   not); bisection finds where compute and link finish together, then a window around it is scored;
2. local search from the best cut: single-chunk moves of one layer group and pair moves that shift
   one group between neighbouring chunks, first improvement, until none helps.

A migration cap (cells moved between paths relative to a current plan) bounds run-time re-plans.
Ties go to the plan computing fewer cells (compute costs more energy than the radio).
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sparkv.policies.planner_dp import dp_seeds
from sparkv.policies.planner_model import ComputeSpeed, Evaluator, LinkModel, Prediction, Snapshot, TimelineBound

_MISSING = 0

_TIE_S = 1e-9


@dataclass(frozen=True)
class Plan:
    k: tuple[int, ...]  # per chunk: layers [0, k_c) computed
    prediction: Prediction
    evaluations: int  # timelines scored to find it

    @property
    def cut(self) -> int:
        """Cells planned for computing (done ones included)."""
        return sum(self.k)


def available_layers(snap: Snapshot) -> list[int]:
    """Per chunk, its leading layers already present, computed or in flight (none is missing)."""
    out = []
    for row in snap.state:
        out.append(row.index(_MISSING) if _MISSING in row else len(row))
    return out


def feasible_k(k: list[int], lo: list[int], hi: list[int], avail: list[int]) -> list[int]:
    """k clipped so no compute command waits for a streamed cell: chunk c computes a layer only if every
    earlier chunk computes it too or already holds it (the link sends chunks last to first, so a cell an
    earlier chunk streams comes late). Cells already computed (`lo`) stay; in-flight limits (`hi`) hold."""
    out: list[int] = []
    cap = max(hi, default=0)
    for x, a, b, v in zip(k, lo, hi, avail, strict=True):  # max(a, min(x, cap, b)), without the calls
        if x > cap:
            x = cap
        if x > b:
            x = b
        if x < a:
            x = a
        out.append(x)
        if v > x:
            x = v
        if x < cap:
            cap = x
    return out


def _every_k(
    options: list[list[int]], lo: list[int], hi: list[int], avail: list[int] | None, floor: TimelineBound,
    limit: Callable[[], float],
) -> Iterator[tuple[list[int], bool]]:
    """Every k of `options` in `itertools.product` order, projected as `feasible_k` would (with `avail`),
    each with whether its bound exceeds `limit()` (read as each is reached, so it may fall as the caller
    finds better plans). A subtree whose bound, with every later chunk at its least, already exceeds
    the limit is left out whole: the caller changes nothing while the k it would hold go by."""
    C = len(options)
    work, missing = floor.work, floor.missing
    rest_w, rest_n = [0.0] * (C + 1), [0] * (C + 1)  # least work and bytes of chunks c.. (monotone in k)
    for c in range(C - 1, -1, -1):
        rest_w[c] = rest_w[c + 1] + work[c][lo[c]]
        rest_n[c] = rest_n[c + 1] + (missing[c][hi[c]] if missing else 0)
    k = [0] * C

    def walk(c: int, cap: int, w: float, n: int) -> Iterator[tuple[list[int], bool]]:
        if c == C:
            yield list(k), floor.of_sums(w, n) > limit()
            return
        if floor.of_sums(w + rest_w[c], n + rest_n[c]) > limit():
            return
        for x in options[c]:
            kc = max(lo[c], min(x, cap, hi[c])) if avail is not None else x
            k[c] = kc
            nxt = min(cap, max(kc, avail[c])) if avail is not None else cap
            yield from walk(c + 1, nxt, w + work[c][kc], n + (missing[c][kc] if missing else 0))

    yield from walk(0, max(hi, default=0), 0.0, 0)


class Planner:
    """Plans over one request's evaluator; `window` chunks either side of the cut take part in local search."""

    def __init__(
        self, evaluator: Evaluator, window: int = 3, max_passes: int = 8, dp: bool = True, exhaustive_max: int = 600,
        feasible: bool = False, prune: bool = True, quick_dp: bool = True,
    ) -> None:  # fmt: skip
        self.ev = evaluator
        self.prune = prune  # skip candidates whose timeline bound already loses (the same plans, found faster)
        self.feasible = feasible  # project every candidate onto dependency-feasible k (`feasible_k`)
        self.dp = dp
        self.quick_dp = quick_dp  # quick re-plans take the separable model's seeds too
        self.exhaustive_max = exhaustive_max  # score every k when there are at most this many
        self.window = window
        self.max_passes = max_passes

    def cut_k(self, p: int, lo: list[int], hi: list[int]) -> list[int]:
        """Member p (in layer groups, chunk-major) of the cut family, clipped to [lo, hi] per chunk."""
        bounds, groups, L = self.ev.bounds, len(self.ev.bounds) - 1, self.ev.L
        m, r = divmod(p, groups)
        k = [L if c < m else (bounds[r] if c == m else 0) for c in range(self.ev.C)]
        return [min(max(x, a), b) for x, a, b in zip(k, lo, hi, strict=True)]

    def plan(
        self,
        snap: Snapshot,
        link: LinkModel,
        speed: ComputeSpeed,
        target_bytes: float,
        current: list[int] | None = None,
        cap_cells: int | None = None,
        local_search: bool = True,
        quick: bool = False,
    ) -> Plan:
        """The best k found; `quick` (a run-time re-plan from `current`) searches only near the current cut."""
        lo, hi = snap.k_bounds()
        cache: dict[tuple[int, ...], Prediction] = {}
        projected: dict[tuple[int, ...], list[int]] = {}  # a candidate -> its dependency-feasible k

        avail = available_layers(snap) if self.feasible else None
        floor = self.ev.lower_bound(snap, link, speed, target_bytes) if self.prune else None

        def project(k: list[int]) -> None:
            if avail is not None:
                raw = tuple(k)
                got = projected.get(raw)
                if got is None:
                    got = projected[raw] = feasible_k(k, lo, hi, avail)
                k[:] = got

        def score(k: list[int]) -> Prediction:
            project(k)
            key = tuple(k)
            got = cache.get(key)
            if got is None:
                got = cache[key] = self.ev.predict(k, snap, link, speed, target_bytes)
            return got

        def rival(k: list[int], incumbent: Prediction | None) -> Prediction | None:
            """`score(k)`, or None when k's TTFT provably exceeds the incumbent's by more than a tie (so
            `better` would reject it): its timeline is then not predicted at all."""
            if incumbent is None or floor is None:
                return score(k)
            project(k)
            key = tuple(k)
            got = cache.get(key)
            if got is None and floor(k) > incumbent.ttft_s + _TIE_S:
                return None
            return got if got is not None else score(k)

        def allowed(k: list[int]) -> bool:
            if current is None or cap_cells is None:
                return True
            return sum(abs(a - b) for a, b in zip(k, current, strict=True)) <= cap_cells

        def better(a: list[int], pa: Prediction, b: list[int] | None, pb: Prediction | None) -> bool:
            if b is None or pb is None:
                return True
            if pa.ttft_s < pb.ttft_s - _TIE_S:
                return True
            return abs(pa.ttft_s - pb.ttft_s) <= _TIE_S and sum(a) < sum(b)

        best: list[int] | None = None
        best_pred: Prediction | None = None
        seeds: list[tuple[list[int], Prediction]] = []

        def offer(k: list[int], pred: Prediction | None = None) -> None:
            """A seed: kept, and the best so far if `better`. A quick plan descends from the seed of least
            TTFT only, which is never one the bound rules out, so those are dropped unscored."""
            nonlocal best, best_pred
            if pred is None:
                pred = rival(k, best_pred) if quick else score(k)
                if pred is None:
                    return
            seeds.append((k, pred))
            if better(k, pred, best, best_pred):
                best, best_pred = k, pred

        groups = len(self.ev.bounds) - 1
        cuts = range(self.ev.C * groups + 1)
        if quick and current is not None:
            p = self.cut_position(current)
            cuts = range(max(0, p - 2 * groups), min(len(cuts), p + 2 * groups + 1))
        families: list[tuple[range, Callable[[int], list[int]]]] = [
            (cuts, lambda p: self.cut_k(p, lo, hi)),  # whole chunks from the front
            (range(groups + 1), lambda j: self.layer_k(j, lo, hi)),  # the same layers of every chunk
        ]
        for positions, family in families[: 1 if quick else 2]:
            capped = current is not None and cap_cells is not None
            k, pred = self._family_best(positions, family, score, rival, allowed if capped else None, better)
            if k is not None and pred is not None:
                offer(k, pred)
        if current is not None:
            offer(list(current))
        if self.dp and (self.quick_dp or not quick):
            for k in dp_seeds(self.ev, snap, link, speed, target_bytes, lo, hi):
                if allowed(k):
                    offer(k)
        options = [sorted({a, b, *(x for x in self.ev.bounds if a <= x <= b)}) for a, b in zip(lo, hi, strict=True)]
        if math.prod(len(o) for o in options) <= self.exhaustive_max:  # small: score every k
            if quick and floor is not None and (current is None or cap_cells is None):
                def limit() -> float:
                    return best_pred.ttft_s + _TIE_S if best_pred is not None else math.inf

                for cand, beaten in _every_k(options, lo, hi, avail, floor, limit):
                    if not beaten:
                        key = tuple(cand)
                        offer(cand, cache.get(key) or score(cand))
            else:
                for combo in itertools.product(*options):
                    cand = list(combo)
                    if allowed(cand):
                        offer(cand)
        assert best is not None and best_pred is not None
        if local_search:
            for k, pred in sorted(seeds, key=lambda s: s[1].ttft_s)[: 1 if quick else 2]:
                k, pred = self._descend(k, pred, lo, hi, rival, allowed, better, quick)
                if better(k, pred, best, best_pred):
                    best, best_pred = k, pred
        return Plan(tuple(best), best_pred, len(cache))

    def cut_position(self, k: list[int]) -> int:
        """Position in the cut family nearest to k (whole chunks computed before its first partial chunk)."""
        groups = len(self.ev.bounds) - 1
        m = next((c for c in range(self.ev.C) if k[c] < self.ev.L), self.ev.C)
        if m == self.ev.C:
            return self.ev.C * groups
        return m * groups + bisect_right(self.ev.bounds, k[m]) - 1

    def layer_k(self, j: int, lo: list[int], hi: list[int]) -> list[int]:
        """Member j of the layer family: every chunk computes layer groups [0, j), clipped."""
        x = self.ev.bounds[j]
        return [min(max(x, a), b) for a, b in zip(lo, hi, strict=True)]

    @staticmethod
    def _family_best(
        positions: range,
        family: Callable[[int], list[int]],
        score: Callable[[list[int]], Prediction],
        rival: Callable[[list[int], Prediction | None], Prediction | None],
        allowed: Callable[[list[int]], bool] | None,
        better: Callable[[list[int], Prediction, list[int] | None, Prediction | None], bool],
    ) -> tuple[list[int] | None, Prediction | None]:
        """Bisect a family ordered by computed cells for where compute and link end together; score around it."""
        valid = list(positions) if allowed is None else [p for p in positions if allowed(family(p))]
        if not valid:
            return None, None
        a, b = 0, len(valid) - 1
        while a < b:
            mid = (a + b) // 2
            pred = score(family(valid[mid]))
            if pred.compute_end_s >= pred.link_end_s:
                b = mid
            else:
                a = mid + 1
        best: list[int] | None = None
        best_pred: Prediction | None = None
        for i in range(max(0, a - 2), min(len(valid), a + 3)):
            k = family(valid[i])
            got = rival(k, best_pred)
            if got is not None and better(k, got, best, best_pred):
                best, best_pred = k, got
        return best, best_pred

    def _descend(
        self,
        k: list[int],
        pred: Prediction,
        lo: list[int],
        hi: list[int],
        rival: Callable[[list[int], Prediction | None], Prediction | None],
        allowed: Callable[[list[int]], bool],
        better: Callable[[list[int], Prediction, list[int], Prediction], bool],
        quick: bool = False,
    ) -> tuple[list[int], Prediction]:
        """First-improvement local search over one-group moves near the cut."""
        bounds, C = self.ev.bounds, self.ev.C
        window = min(self.window, 2) if quick else self.window
        for _ in range(3 if quick else self.max_passes):
            improved = False
            m = next((c for c in range(C) if k[c] < self.ev.L), C - 1)
            chunks = range(max(0, m - window), min(C, m + window + 1))
            for cand in self._moves(k, chunks, lo, hi, bounds):
                if not allowed(cand):
                    continue
                p = rival(cand, pred)
                if p is not None and better(cand, p, k, pred):
                    k, pred, improved = cand, p, True
                    break
            if not improved:
                break
        return k, pred

    @staticmethod
    def _moves(k: list[int], chunks: range, lo: list[int], hi: list[int], bounds: list[int]) -> Iterator[list[int]]:
        """Neighbours of k, nearest first: one chunk by one group, one group between two chunks, and a
        whole prefix or suffix of chunks by one group."""

        def up(x: int) -> int:
            return bounds[bisect_right(bounds, x)] if x < bounds[-1] else x

        def down(x: int) -> int:
            return bounds[bisect_left(bounds, x) - 1] if x > 0 else x

        seen = {tuple(k)}

        def fresh(cand: list[int]) -> bool:
            key = tuple(cand)
            if key in seen:
                return False
            seen.add(key)
            return True

        for c in chunks:
            for nk in (up(k[c]), down(k[c])):
                if nk != k[c] and lo[c] <= nk <= hi[c]:
                    cand = [*k[:c], nk, *k[c + 1 :]]
                    if fresh(cand):
                        yield cand
        for gap in range(1, len(chunks)):
            for c in chunks:
                d = c + gap
                if d not in chunks:
                    continue
                for a, b in ((up(k[c]), down(k[d])), (down(k[c]), up(k[d]))):
                    if a != k[c] and b != k[d] and lo[c] <= a <= hi[c] and lo[d] <= b <= hi[d]:
                        cand = list(k)
                        cand[c], cand[d] = a, b
                        if fresh(cand):
                            yield cand
        n = len(k)
        for c in chunks:
            for step in (up, down):
                for span in (range(c, n), range(c + 1)):
                    cand = list(k)
                    for x in span:
                        cand[x] = min(max(step(k[x]), lo[x]), hi[x])
                    if fresh(cand):
                        yield cand
