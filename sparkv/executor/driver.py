"""Drive one real request: a policy's commands carried out by a link worker and a compute worker.

The contract is the simulator's: the driver feeds the policy events (transfer done, compute done,
bandwidth samples, ticks) and asks it for commands whenever something changes. The link worker pulls
KV cells from the server and installs them into the model's cache as they arrive; the compute worker
runs layer-wise prefill, and the query's layers with priority as soon as each layer is complete, on the
caller's thread (see `RealDriver.run`); a control thread talks to the policy. Every
wait has a deadline: a request that cannot finish raises `ExecutionTimeout` instead of hanging.
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
from sparkv.core.events import (
    BandwidthSample,
    Cancel,
    Command,
    Compute,
    ComputeDone,
    Event,
    Fetch,
    QueryLayerDone,
    RequestStarted,
    Resource,
    Tick,
    TransferCancelled,
    TransferDone,
    TransferFailed,
)
from sparkv.core.progress import RequestProgress
from sparkv.core.replay import PolicyRecorder
from sparkv.core.request import CellBlock
from sparkv.core.result import Span
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


# fetch(request_id, block, deadline_s) -> cells as they arrive; raises on faults (see `fault_reason`)
FetchFn = Callable[[int, CellBlock, float], Iterator[CellArrival]]
CancelFn = Callable[[int], None]


@dataclass(frozen=True)
class DriverConfig:
    tick_s: float = 0.25  # sampling period when the policy asks for no ticks of its own
    transfer_timeout_s: float = 120.0  # a single transfer may take at most this long
    request_timeout_s: float = 1800.0  # the whole request, to the first token


@dataclass
class _InFlight:
    request_id: int
    block: CellBlock
    start_s: float
    cancelled: bool = False
    rx_bytes: int = 0  # wire bytes received so far (written by the link worker)
    sampled_bytes: int = 0  # bytes already reported in samples (main thread)
    sampled_s: float = 0.0


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


def fault_reason(exc: BaseException) -> str:
    """A short reason for a failed transfer, from the client's exception type."""
    return {
        "ServerGone": "server gone",
        "CorruptFrame": "corrupt frame",
        "ServerError": "server error",
        "DeadlineExceeded": "deadline",
    }.get(type(exc).__name__, type(exc).__name__) + f": {exc}"


