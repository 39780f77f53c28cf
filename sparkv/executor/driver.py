"""Drive one real request: a policy's commands carried out by a link worker and a compute worker.

The request itself (events, commands, accounting, spans) is the shared `RequestEngine`'s, exactly as in
the simulator; this module is the real world's half: a clock and two workers. The link worker pulls
KV cells from the server and installs them into the model's cache as they arrive; the compute worker
runs layer-wise prefill, and the query's layers with priority as soon as each layer is complete, on the
caller's thread (see `RealDriver.run`); a control thread talks to the policy. Where some of the context's
KV is on local disk, a disk worker reads the blocks the policy asks for (`ReadFn`, O_DIRECT) and installs
them like streamed cells. Every
wait has a deadline: a request that cannot finish raises `ExecutionTimeout` instead of hanging.

Link faults, as a real link has them:
- a stall: no byte for `stall_s` while the compute lane is idle ends the transfer as failed ("stalled")
  at once, so the policy may compute those cells instead of waiting out the client's idle timeout;
- a fault after some cells arrived whole: with `keep_partial` they stay installed and are reported as
  `delivered` parts of the failed transfer (whole chunks of the block, then the first layers of one more
  chunk), so a policy that keeps partial transfers fetches only the rest. Off by default: the simulator
  models a failed transfer as losing its whole block, and the two worlds are compared on the same events;

- a server that cannot be reached (refused, reset before the first byte, busy): the link worker
  reconnects with exponential backoff (`backoff_s` doubling to `backoff_max_s`) for the same transfer
  until it connects, the policy cancels, a stall is declared or the transfer's deadline comes.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from sparkv.core.errors import UserError
from sparkv.core.request import CellBlock
from sparkv.core.result import Span
from sparkv.engine.request import Flight, RequestEngine, tail_ms
from sparkv.policies.base import Policy, RequestContext


class ExecutionTimeout(UserError):
    """The real request did not reach its first token before the request deadline."""


class CellSink(Protocol):
    """What the link worker writes streamed cells into, and the compute worker computes with."""

    def install(self, chunk: int, layer: int, k: torch.Tensor | np.ndarray, v: torch.Tensor | np.ndarray) -> None: ...

    def compute_block(self, block: CellBlock) -> None: ...

    def query_layer(self, layer: int) -> None: ...

    def first_token(self) -> int: ...


@dataclass(frozen=True)
class CellArrival:
    """One decoded cell as the client yields it."""

    chunk: int
    layer: int
    k: np.ndarray  # [kv_heads, tokens, head_dim]
    v: np.ndarray
    wire_bytes: int
    head_s: float | None = None  # perf_counter instant its first byte arrived, when the source knows it


# fetch(request_id, block, deadline_s) -> cells as they arrive; raises on faults (see `fault_reason`)
FetchFn = Callable[[int, CellBlock, float], Iterator[CellArrival]]
CancelFn = Callable[[int], None]
# read(block) -> (chunk, layer, K, V) of every cell of `block`, read from local disk
ReadFn = Callable[[CellBlock], Iterator[tuple[int, int, np.ndarray, np.ndarray]]]


@dataclass(frozen=True)
class DriverConfig:
    transfer_timeout_s: float = 120.0  # a single transfer may take at most this long
    request_timeout_s: float = 1800.0  # the whole request, to the first token
    poll_s: float = 0.25  # how often the control loop checks the deadline when no tick is due
    stall_s: float | None = 2.0  # no byte this long with the compute lane idle: the transfer failed
    keep_partial: bool = False  # report the cells of a failed transfer that arrived whole as delivered
    backoff_s: float = 0.05  # first wait before reconnecting to an unreachable server
    backoff_max_s: float = 1.0  # the wait doubles up to this


@dataclass
class _Job:
    """A transfer handed to the link worker."""

    request_id: int
    block: CellBlock
    cancelled: bool = False
    rx_bytes: int = 0  # wire bytes of whole cells received so far (written by the link worker)
    payload_sent: bool = False  # the engine was told the payload began (by the control thread only)
    started_s: float = field(default_factory=time.perf_counter)  # perf_counter instant it was handed over
    stalled: str | None = None  # why the control loop ended it as stalled
    wake: threading.Event = field(default_factory=threading.Event)  # cuts a reconnect backoff short


@dataclass
class DriverOutput:
    ttft_s: float
    first_token: int
    spans: list[Span]
    log: list[dict[str, Any]]
    faults: list[str]
    bytes_streamed: int = 0
    bytes_wasted: int = 0
    cells_streamed: int = 0
    cells_computed: int = 0
    stats: dict[str, float] = field(default_factory=dict)


def delivered_parts(block: CellBlock, cells: int) -> tuple[CellBlock, ...]:
    """The first `cells` cells of `block` in chunk-major order (the order they arrive), as sub-blocks."""
    return block.split_after(cells)[0]


_UNREACHABLE = ("ServerGone",)  # fault types worth reconnecting for when no byte of the transfer came


def fault_reason(exc: BaseException) -> str:
    """A short reason for a failed transfer, from the client's exception type."""
    return {
        "ServerGone": "server gone",
        "CorruptFrame": "corrupt frame",
        "ServerError": "server error",
        "DeadlineExceeded": "deadline",
    }.get(type(exc).__name__, type(exc).__name__) + f": {exc}"


