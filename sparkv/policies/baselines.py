"""The baselines SparKV is measured against.

- `LocalOnly`: prefill the whole context on the device, chunk by chunk.
- `StreamOnly`: fetch every cell (CacheGen without its codec choice), layer-major so the query's
  prefill can follow the layers as they land.
- `Bidirectional` (Cake): compute whole chunks from the front while streaming whole chunks from the
  back until the two meet; it adapts to the link by construction.
- `StaticSplit`: the meeting point is fixed before the request from the expected bandwidth.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from sparkv.core.progress import CellState
from sparkv.core.request import CellBlock
from sparkv.policies.base import RequestContext
from sparkv.policies.tracking import TrackingPolicy


@lru_cache(maxsize=4096)
def _block(chunk_lo: int, chunk_hi: int, layer_lo: int, layer_hi: int) -> CellBlock:
    """A shared `CellBlock` (immutable): a look-up costs a fifth of building one."""
    return CellBlock(chunk_lo, chunk_hi, layer_lo, layer_hi)


class LocalOnly(TrackingPolicy):
    name = "local"

    def __init__(self) -> None:
        super().__init__()
        self._front = 0  # chunks [0, front) have started computing (a computed prefix never shrinks)

    def on_begin(self, ctx: RequestContext) -> None:
        self._front = 0

    def next_compute(self, now_s: float) -> CellBlock | None:
        progress = self._progress()
        c = self._front
        while c < progress.num_chunks and progress.computed_prefix[c] != 0:
            c += 1
        self._front = c
        return _block(c, c + 1, 0, progress.num_layers) if c < progress.num_chunks else None


class StreamOnly(TrackingPolicy):
    """Fetch `layers_per_transfer` layers of every chunk per transfer, in layer order."""

    name = "stream"
    keeps_partial_transfers = True  # a layer missing again is fetched from its first missing chunk

    def __init__(self, layers_per_transfer: int = 1) -> None:
        super().__init__()
        if layers_per_transfer <= 0:
            raise ValueError(f"layers_per_transfer must be positive, got {layers_per_transfer}")
        self.layers_per_transfer = layers_per_transfer
        self._next_layer = 0
        self._complete = 0  # layers [0, complete) are present (a present cell stays present)

    def on_begin(self, ctx: RequestContext) -> None:
        self._next_layer = 0
        self._complete = 0

    def next_fetch(self, now_s: float) -> CellBlock | None:
        progress = self.progress
        assert progress is not None  # `schedule` checked it
        # the first layer not yet complete, up to the next one to fetch: that next layer, or after a failed
        # transfer the layer missing again (only layers already fetched need a look)
        lo, next_layer = self._complete, self._next_layer
        while lo < next_layer and progress.layer_complete(lo):
            lo += 1
        self._complete = lo
        if lo >= progress.num_layers:
            return None
        hi = min(lo + self.layers_per_transfer, progress.num_layers)
        if lo < next_layer and progress.present_per_layer[lo]:  # lost after a partial delivery
            state, c = progress.state, 0
            while c < progress.num_chunks and state[c][lo] != CellState.MISSING:
                c += 1
            if c == progress.num_chunks:  # its missing cells are being computed
                return None
            end = c + 1
            while end < progress.num_chunks and state[end][lo] == CellState.MISSING:
                end += 1
            return _block(c, end, lo, lo + 1)  # its first run of missing cells, one layer
        self._next_layer = hi
        return _block(0, progress.num_chunks, lo, hi)

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "layers_per_transfer": self.layers_per_transfer}


class _MeetInTheMiddle(TrackingPolicy):
    """Whole chunks computed from the front, whole chunks streamed from the back."""

    keeps_partial_transfers = True  # what a failed transfer left missing is fetched again, nothing more

    def __init__(self) -> None:
        super().__init__()
        self.front = 0  # next chunk to compute
        self.back = 0  # one past the next chunk to stream
        self.retry: list[CellBlock] = []  # blocks whose transfer failed, to fetch again

    def on_begin(self, ctx: RequestContext) -> None:
        self.front = 0
        self.back = ctx.request.num_chunks
        self.retry = []

    def on_fetch_lost(self, block: CellBlock) -> None:
        self.retry.append(block)

    def meeting_allows_compute(self) -> bool:
        return self.front < self.back

    def meeting_allows_fetch(self) -> bool:
        return self.front < self.back

    def next_compute(self, now_s: float) -> CellBlock | None:
        if not self.meeting_allows_compute():
            return None
        block = _block(self.front, self.front + 1, 0, self._progress().num_layers)
        self.front += 1
        return block

    def next_fetch(self, now_s: float) -> CellBlock | None:
        if self.retry:
            return self.retry.pop()
        if not self.meeting_allows_fetch():
            return None
        self.back -= 1
        return _block(self.back, self.back + 1, 0, self._progress().num_layers)


class Bidirectional(_MeetInTheMiddle):
    name = "cake"


class StaticSplit(_MeetInTheMiddle):
    """Chunks [0, m) computed, [m, C) streamed, m chosen up front so both sides take equal time."""

    name = "static"

    def __init__(self) -> None:
        super().__init__()
        self.split = 0

    def on_begin(self, ctx: RequestContext) -> None:
        super().on_begin(ctx)
        costs = ctx.costs
        compute = costs.compute_cell_s.sum(axis=1) + costs.compute_launch_s  # [C] whole chunk, s
        chunk_bytes = costs.cell_bytes.sum(axis=1)
        fetch = costs.transfer_fixed_s + chunk_bytes * (1.0 / costs.bandwidth_prior_bps + costs.install_s_per_byte)
        front = np.concatenate(([0.0], np.cumsum(compute)))  # front[m]: compute chunks [0, m)
        back = np.concatenate((np.cumsum(fetch[::-1])[::-1], [0.0]))  # back[m]: stream chunks [m, C)
        best = int(np.argmin(np.maximum(front, back)))
        self.split = best

    def meeting_allows_compute(self) -> bool:
        return self.front < self.split

    def meeting_allows_fetch(self) -> bool:
        return self.back > self.split

    def stats(self) -> dict[str, Any]:
        return {"split_chunk": self.split}
