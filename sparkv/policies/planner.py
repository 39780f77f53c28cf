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

from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass

from sparkv.policies.planner_model import ComputeSpeed, Evaluator, LinkModel, Prediction, Snapshot

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


class Planner:
    """Plans over one request's evaluator; `window` chunks either side of the cut take part in local search."""

    def __init__(self, evaluator: Evaluator, window: int = 3, max_passes: int = 8) -> None:
        self.ev = evaluator
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
    ) -> Plan:
        lo, hi = snap.k_bounds()
        cache: dict[tuple[int, ...], Prediction] = {}

        def score(k: list[int]) -> Prediction:
            key = tuple(k)
            if key not in cache:
                cache[key] = self.ev.predict(k, snap, link, speed, target_bytes)
            return cache[key]

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

        n_pos = self.ev.C * (len(self.ev.bounds) - 1)
        if current is None or cap_cells is None:
            valid = list(range(n_pos + 1))
        else:
            valid = [p for p in range(n_pos + 1) if allowed(self.cut_k(p, lo, hi))]
        if not valid:  # the current plan is not in the family: stay with it
            assert current is not None
            return Plan(tuple(current), score(current), len(cache))
        # bisection: first valid position where compute ends no earlier than the link
        a, b = 0, len(valid) - 1
        while a < b:
            mid = (a + b) // 2
            pred = score(self.cut_k(valid[mid], lo, hi))
            if pred.compute_end_s >= pred.link_end_s:
                b = mid
            else:
                a = mid + 1
        best: list[int] | None = None
        best_pred: Prediction | None = None
        candidates = [valid[i] for i in range(max(0, a - 3), min(len(valid), a + 3))]
        if current is not None:
            candidates.append(-1)
        for p in candidates:
            k = list(current) if p < 0 and current is not None else self.cut_k(p, lo, hi)
            pred = score(k)
            if better(k, pred, best, best_pred):
                best, best_pred = k, pred
        assert best is not None and best_pred is not None
        if local_search:
            best, best_pred = self._descend(best, best_pred, lo, hi, score, allowed, better)
        return Plan(tuple(best), best_pred, len(cache))

    def _descend(
        self,
        k: list[int],
        pred: Prediction,
        lo: list[int],
        hi: list[int],
        score: Callable[[list[int]], Prediction],
        allowed: Callable[[list[int]], bool],
        better: Callable[[list[int], Prediction, list[int], Prediction], bool],
    ) -> tuple[list[int], Prediction]:
        """First-improvement local search over one-group moves near the cut."""
        bounds, C = self.ev.bounds, self.ev.C
        for _ in range(self.max_passes):
            improved = False
            m = next((c for c in range(C) if k[c] < self.ev.L), C - 1)
            chunks = range(max(0, m - self.window), min(C, m + self.window + 1))
            for cand in self._moves(k, chunks, lo, hi, bounds):
                if not allowed(cand):
                    continue
                p = score(cand)
                if better(cand, p, k, pred):
                    k, pred, improved = cand, p, True
                    break
            if not improved:
                break
        return k, pred

    @staticmethod
    def _moves(k: list[int], chunks: range, lo: list[int], hi: list[int], bounds: list[int]) -> list[list[int]]:
        def up(x: int) -> int:
            return bounds[bisect_right(bounds, x)] if x < bounds[-1] else x

        def down(x: int) -> int:
            return bounds[bisect_left(bounds, x) - 1] if x > 0 else x

        out = []
        for c in chunks:
            for nk in (up(k[c]), down(k[c])):
                if nk != k[c] and lo[c] <= nk <= hi[c]:
                    out.append([*k[:c], nk, *k[c + 1 :]])
            if c + 1 in chunks:
                for a, b in ((up(k[c]), down(k[c + 1])), (down(k[c]), up(k[c + 1]))):
                    if a != k[c] and b != k[c + 1] and lo[c] <= a <= hi[c] and lo[c + 1] <= b <= hi[c + 1]:
                        out.append([*k[:c], a, b, *k[c + 2 :]])
        return out
