"""A base for policies: keeps the request's cell states and the fetch in flight up to date from events."""

from __future__ import annotations

from typing import Any

from sparkv.core.events import (
    BandwidthSample,
    Cancel,
    Command,
    Compute,
    ComputeDone,
    Event,
    Fetch,
    QueryLayerDone,
    QueryLayerStarted,
    ReadDone,
    ReadLocal,
    RequestStarted,
    Resource,
    Tick,
    TransferCancelled,
    TransferDone,
    TransferFailed,
)
from sparkv.core.progress import CellState, RequestProgress
from sparkv.core.request import CellBlock
from sparkv.policies.base import RequestContext

# module constants: an enum member look-up is slow
_LINK, _COMPUTE, _DISK = Resource.LINK, Resource.COMPUTE, Resource.DISK
# event types that change no cell state (exact types: a subclass takes the general path)
_NO_BOOKKEEPING = frozenset({BandwidthSample, QueryLayerStarted, QueryLayerDone, RequestStarted, Tick})


class TrackingPolicy:
    """Subclasses implement `next_fetch` and `next_compute` (and `next_read` to use the local disk); this
    class does the bookkeeping."""

    name = "tracking"
    max_fetch_failures = 2  # consecutive failed transfers before the link is given up

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # hooks a class leaves empty are not called (a simulated request calls them hundreds of times)
        cls._reacts = cls.on_event is not TrackingPolicy.on_event
        cls._loses = cls.on_fetch_lost is not TrackingPolicy.on_fetch_lost
        # what `update` does nothing with: events without bookkeeping, unless `on_event` wants to see them
        cls.ignored_events = frozenset() if cls._reacts else _NO_BOOKKEEPING
        cls._cancels = cls.maybe_cancel is not TrackingPolicy.maybe_cancel
        cls._computes = cls.next_compute is not TrackingPolicy.next_compute
        cls._fetches = cls.next_fetch is not TrackingPolicy.next_fetch
        cls._reads = cls.next_read is not TrackingPolicy.next_read

    _reacts = _loses = _cancels = _computes = _fetches = _reads = False  # which hooks the class overrides
    # see `sparkv.policies.base`: a subclass that does not react to events decides nothing from samples,
    # ticks or query layers (its mirror of the query layers then lags in runs that keep no log)
    ignored_events: frozenset[type] = _NO_BOOKKEEPING
    tick_s: float | None = None
    keeps_partial_transfers: bool = False  # see `sparkv.policies.base.Policy`

    def __init__(self) -> None:
        self.ctx: RequestContext | None = None
        self.progress: RequestProgress | None = None
        self.in_flight: CellBlock | None = None
        self.computing: CellBlock | None = None
        self.reading: CellBlock | None = None  # the read from local disk in progress
        self.local_chunks: frozenset[int] = frozenset()  # chunks this policy reads from local disk
        self.failed_fetches = 0
        self.link_dead = False  # after repeated failures: compute whatever is missing
        self.query_running: int | None = None  # the query layer the engine is running, if any

    # ---- Policy protocol ----

    def begin(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.progress = RequestProgress(ctx.request.num_chunks, ctx.model.num_layers)
        self.in_flight = None
        self.computing = None
        self.reading = None
        local = ctx.costs.local
        self.local_chunks = frozenset(local.chunks) if local is not None and self._reads else frozenset()
        self.failed_fetches = 0
        self.link_dead = False
        self.query_running = None
        self.on_begin(ctx)

    def update(self, event: Event) -> None:
        progress = self.progress
        if progress is None:
            raise self._not_begun()
        kind = type(event)
        if kind is QueryLayerDone:
            progress.query_layers_done = event.layer + 1  # type: ignore[union-attr]
            self.query_running = None
        elif kind is QueryLayerStarted:
            self.query_running = event.layer  # type: ignore[union-attr]
        elif kind not in _NO_BOOKKEEPING:  # samples and ticks, sent by the hundred, skip it
            self._track(event, progress)
        if self._reacts:
            self.on_event(event)

    def _track(self, event: Event, progress: RequestProgress) -> None:
        """`update`'s bookkeeping for any event (subclasses of the event types included)."""
        if isinstance(event, TransferDone):
            progress.finish(event.block)
            self.in_flight = None
            self.failed_fetches = 0
        elif isinstance(event, (TransferCancelled, TransferFailed)):
            progress.abort_fetch(event.block)
            self.in_flight = None
            lost: tuple[CellBlock, ...] = (event.block,)
            if isinstance(event, TransferFailed):
                if event.delivered:  # parts that arrived whole before the failure are present
                    for part in event.delivered:
                        progress.start_fetch(part)
                        progress.finish(part)
                    lost = event.block.split_after(sum(p.num_cells for p in event.delivered))[1]
                self.failed_fetches += 1
                self.link_dead = self.link_dead or self.failed_fetches >= self.max_fetch_failures
            if self._loses:
                for block in lost:
                    self.on_fetch_lost(block)
        elif isinstance(event, ComputeDone):
            progress.finish(event.block)
            self.computing = None
        elif isinstance(event, ReadDone):
            progress.finish(event.block)
            self.reading = None

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]:
        progress = self.progress
        if progress is None:
            raise self._not_begun()
        if not idle and (self.in_flight is None or not self._cancels):
            return ()  # both lanes busy and nothing to cancel
        commands: tuple[Command, ...] = ()  # grown by concatenation: most calls return none or one
        if self.in_flight is not None and self._cancels:
            cancel = self.maybe_cancel(now_s)
            if cancel is not None:
                commands = (Cancel(cancel),)
        if _COMPUTE in idle and self.computing is None and (self._computes or self.link_dead):
            block = self.fallback_compute() if self.link_dead else self.next_compute(now_s)
            if block is not None:
                progress.start_compute(block)
                self.computing = block
                commands += (Compute(block),)
        if _LINK in idle and self.in_flight is None and self._fetches and not self.link_dead:
            block = self.next_fetch(now_s)
            if block is not None:
                progress.start_fetch(block)
                self.in_flight = block
                commands += (Fetch(block),)
        if self._reads and _DISK in idle and self.reading is None:
            block = self.next_read(now_s)
            if block is not None:
                progress.start_fetch(block)
                self.reading = block
                commands += (ReadLocal(block),)
        return commands

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    def stats(self) -> dict[str, Any]:
        return {}

    # ---- hooks ----

    def on_begin(self, ctx: RequestContext) -> None:
        """Plan once the request is known."""

    def on_event(self, event: Event) -> None:
        """React to an event after the bookkeeping."""

    def on_fetch_lost(self, block: CellBlock) -> None:
        """A fetch of `block` failed or was cancelled: its cells are missing again (after the bookkeeping).
        After a partial delivery it is called once per block of cells still missing."""

    def next_fetch(self, now_s: float) -> CellBlock | None:
        return None

    def next_compute(self, now_s: float) -> CellBlock | None:
        return None

    def next_read(self, now_s: float) -> CellBlock | None:
        """The next block to read from local disk (only cells on it, all missing), or None."""
        return None

    def maybe_cancel(self, now_s: float) -> CellBlock | None:
        """The in-flight block to cancel now, or None."""
        return None

    def fallback_compute(self) -> CellBlock | None:
        """With the link given up: compute the first chunk that still misses cells, far enough (a chunk this
        policy reads from local disk is left to the disk)."""
        progress = self._progress()
        for c in range(progress.num_chunks):
            if c in self.local_chunks:
                continue
            row = progress.state[c]
            missing = [layer for layer, s in enumerate(row) if s == CellState.MISSING]
            if missing:
                block = CellBlock.one(c, progress.computed_prefix[c], missing[-1] + 1)
                return block if progress.can_compute(block) else None
        return None

    # ---- helpers ----

    def _progress(self) -> RequestProgress:
        if self.progress is None:
            raise self._not_begun()
        return self.progress

    def _not_begun(self) -> RuntimeError:
        return RuntimeError(f"policy {self.name}: update/schedule called before begin")

    def _context(self) -> RequestContext:
        if self.ctx is None:
            raise RuntimeError(f"policy {self.name}: used before begin")
        return self.ctx
