"""Read time of a disk as plain numbers: bandwidth by request size and queue depth, and a batch's seconds.

The arithmetic of `sparkv.cost_models.storage.StorageProfile` (which delegates here), kept in core so a
policy can predict disk reads from its cost table without importing the cost models. A batch of reads
issued together at queue depth q costs `batch_fixed_s` plus, per request, its size over the bandwidth at
that size and min(q, requests in the batch).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


def bracket(grid: Sequence[float], x: float) -> tuple[int, int, float]:
    """Indices (lo, hi) around x in an ascending grid and the log-space weight of hi (clamped at the ends)."""
    if x <= grid[0]:
        return 0, 0, 0.0
    if x >= grid[-1]:
        n = len(grid) - 1
        return n, n, 0.0
    hi = bisect_right(grid, x)
    lo = hi - 1
    w = (math.log(x) - math.log(grid[lo])) / (math.log(grid[hi]) - math.log(grid[lo]))
    return lo, hi, w


def interpolate_bps(sizes: Sequence[int], depths: Sequence[int], table: Sequence[Sequence[float]], size_bytes: int,
                    queue_depth: int) -> float:  # fmt: skip
    """Bandwidth at one request size and queue depth: log-log interpolation, flat beyond the grid, and below
    the smallest size that size's request rate."""
    s0, s1, ws = bracket(sizes, size_bytes)
    q0, q1, wq = bracket(depths, queue_depth)

    def lg(i: int, j: int) -> float:
        return math.log(table[i][j])

    low = (1 - wq) * lg(s0, q0) + wq * lg(s0, q1)
    high = (1 - wq) * lg(s1, q0) + wq * lg(s1, q1)
    bw = math.exp((1 - ws) * low + ws * high)
    if size_bytes < sizes[0]:
        bw *= size_bytes / sizes[0]
    return bw


def batch_read_s(bandwidth_bps: Callable[[int, int], float], batch_fixed_s: float, request_bytes: Sequence[int],
                 queue_depth: int) -> float:  # fmt: skip
    """Seconds to complete a batch of reads issued together at `queue_depth`."""
    n = len(request_bytes)
    if n == 0:
        return 0.0
    q = min(queue_depth, n)
    bw = bandwidth_bps
    if n > 8:  # most requests share a size: one bandwidth lookup per distinct size
        return batch_fixed_s + sum(b * k / bw(b, q) for b, k in Counter(request_bytes).items())
    return batch_fixed_s + sum(b / bw(b, q) for b in request_bytes)


@dataclass(frozen=True)
class ReadCurve:
    """A storage profile's read model alone: what a cost table carries for the disk lane."""

    name: str  # the storage profile it came from
    sizes_bytes: tuple[int, ...]
    queue_depths: tuple[int, ...]
    read_bps: tuple[tuple[float, ...], ...]  # [size][queue depth] -> bytes/s
    batch_fixed_s: float = 0.0
    _memo: dict[tuple[int, int], float] = field(default_factory=dict, compare=False, repr=False)

    def bandwidth_bps(self, size_bytes: int, queue_depth: int) -> float:
        key = (size_bytes, queue_depth)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = interpolate_bps(self.sizes_bytes, self.queue_depths, self.read_bps, size_bytes,
                                                    queue_depth)  # fmt: skip
        return hit

    def batch_s(self, request_bytes: Sequence[int], queue_depth: int) -> float:
        return batch_read_s(self.bandwidth_bps, self.batch_fixed_s, request_bytes, queue_depth)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "sizes_bytes": list(self.sizes_bytes), "queue_depths": list(self.queue_depths),
                "read_bps": [list(r) for r in self.read_bps], "batch_fixed_s": self.batch_fixed_s}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReadCurve:
        table = tuple(tuple(float(v) for v in row) for row in data["read_bps"])
        return cls(str(data["name"]), tuple(int(s) for s in data["sizes_bytes"]),
                   tuple(int(q) for q in data["queue_depths"]), table, float(data["batch_fixed_s"]))  # fmt: skip