_Report = tuple[Any, ...]  # (what, ...) from a worker to the control loop


class RealDriver:
    """Runs one request: `run()` returns when the first token is known.

    The world half of a real request: the wall clock, a link worker and a compute worker carrying out the
    shared `RequestEngine`'s decisions; the engine runs on the control thread only (workers report to it
    through a queue)."""

    def __init__(
        self,
        ctx: RequestContext,
        policy: Policy,
        sink: CellSink,
        fetch: FetchFn,
        cancel: CancelFn,
        config: DriverConfig | None = None,
        check_mirror: bool = False,
        last_byte_s: Callable[[], float] | None = None,
        read: ReadFn | None = None,
        progress: Callable[[], tuple[float | None, int]] | None = None,
    ) -> None:
        self.ctx = ctx
        # the link's view between whole cells (`KVClient.progress`): when the running fetch's first byte came,
        # and the bytes of the cell in progress; without it, samples see a cell only once it is whole
        self.progress = progress
        self.read = read  # the local disk, where the request has cells on it
        self.policy_name = policy.name
        self.engine = RequestEngine(ctx, policy, self, record=True, check_mirror=check_mirror)
        self.sink, self.fetch, self.cancel = sink, fetch, cancel
        self.last_byte_s = last_byte_s  # perf_counter instant the link last received a byte (stall detection)
        self.config = config or DriverConfig()
        self.reports: queue.Queue[_Report] = queue.Queue()
        self.link_q: queue.Queue[_Job | None] = queue.Queue()
        self.compute_q: queue.Queue[tuple[str, Any, float] | None] = queue.Queue()
        self.handover_s: list[float] = []  # compute commands: from handed over to started (queue, wake-up)
        self.report_s: list[float] = []  # compute lane reports: from the work's end to the control thread's
        self.disk_q: queue.Queue[CellBlock | None] = queue.Queue()
        self.job: _Job | None = None
        self.first_token = -1
        self._next_id = 0
        self._t0 = 0.0
        self._worker_error: BaseException | None = None
        self._control_error: BaseException | None = None

    def now(self) -> float:
        return time.perf_counter() - self._t0

    # ---- effects (called by the engine, on the control thread) ----

    def start_fetch(self, flight: Flight, now_s: float) -> None:
        self._next_id += 1
        self.job = flight.handle = _Job(self._next_id, flight.block)
        self.link_q.put(self.job)

    def cancel_fetch(self, block: CellBlock, now_s: float) -> None:
        job = self.job
        if job is not None and not job.cancelled:
            job.cancelled = True
            job.wake.set()
            self.cancel(job.request_id)

    def start_compute(self, block: CellBlock, work_s: float, now_s: float, receiving: bool) -> None:
        self.compute_q.put(("compute", block, time.perf_counter()))

    def start_query_layer(self, layer: int, work_s: float, now_s: float, receiving: bool) -> None:
        self.compute_q.put(("query", layer, time.perf_counter()))

    def start_first_token(self, work_s: float, now_s: float) -> None:
        self.compute_q.put(("first_token", None, time.perf_counter()))

    def received_bytes(self, now_s: float) -> int:
        job = self.job
        if job is None:
            return 0
        partial = self.progress()[1] if self.progress is not None else 0
        return job.rx_bytes + partial

    def start_read(self, block: CellBlock, n_bytes: int, work_s: float, now_s: float) -> None:
        if self.read is None:
            raise RuntimeError(f"policy {self.policy_name} read {block} from local disk, but this run has no local KV")
        self.disk_q.put(block)

    def handover_summary(self) -> dict[str, float]:
        """The compute lane's hand-overs between threads (ms), for `Result.extra["decision"]`: `handover`, from
        the control thread queueing work to the compute thread starting it; `report`, from the work's end to
        the control thread taking its report. Their medians' sum is what the simulator charges as
        `command_latency_s` (besides the policy's own time, which the engine times)."""
        out: dict[str, float] = {}
        for name, values in (("handover", self.handover_s), ("report", self.report_s)):
            if values:
                out |= {f"{name}s": len(values), **tail_ms(values, f"{name}_")}
        return out

    # ---- workers ----

    def _link_worker(self) -> None:
        while (job := self.link_q.get()) is not None:
            self._carry(job)

    def _carry(self, job: _Job) -> None:
        """One transfer: fetch (reconnecting with backoff while the server is unreachable), install, report."""
        cfg = self.config
        deadline = time.perf_counter() + cfg.transfer_timeout_s
        cells, cell_bytes, backoff = 0, 0, cfg.backoff_s
        while True:
            try:
                for cell in self.fetch(job.request_id, job.block, deadline):
                    if cells == 0:  # the payload began: from here on, samples count its bytes
                        first = cell.head_s - self._t0 if cell.head_s is not None else self.now()
                        self.reports.put(("payload", job, first))
                    self.sink.install(cell.chunk, cell.layer, np.asarray(cell.k), np.asarray(cell.v))
                    job.rx_bytes += cell.wire_bytes
                    cell_bytes += cell.wire_bytes
                    cells += 1
            except Exception as exc:  # a fault on the wire: the policy decides what to do next
                retry = (type(exc).__name__ in _UNREACHABLE and cells == 0 and job.rx_bytes == 0
                         and job.stalled is None and not job.cancelled
                         and time.perf_counter() + backoff < deadline)
                if retry:
                    job.wake.wait(backoff)  # a cancel or a stall ends the wait early
                    backoff = min(2 * backoff, cfg.backoff_max_s)
                    if not job.cancelled and job.stalled is None:
                        continue
                reason = fault_reason(exc)
                if job.stalled is not None:
                    waited_s = time.perf_counter() - job.started_s
                    reason = f"{job.stalled}; {reason}" if cells else f"{reason} (reconnecting for {waited_s:.1f} s)"
                self._lost(job, reason, cells, cell_bytes)
                return
            break
        end = self.now()
        if job.stalled is not None and cells != job.block.num_cells:
            self._lost(job, job.stalled, cells, cell_bytes)
        elif job.cancelled:
            self.reports.put(("lost", job, end, None, (), 0))
        elif cells != job.block.num_cells:
            self._lost(job, f"incomplete: {cells} of {job.block.num_cells} cells", cells, cell_bytes)
        else:
            self.reports.put(("done", job, end))

    def _lost(self, job: _Job, reason: str, cells: int, cell_bytes: int) -> None:
        parts = delivered_parts(job.block, cells) if cells and self.config.keep_partial and not job.cancelled else ()
        self.reports.put(("lost", job, self.now(), reason, parts, cell_bytes if parts else 0))

    def _disk_worker(self) -> None:
        """Reads from local disk, one block at a time: the reads, then the installs, measured."""
        assert self.read is not None
        try:
            while (block := self.disk_q.get()) is not None:
                start = self.now()
                for chunk, layer, k, v in self.read(block):
                    self.sink.install(chunk, layer, k, v)
                self.reports.put(("read", self.now(), start))
        except BaseException as exc:  # a disk fault or a bug: stop the request loudly
            self._worker_error = exc
            self.reports.put(("error",))

    def _compute_worker(self) -> None:
        try:
            while (job := self.compute_q.get()) is not None:
                kind, arg, handed_s = job
                self.handover_s.append(time.perf_counter() - handed_s)
                start = self.now()
                if kind == "compute":
                    self.sink.compute_block(arg)
                elif kind == "query":
                    self.sink.query_layer(arg)
                else:
                    self.first_token = self.sink.first_token()
                self.reports.put((kind, self.now(), start))
        except BaseException as exc:  # a bug in the model code: stop the request loudly
            self._worker_error = exc
            self.reports.put(("error",))

    # ---- control ----

    def _handle(self, report: _Report) -> None:
        """Hand one worker report to the engine."""
        eng, what = self.engine, report[0]
        if what == "payload":
            running: _Job = report[1]
            if running is self.job and not running.payload_sent:
                running.payload_sent = True
                eng.payload_started(report[2])
        elif what == "done":
            job = report[1]
            self.job = None
            eng.transfer_done(report[2], job.rx_bytes, report[2], now_s=self.now())
        elif what == "lost":
            job = report[1]
            self.job = None
            eng.transfer_lost(report[2], job.rx_bytes, report[3], now_s=self.now(), delivered=report[4],
                              delivered_bytes=report[5])
        elif what in ("compute", "query"):
            now = self.now()
            self.report_s.append(now - report[1])  # the work's end to its report taken here
            done = eng.compute_done if what == "compute" else eng.query_layer_done
            done(report[1], report[2], now_s=now)
        elif what == "read":
            eng.read_done(report[1], report[2], now_s=self.now())
        elif what == "first_token":
            eng.first_token_done(report[1], report[2])
        elif what == "error":
            raise RuntimeError(f"a worker failed: {self._worker_error}") from self._worker_error

    def run(self) -> DriverOutput:
        """Run the request; the caller's thread does the compute work.

        torch's CPU kernels run on an OpenMP team owned by the thread that calls them. The caller has
        usually run torch already (loading the model, building the KV store); a second thread computing
        would bring a second team competing for the same cores, which measured 1.3-1.7x slower on this
        2-core machine. So compute stays on the caller's thread, and the control loop (the engine, the
        policy, deadlines, ticks) runs in its own thread, which does no tensor work.
        """
        link = threading.Thread(target=self._link_worker, name="sparkv-link", daemon=True)
        control = threading.Thread(target=self._control_guarded, name="sparkv-control", daemon=True)
        link.start()
        disk = threading.Thread(target=self._disk_worker, name="sparkv-disk", daemon=True) if self.read else None
        if disk is not None:
            disk.start()
        self._t0 = time.perf_counter()
        control.start()
        try:
            self._compute_worker()  # until the control loop sends None
        finally:
            self.compute_q.put(None)  # harmless if the worker already stopped
            control.join(timeout=self.config.request_timeout_s + 30.0)
            link.join(timeout=30.0)
            if disk is not None:
                disk.join(timeout=30.0)
        if self._control_error is not None:
            raise self._control_error
        eng = self.engine
        return DriverOutput(eng.ttft_s, self.first_token, eng.sorted_spans(), eng.log, eng.faults,
                            eng.bytes_streamed, eng.bytes_wasted, eng.cells_streamed, eng.cells_computed)  # fmt: skip

    def _control_guarded(self) -> None:
        try:
            self._control()
        except BaseException as exc:  # handed to the caller's thread by `run`
            self._control_error = exc

    def _check_stall(self, eng: RequestEngine) -> None:
        """End the transfer in flight as stalled when no byte came for stall_s and the compute lane is idle."""
        job, stall_s = self.job, self.config.stall_s
        if job is None or stall_s is None or job.cancelled or job.stalled is not None or eng.compute_busy:
            return
        last = job.started_s
        if self.last_byte_s is not None:
            last = max(last, self.last_byte_s())
        silent_s = time.perf_counter() - last
        if silent_s > stall_s:
            job.stalled = f"stalled: no byte for {silent_s:.1f} s with the compute lane idle"
            job.wake.set()
            self.cancel(job.request_id)

    def _payload_from_progress(self) -> None:
        """Tell the engine the running transfer's payload began as soon as its first cell header is in,
        not when the first whole cell is (a slow link can take seconds over one cell, and a policy that
        gets no samples meanwhile cannot see the link is slow)."""
        job = self.job
        if job is None or job.payload_sent or self.progress is None:
            return
        first = self.progress()[0]
        if first is not None and first >= job.started_s:
            job.payload_sent = True
            self.engine.payload_started(first - self._t0)

    def _control(self) -> None:
        """Feed the engine the workers' reports and the ticks until the first token is known."""
        eng = self.engine
        tick_s = eng.tick_s
        try:
            eng.begin()
            next_tick = tick_s if tick_s else math.inf
            while not eng.finished:
                now = self.now()
                if now > self.config.request_timeout_s:
                    raise ExecutionTimeout(
                        f"policy {self.policy_name}: no first token after {self.config.request_timeout_s:.0f} s "
                        f"({eng.missing_cells()} cells missing)"
                    )
                self._check_stall(eng)
                wait = min(next_tick - now, self.config.poll_s)
                try:
                    report = self.reports.get(timeout=max(0.0, wait))
                except queue.Empty:
                    now = self.now()
                    self._payload_from_progress()
                    if tick_s and now >= next_tick:
                        next_tick += tick_s
                        if next_tick <= now:  # the loop fell behind: skip the missed ticks
                            next_tick = now + tick_s
                        eng.tick(now)
                    continue
                self._handle(report)
        finally:
            if self.job is not None and not self.job.cancelled:
                self.cancel(self.job.request_id)
            self.link_q.put(None)
            self.compute_q.put(None)
            self.disk_q.put(None)