class RealDriver:
    """Runs one request: `run()` returns when the first token is known."""

    def __init__(
        self,
        ctx: RequestContext,
        policy: Policy,
        sink: CellSink,
        fetch: FetchFn,
        cancel: CancelFn,
        config: DriverConfig | None = None,
    ) -> None:
        self.ctx = ctx
        self.policy_name = policy.name
        policy.begin(ctx)
        self.recorder = PolicyRecorder(policy)
        self.sink, self.fetch, self.cancel = sink, fetch, cancel
        self.config = config or DriverConfig()
        self.tick_s: float = getattr(policy, "tick_s", None) or self.config.tick_s
        self.progress = RequestProgress(ctx.request.num_chunks, ctx.model.num_layers)
        self.events: queue.Queue[tuple[Event | None, Span | None]] = queue.Queue()
        self.link_q: queue.Queue[_InFlight | None] = queue.Queue()
        self.compute_q: queue.Queue[tuple[str, Any] | None] = queue.Queue()
        self.transfer: _InFlight | None = None
        self.compute_busy = False
        self.spans: list[Span] = []
        self.faults: list[str] = []
        self.out = DriverOutput(math.nan, -1, self.spans, self.recorder.log, self.faults)
        self._next_id = 0
        self._t0 = 0.0
        self._worker_error: BaseException | None = None
        self._control_error: BaseException | None = None

    def now(self) -> float:
        return time.perf_counter() - self._t0

    # ---- workers ----

    def _link_worker(self) -> None:
        while (job := self.link_q.get()) is not None:
            start = self.now()
            try:
                deadline = time.perf_counter() + self.config.transfer_timeout_s
                cells = 0
                for cell in self.fetch(job.request_id, job.block, deadline):
                    self.sink.install(cell.chunk, cell.layer, np.asarray(cell.k), np.asarray(cell.v))
                    job.rx_bytes += cell.wire_bytes
                    cells += 1
                end = self.now()
                if job.cancelled:
                    span = Span("link", "cancelled", start, end, job.block, job.rx_bytes)
                    self.events.put((TransferCancelled(end, job.block, job.rx_bytes), span))
                elif cells != job.block.num_cells:
                    reason = f"incomplete: {cells} of {job.block.num_cells} cells"
                    span = Span("link", "failed", start, end, job.block, job.rx_bytes)
                    self.events.put((TransferFailed(end, job.block, job.rx_bytes, reason), span))
                else:
                    span = Span("link", "fetch", start, end, job.block, job.rx_bytes)
                    self.events.put((TransferDone(end, job.block, job.rx_bytes, end - start), span))
            except Exception as exc:  # a fault on the wire: the policy decides what to do next
                end = self.now()
                span = Span("link", "failed", start, end, job.block, job.rx_bytes)
                self.events.put((TransferFailed(end, job.block, job.rx_bytes, fault_reason(exc)), span))

    def _compute_worker(self) -> None:
        try:
            while (job := self.compute_q.get()) is not None:
                kind, arg = job
                start = self.now()
                if kind == "compute":
                    self.sink.compute_block(arg)
                    end = self.now()
                    self.events.put((ComputeDone(end, arg, end - start), Span("compute", "compute", start, end, arg)))
                else:  # a query layer, then the first token after the last one
                    self.sink.query_layer(arg)
                    end = self.now()
                    span = Span("compute", "query", start, end, layer=arg)
                    self.events.put((QueryLayerDone(end, arg, end - start), span))
                    if arg + 1 == self.ctx.model.num_layers:
                        token = self.sink.first_token()
                        done = self.now()
                        self.out.first_token = token
                        self.events.put((None, Span("compute", "first_token", end, done)))
        except BaseException as exc:  # a bug in the model code: stop the request loudly
            self._worker_error = exc
            self.events.put((None, None))

    # ---- main loop ----

    def _dispatch(self, event: Event) -> None:
        self.recorder.update(event)
        self._start_query_layer()
        idle = set()
        if self.transfer is None:
            idle.add(Resource.LINK)
        if not self.compute_busy:
            idle.add(Resource.COMPUTE)
        for command in self.recorder.schedule(self.now(), frozenset(idle)):
            self._apply(command)

    def _apply(self, command: Command) -> None:
        if isinstance(command, Fetch):
            if self.transfer is not None:
                raise RuntimeError(f"policy {self.policy_name} fetched {command.block} while the link is busy")
            self.progress.start_fetch(command.block)
            self._next_id += 1
            now = self.now()
            self.transfer = _InFlight(self._next_id, command.block, now, sampled_s=now)
            self.link_q.put(self.transfer)
        elif isinstance(command, Compute):
            if self.compute_busy:
                raise RuntimeError(f"policy {self.policy_name} computed {command.block} while compute is busy")
            self.progress.start_compute(command.block)
            self.compute_busy = True
            self.compute_q.put(("compute", command.block))
        elif isinstance(command, Cancel):
            t = self.transfer
            if t is None or t.block != command.block:
                raise RuntimeError(f"policy {self.policy_name} cancelled {command.block}, which is not in flight")
            if not t.cancelled:
                t.cancelled = True
                self.cancel(t.request_id)

    def _start_query_layer(self) -> None:
        if not self.compute_busy and self.progress.query_layer_ready():
            self.compute_busy = True
            layer = self.progress.query_layers_done
            self.progress.query_layers_done = layer + 1  # claimed; the worker runs it next
            self.compute_q.put(("query", layer))

    def _handle(self, event: Event | None, span: Span | None) -> bool:
        """Account one worker report; True when the first token is known."""
        if span is not None:
            self.spans.append(span)
        if event is None:
            if self._worker_error is not None:
                raise RuntimeError(f"compute worker failed: {self._worker_error}") from self._worker_error
            self.out.ttft_s = span.end_s if span else math.nan
            return True
        if isinstance(event, TransferDone | TransferCancelled | TransferFailed):
            t = self.transfer
            if isinstance(event, TransferDone):
                self.progress.finish(event.block)
                self.out.bytes_streamed += event.bytes
                self.out.cells_streamed += event.block.num_cells
                if t is not None:
                    window = max(event.t_s - t.sampled_s, 1e-9)
                    self.recorder.update(BandwidthSample(event.t_s, event.bytes - t.sampled_bytes, window))
            else:
                self.progress.abort_fetch(event.block)
                self.out.bytes_wasted += event.bytes
                if isinstance(event, TransferFailed):
                    self.faults.append(f"t={event.t_s:.3f} s: transfer {event.block} failed ({event.reason})")
            self.transfer = None
        elif isinstance(event, ComputeDone):
            self.progress.finish(event.block)
            self.out.cells_computed += event.block.num_cells
            self.compute_busy = False
        elif isinstance(event, QueryLayerDone) and event.layer + 1 < self.ctx.model.num_layers:
            self.compute_busy = False  # after the last layer the first token is still being computed
        self._dispatch(event)
        return False

    def _tick(self) -> None:
        t = self.transfer
        now = self.now()
        if t is not None and t.rx_bytes > t.sampled_bytes:
            got = t.rx_bytes
            self.recorder.update(BandwidthSample(now, got - t.sampled_bytes, max(now - t.sampled_s, 1e-9)))
            t.sampled_bytes, t.sampled_s = got, now
        self._dispatch(Tick(now))

    def run(self) -> DriverOutput:
        """Run the request; the caller's thread does the compute work.

        torch's CPU kernels run on an OpenMP team owned by the thread that calls them. The caller has
        usually run torch already (loading the model, building the KV store); a second thread computing
        would bring a second team competing for the same cores, which measured 1.3-1.7x slower on this
        2-core machine. So compute stays on the caller's thread, and the control loop (policy calls,
        deadlines, ticks) runs in its own thread, which does no tensor work.
        """
        link = threading.Thread(target=self._link_worker, name="sparkv-link", daemon=True)
        control = threading.Thread(target=self._control_guarded, name="sparkv-control", daemon=True)
        link.start()
        self._t0 = time.perf_counter()
        control.start()
        try:
            self._compute_worker()  # until the control loop sends None
        finally:
            self.compute_q.put(None)  # harmless if the worker already stopped
            control.join(timeout=self.config.request_timeout_s + 30.0)
            link.join(timeout=30.0)
        if self._control_error is not None:
            raise self._control_error
        self.spans.sort(key=lambda s: (s.start_s, s.lane))
        return self.out

    def _control_guarded(self) -> None:
        try:
            self._control()
        except BaseException as exc:  # handed to the caller's thread by `run`
            self._control_error = exc

    def _control(self) -> None:
        """Feed the policy its events and carry out its commands until the first token is known."""
        try:
            self._dispatch(RequestStarted(0.0))
            next_tick = self.tick_s
            while True:
                now = self.now()
                if now > self.config.request_timeout_s:
                    raise ExecutionTimeout(
                        f"policy {self.policy_name}: no first token after {self.config.request_timeout_s:.0f} s "
                        f"({len(self.progress.missing_cells())} cells missing)"
                    )
                try:
                    event, span = self.events.get(timeout=max(0.0, next_tick - now))
                except queue.Empty:
                    self._tick()
                    next_tick = self.now() + self.tick_s
                    continue
                if self._handle(event, span):
                    break
        finally:
            if self.transfer is not None and not self.transfer.cancelled:
                self.cancel(self.transfer.request_id)
            self.link_q.put(None)
            self.compute_q.put(None)
