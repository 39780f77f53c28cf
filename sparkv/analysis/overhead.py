"""The executor's own overhead, read from a Result's timeline.

Every span on the path to the first token is real work (a transfer, a compute command, a query layer,
the first token). Time inside [0, TTFT] when no lane was busy is time the executor spent between them:
dispatching commands, waking threads, handing cells over. Any chain of dependent spans fits inside the
union of busy time, so this idle time is a lower bound on TTFT minus the critical path; for local-only
(one lane) and stream-only (the link, then the query) the two are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from sparkv.core.result import Result, Span


@dataclass(frozen=True)
class Overhead:
    ttft_s: float
    busy_s: float  # union of all spans, clipped to [0, TTFT]
    idle_s: float  # TTFT - busy_s: no lane working
    compute_gaps_s: float  # gaps between consecutive compute-lane spans (includes waiting for the link)

    @property
    def idle_pct(self) -> float:
        return 100.0 * self.idle_s / self.ttft_s if self.ttft_s > 0 else 0.0


def busy_union_s(spans: Sequence[Span], until_s: float) -> float:
    """Length of the union of the spans' intervals within [0, until_s]."""
    intervals = sorted((max(0.0, s.start_s), min(s.end_s, until_s)) for s in spans if s.start_s < until_s)
    total, cur_start, cur_end = 0.0, None, None
    for start, end in intervals:
        if end <= start:
            continue
        if cur_end is None or start > cur_end:
            if cur_start is not None and cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    if cur_start is not None and cur_end is not None:
        total += cur_end - cur_start
    return total


def overhead(result: Result) -> Overhead:
    """Idle and compute-gap time of one request's timeline up to its first token."""
    ttft = result.ttft_s
    busy = busy_union_s(result.spans, ttft)
    compute = sorted((s.start_s, s.end_s) for s in result.spans if s.lane == "compute" and s.start_s < ttft)
    gaps = sum(max(0.0, b[0] - a[1]) for a, b in pairwise(compute))
    return Overhead(ttft, busy, max(0.0, ttft - busy), gaps)
