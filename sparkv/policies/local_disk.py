"""Baselines with a third source: cells kept on local disk are read, the rest loaded as the baseline does.

Each reads every local cell on the disk lane in the order compute and the query need them: layer by layer,
one read per run of consecutive local chunks. The baseline's own lanes leave the local chunks alone:

- `disk+local`: prefill the other chunks in order, each as far up its layers as the earlier chunks are
  present (a chunk after local ones follows the disk layer by layer instead of waiting for all of it);
- `disk+stream`: stream the other chunks' cells layer-major, one run of non-local chunks per transfer;
- `disk+cake`: compute from the front and stream from the back over the non-local chunks until they meet.

In a request with nothing on local disk each behaves as its baseline.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from sparkv.core.request import CellBlock
from sparkv.policies.base import RequestContext
from sparkv.policies.baselines import Bidirectional, LocalOnly, StreamOnly, _block
from sparkv.policies.tracking import TrackingPolicy


class DiskReads(TrackingPolicy):
    """The disk lane of a policy: every local cell, one layer of one run of local chunks per read."""

    def __init__(self) -> None:
        super().__init__()
        self.disk_q: deque[CellBlock] = deque()

    def on_begin(self, ctx: RequestContext) -> None:
        super().on_begin(ctx)
        local = ctx.costs.local
        runs = local.runs() if local is not None else []
        self.disk_q = deque(_block(a, b, layer, layer + 1) for layer in range(ctx.model.num_layers) for a, b in runs)

    def next_read(self, now_s: float) -> CellBlock | None:
        return self.disk_q.popleft() if self.disk_q else None

    def reachable(self, chunk: int, lo: int, hi: int) -> int:
        """The highest h <= hi such that layers [lo, h) of `chunk` may be computed now (lo if none)."""
        progress = self._progress()
        h = lo
        while h < hi and progress.can_compute(_block(chunk, chunk + 1, lo, h + 1)):
            h += 1
        return h


class DiskLocal(DiskReads, LocalOnly):
    name = "disk+local"

    def next_compute(self, now_s: float) -> CellBlock | None:
        progress = self._progress()
        L, c = progress.num_layers, self._front
        while c < progress.num_chunks and (c in self.local_chunks or progress.computed_prefix[c] == L):
            c += 1
        self._front = c
        if c == progress.num_chunks:
            return None
        lo = progress.computed_prefix[c]
        hi = self.reachable(c, lo, L)
        return _block(c, c + 1, lo, hi) if hi > lo else None


class DiskStream(DiskReads, StreamOnly):
    """Each layer group of the non-local chunks, one transfer per run of them; a lost transfer is sent again."""

    name = "disk+stream"
    keeps_partial_transfers = False

    def on_begin(self, ctx: RequestContext) -> None:
        super().on_begin(ctx)
        C, L, step = ctx.request.num_chunks, ctx.model.num_layers, self.layers_per_transfer
        runs: list[tuple[int, int]] = []
        for c in range(C):
            if c in self.local_chunks:
                continue
            if runs and runs[-1][1] == c:
                runs[-1] = (runs[-1][0], c + 1)
            else:
                runs.append((c, c + 1))
        self.link_q = deque(_block(a, b, lo, min(lo + step, L)) for lo in range(0, L, step) for a, b in runs)

    def on_fetch_lost(self, block: CellBlock) -> None:
        self.link_q.appendleft(block)

    def next_fetch(self, now_s: float) -> CellBlock | None:
        return self.link_q.popleft() if self.link_q else None


class DiskCake(DiskReads, Bidirectional):
    """Cake over the non-local chunks: the front chunk is computed as far as the earlier chunks are present."""

    name = "disk+cake"

    def __init__(self) -> None:
        super().__init__()
        self.current: int | None = None  # the front chunk being computed, claimed from the link

    def on_begin(self, ctx: RequestContext) -> None:
        super().on_begin(ctx)
        self.current = None

    def next_compute(self, now_s: float) -> CellBlock | None:
        progress = self._progress()
        L = progress.num_layers
        if self.current is None:
            while self.front < self.back and self.front in self.local_chunks:
                self.front += 1
            if self.front >= self.back:
                return None
            self.current, self.front = self.front, self.front + 1
        c = self.current
        lo = progress.computed_prefix[c]
        hi = self.reachable(c, lo, L)
        if hi == L:
            self.current = None
        return _block(c, c + 1, lo, hi) if hi > lo else None

    def next_fetch(self, now_s: float) -> CellBlock | None:
        if self.retry:
            return self.retry.pop()
        while self.back > self.front and self.back - 1 in self.local_chunks:
            self.back -= 1
        if self.back <= self.front:
            return None
        self.back -= 1
        return _block(self.back, self.back + 1, 0, self._progress().num_layers)

    def config(self) -> dict[str, Any]:
        return {"name": self.name}
