"""One request's state machine, shared by both worlds: the policy's events, its commands, and the Result.

A world (the SimPy model, the real executor) owns a clock and carries out effects. It reports what
happened, with times on its clock: a transfer's payload began, a transfer arrived or was lost, a compute
command, a query layer or the first token ended, a tick fell due. The engine does the rest, once for
both worlds:

- feeds the policy its events, in order, and asks it for commands (`Policy.schedule`);
- runs the query's prefill layers itself, with priority, as soon as a layer is complete, and says so
  (`QueryLayerStarted`, then `QueryLayerDone` for every layer, the last one included);
- checks every command against the lanes and the cell grid, and hands it to the world;
- where some of the context's KV is on local disk (`CostTable.local`), runs a third lane: `ReadLocal`
  reads cells on disk (one read at a time), reported by `read_done` and announced as `ReadDone`;
- keeps the request's progress and its accounting (bytes streamed, wasted and read, cells, faults, spans);
- sends `BandwidthSample`s of the transfer in flight at every tick once its payload has begun,
  zero-byte windows included (a stalled link is seen as one), and the last stretch when it ends;
- ticks at the policy's `tick_s` (none when it has none);
- where the world asks (`time_decisions`: the real executor always, the simulator on request), times
  every call into the policy (`update` and `schedule` of one dispatch: its decision time, on the wall
  clock of the machine running it) and, where asked too (`decision_scale` > 0, the simulator), charges
  it: the dispatch's commands start that much later, and dispatches queue behind each other as on the
  real executor's single control thread;
- builds the `Result`.

Same events in both worlds by construction: a world cannot send an event the engine does not build.
The hot path (a simulated request calls it hundreds of times) is written plainly but without waste:
bound methods kept as attributes, spans built as tuples (`make_span`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

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
from sparkv.core.progress import RequestProgress
from sparkv.core.replay import PolicyRecorder
from sparkv.core.request import CellBlock
from sparkv.core.result import Result, Span, make_span
from sparkv.policies.base import Policy, RequestContext, policy_hooks

_IDLE = {  # idle lanes by (link idle, compute idle, disk idle)
    (link, compute, disk): frozenset(
        r for r, idle in ((Resource.LINK, link), (Resource.COMPUTE, compute), (Resource.DISK, disk)) if idle
    )
    for link in (False, True)
    for compute in (False, True)
    for disk in (False, True)
}
SPAN_ORDER = itemgetter(2, 0)  # timeline order of a result's spans: (start_s, lane)
MIN_WINDOW_S = 1e-9  # a bandwidth sample's window is never shorter


class Effects(Protocol):
    """What a world does when the engine decides; each call returns at once (the work runs on the world's
    clock, and the world reports its end to the engine)."""

    def start_fetch(self, flight: Flight, now_s: float) -> None:
        """Begin streaming `flight.block` (`flight.bytes` on the wire); report `payload_started`, then
        `transfer_done` or `transfer_lost`. The world may keep its own handle on it in `flight.handle`."""

    def cancel_fetch(self, block: CellBlock, now_s: float) -> None:
        """Abandon the transfer of `block`; report `transfer_lost` (or `transfer_done` if it was too late)."""

    def start_compute(self, block: CellBlock, work_s: float, now_s: float, receiving: bool) -> None:
        """Prefill `block` (`work_s`: the cost table's prediction; `receiving`: a transfer shares the device);
        report `compute_done`."""

    def start_query_layer(self, layer: int, work_s: float, now_s: float, receiving: bool) -> None:
        """Run the query's prefill through `layer`; report `query_layer_done`."""

    def start_first_token(self, work_s: float, now_s: float) -> None:
        """Compute the first token after the query's last layer; report `first_token_done`."""

    def received_bytes(self, now_s: float) -> int:
        """Wire bytes of the transfer in flight received by `now_s`."""

    def start_read(self, block: CellBlock, n_bytes: int, work_s: float, now_s: float) -> None:
        """Read `block` (`n_bytes` on disk; `work_s`: the cost table's prediction) from local disk into the
        cache; report `read_done`. Called only where the request has cells on local disk."""


def tail_ms(seconds: list[float], prefix: str = "") -> dict[str, float]:
    """Total, median, p90 and max of `seconds` in ms (keys `{prefix}total_ms`, ...); {} when empty."""
    times = sorted(seconds)
    n = len(times)
    if not n:
        return {}
    return {f"{prefix}total_ms": 1e3 * sum(times), f"{prefix}median_ms": 1e3 * times[n // 2],
            f"{prefix}p90_ms": 1e3 * times[min(n - 1, round(0.9 * (n - 1)))], f"{prefix}max_ms": 1e3 * times[-1]}


class MirrorMismatch(RuntimeError):
    """A policy's own picture of the request disagrees with the engine's."""


@dataclass(slots=True)
class Flight:
    """The transfer in flight, as the engine accounts it."""

    block: CellBlock
    bytes: int
    start_s: float  # the fetch command
    data_start_s: float = math.inf  # the first payload byte (reported by the world)
    payload_end_s: float = math.inf  # the last payload byte, when the world knows it in advance
    sampled_s: float = math.inf  # end of the last in-flight sample (from the first byte on)
    sampled_bytes: int = 0  # bytes those samples reported
    cancel_sent: bool = False
    end_s: float = math.inf  # when the world expects it to end, where it knows (the simulator does)
    handle: Any = None  # the world's own handle on the transfer (a timeout, a process, a job)


class RequestEngine:
    """The shared state of one request under one policy; a world calls its report methods."""

    def __init__(
        self,
        ctx: RequestContext,
        policy: Policy,
        effects: Effects,
        record: bool = True,
        check_mirror: bool = False,
        decision_scale: float = 0.0,
        command_latency_s: float = 0.0,
        time_decisions: bool = True,
    ) -> None:
        if not (0.0 <= decision_scale < math.inf):
            raise ValueError(f"decision_scale must be finite and >= 0, got {decision_scale!r}")
        if not (0.0 <= command_latency_s < math.inf):
            raise ValueError(f"command_latency_s must be finite and >= 0, got {command_latency_s!r}")
        self.ctx = ctx
        self.policy = policy
        self.policy_name = policy.name
        self.fx = effects
        self.recorder: PolicyRecorder | None = PolicyRecorder(policy) if record else None
        self._io: Any = self.recorder if self.recorder is not None else policy  # update/schedule go here
        hooks = self.hooks = policy_hooks(policy)
        ignored = hooks.ignored_events if not record else frozenset()  # a log keeps every event
        self.send_samples = BandwidthSample not in ignored
        self.send_query_events = QueryLayerDone not in ignored or QueryLayerStarted not in ignored
        self.tick_s = hooks.tick_s
        self.keeps_partial = hooks.keeps_partial_transfers
        self.check_mirror = check_mirror
        self.num_layers = ctx.model.num_layers
        self.progress = RequestProgress(ctx.request.num_chunks, self.num_layers)
        costs = ctx.costs
        self.block_bytes: Callable[[CellBlock], int] = costs.block_bytes
        self.compute_s: Callable[[CellBlock], float] = costs.compute_s
        self.query_layer_s: list[float] = costs.query_layer_s.tolist()
        self.first_token_s = float(costs.first_token_s)
        self.transfer: Flight | None = None
        self.compute_busy = False
        self.computing: CellBlock | None = None  # the policy's compute command running, if any
        self.query_layer = -1  # the query layer running, if any
        self.compute_start_s = 0.0
        self.spans: list[Span] = []
        self.faults: list[str] = []
        self.ttft_s = math.nan
        self.finished = False
        self.bytes_streamed = self.bytes_wasted = self.cells_streamed = self.cells_computed = 0
        self.local = costs.local  # the disk lane's costs (None: nothing on local disk, no disk lane)
        self.reading: tuple[CellBlock, int, float] | None = None  # (block, bytes, start) read from disk
        self.bytes_read = self.cells_read = 0
        # decision time: seconds of every dispatch's policy calls; charged x decision_scale where > 0
        self.decision_scale = decision_scale
        self.command_latency_s = command_latency_s  # from a decision to its lane starting the work (charged)
        self.charges = decision_scale > 0 or command_latency_s > 0
        self.time_decisions = time_decisions or self.charges  # a charge needs the times
        self.decision_s: list[float] = []
        self.control_free_s = -math.inf  # when the (modelled) control thread finishes its last decision

    # ---- reports from the world ----

    def begin(self) -> None:
        """The request arrives: begin the policy and dispatch `RequestStarted`."""
        self.policy.begin(self.ctx)
        start = self.ctx.start_s
        self._dispatch(RequestStarted(start), start)

    def payload_started(self, t_s: float, payload_end_s: float = math.inf) -> None:
        """The first payload byte of the transfer in flight arrived at `t_s` (and, where the world knows it,
        the last will arrive at `payload_end_s`)."""
        t = self.transfer
        if t is not None and math.isinf(t.data_start_s):
            t.data_start_s = t.sampled_s = t_s
            t.payload_end_s = payload_end_s

    def transfer_done(self, t_s: float, n_bytes: int | None = None, payload_end_s: float | None = None,
                      now_s: float | None = None) -> None:  # fmt: skip
        """The transfer in flight arrived and was installed at `t_s` (`n_bytes`: wire bytes, default the
        cost table's; `payload_end_s`: its last payload byte, default the flight's or `t_s`)."""
        t = self.transfer
        if t is None:
            raise self._no_flight("transfer_done")
        block = t.block
        got = t.bytes if n_bytes is None else n_bytes
        self.spans.append(make_span(("link", "fetch", t.start_s, t_s, block, got, -1)))
        self.bytes_streamed += got
        self.cells_streamed += (block.chunk_hi - block.chunk_lo) * (block.layer_hi - block.layer_lo)
        self.progress.finish(block)
        self.transfer = None
        if self.send_samples:  # the payload's last stretch, since the last in-flight sample (if any)
            end = payload_end_s
            if end is None:
                end = t.payload_end_s if t.payload_end_s < math.inf else t_s
            window = end - (t.sampled_s if t.sampled_s < math.inf else t.start_s)
            window = window if window > MIN_WINDOW_S else MIN_WINDOW_S
            self._io.update(BandwidthSample(end, got - t.sampled_bytes, window))
        self._dispatch(TransferDone(t_s, block, got, t_s - t.start_s), t_s if now_s is None else now_s)

    def transfer_lost(self, t_s: float, received_bytes: int, reason: str | None = None,
                      now_s: float | None = None, delivered: tuple[CellBlock, ...] = (),
                      delivered_bytes: int = 0) -> None:  # fmt: skip
        """The transfer in flight ended at `t_s` without its cells: cancelled (`reason` None) or failed.

        A failed transfer may have `delivered` parts of its block whole (sub-blocks, installed, carried
        by `delivered_bytes` of the received bytes): they are present and streamed, the rest is lost."""
        t = self.transfer
        if t is None:
            raise self._no_flight("transfer_lost")
        kind = "cancelled" if reason is None else "failed"
        self.spans.append(make_span(("link", kind, t.start_s, t_s, t.block, received_bytes, -1)))
        self.progress.abort_fetch(t.block)
        if delivered and reason is not None and self.keeps_partial:
            for part in delivered:
                self.progress.start_fetch(part)
                self.progress.finish(part)
                self.cells_streamed += part.num_cells
            self.bytes_streamed += delivered_bytes
            received_bytes_wasted = received_bytes - delivered_bytes
        else:
            delivered, received_bytes_wasted = (), received_bytes
        self.bytes_wasted += received_bytes_wasted
        self.transfer = None
        event: Event
        if reason is None:
            event = TransferCancelled(t_s, t.block, received_bytes)
        else:
            self.faults.append(f"t={t_s:.3f} s: transfer {t.block} failed ({reason})"
                               + (f", {sum(p.num_cells for p in delivered)} cells kept" if delivered else ""))
            event = TransferFailed(t_s, t.block, received_bytes, reason, delivered)
        self._dispatch(event, t_s if now_s is None else now_s)

    def compute_done(self, t_s: float, start_s: float | None = None, now_s: float | None = None) -> None:
        """The policy's compute command ended at `t_s` (`start_s`: when it began, if measured)."""
        block = self.computing
        if block is None:
            raise RuntimeError(f"policy {self.policy_name}: compute_done with no compute command running")
        start = self.compute_start_s if start_s is None else start_s
        self.computing = None
        self.spans.append(make_span(("compute", "compute", start, t_s, block, 0, -1)))
        self.cells_computed += block.num_cells
        self.progress.finish(block)
        self.compute_busy = False
        self._dispatch(ComputeDone(t_s, block, t_s - start), t_s if now_s is None else now_s)

    def read_done(self, t_s: float, start_s: float | None = None, now_s: float | None = None) -> None:
        """The read from local disk in progress ended at `t_s`, its cells installed (`start_s`: when it
        began, if measured; default the command's time)."""
        if self.reading is None:
            raise RuntimeError(f"policy {self.policy_name}: read_done with no read in progress")
        block, n, commanded = self.reading
        start = commanded if start_s is None else start_s
        self.reading = None
        self.spans.append(make_span(("disk", "read", start, t_s, block, n, -1)))
        self.bytes_read += n
        self.cells_read += block.num_cells
        self.progress.finish(block)
        self._dispatch(ReadDone(t_s, block, n, t_s - commanded), t_s if now_s is None else now_s)

    def query_layer_done(self, t_s: float, start_s: float | None = None, now_s: float | None = None) -> None:
        """The query layer running ended at `t_s`; after the last one the first token starts."""
        layer = self.query_layer
        if layer < 0:
            raise RuntimeError(f"policy {self.policy_name}: query_layer_done with no query layer running")
        start = self.compute_start_s if start_s is None else start_s
        self.query_layer = -1
        self.spans.append(make_span(("compute", "query", start, t_s, None, 0, layer)))
        self.progress.query_layers_done = layer + 1
        now = t_s if now_s is None else now_s
        last = layer + 1 == self.num_layers
        if last:  # the compute lane goes on to the first token
            self.compute_start_s = t_s
            self.fx.start_first_token(self.first_token_s, now)
        else:
            self.compute_busy = False
        self._dispatch(QueryLayerDone(t_s, layer, t_s - start) if self.send_query_events else None, now)

    def first_token_done(self, t_s: float, start_s: float | None = None) -> None:
        """The first token is known at `t_s`: the request is over."""
        start = self.compute_start_s if start_s is None else start_s
        self.spans.append(Span("compute", "first_token", start, t_s))
        self.ttft_s = t_s - self.ctx.start_s
        self.finished = True
        self.compute_busy = False

    def tick(self, t_s: float) -> None:
        """A tick fell due at `t_s`: sample the transfer in flight (from its first payload byte on, zero-byte
        windows included), then dispatch `Tick`."""
        if self.finished:
            return
        t = self.transfer
        if t is not None and self.send_samples and t.sampled_s < t_s < t.payload_end_s:
            got = self.fx.received_bytes(t_s)
            window = t_s - t.sampled_s
            n = got - t.sampled_bytes
            t.sampled_s, t.sampled_bytes = t_s, got
            self._io.update(BandwidthSample(t_s, n, window))
        self._dispatch(Tick(t_s), t_s)

    # ---- dispatch ----

    def _dispatch(self, event: Event | None, now: float) -> None:
        """Feed `event` (None: one the policy ignores) to the policy, start a ready query layer, and carry out
        the policy's commands."""
        io = self._io
        charges = self.charges
        if charges and self.control_free_s > now:  # the control thread is still deciding: this waits
            now = self.control_free_s
        timing = self.time_decisions
        t0 = time.perf_counter() if timing else 0.0
        if event is not None:
            io.update(event)
        if not self.compute_busy and not self.finished and self.progress.query_layer_ready():
            self._start_query_layer(now + self.command_latency_s)  # (+ 0.0 where nothing is charged)
        idle = _IDLE[self.transfer is None, not self.compute_busy, self.reading is None and self.local is not None]
        commands = io.schedule(now, idle)
        if timing:
            took = time.perf_counter() - t0
            self.decision_s.append(took)
            if charges:  # the control thread is busy deciding; the commands start once handed over
                now = self.control_free_s = now + took * self.decision_scale
                now += self.command_latency_s
        if commands:
            self._apply(commands, now)
        if self.check_mirror:
            self._check_mirror()

    def _apply(self, commands: tuple[Command, ...], now: float) -> None:
        for command in commands:
            if isinstance(command, Fetch):
                if self.transfer is not None:
                    raise RuntimeError(f"policy {self.policy_name} fetched {command.block} while the link is busy")
                block = command.block
                self.progress.start_fetch(block)
                flight = self.transfer = Flight(block, self.block_bytes(block), now)
                self.fx.start_fetch(flight, now)
            elif isinstance(command, Compute):
                if self.compute_busy:
                    raise RuntimeError(f"policy {self.policy_name} computed {command.block} while compute is busy")
                block = command.block
                self.progress.start_compute(block)
                self.compute_busy = True
                self.computing, self.compute_start_s = block, now
                # compute started now shares the device with a transfer in flight or fetched in this dispatch
                receiving = self.transfer is not None or any(type(c) is Fetch for c in commands)
                self.fx.start_compute(block, self.compute_s(block), now, receiving)
            elif isinstance(command, Cancel):
                t = self.transfer
                if t is None or t.block != command.block:
                    raise RuntimeError(f"policy {self.policy_name} cancelled {command.block}, which is not in flight")
                if not t.cancel_sent:
                    t.cancel_sent = True
                    self.fx.cancel_fetch(t.block, now)
            elif isinstance(command, ReadLocal):
                self._start_read(command.block, now)
            else:
                raise RuntimeError(f"policy {self.policy_name} returned {command!r}, which is not a command")

    def _start_read(self, block: CellBlock, now: float) -> None:
        """A `ReadLocal`, checked like a fetch: the disk lane idle, every cell on disk and missing."""
        local = self.local
        if local is None:
            raise RuntimeError(f"policy {self.policy_name} read {block} from local disk, but none of this "
                               f"request's KV is on local disk")  # fmt: skip
        if self.reading is not None:
            raise RuntimeError(f"policy {self.policy_name} read {block} while the disk is busy")
        if block.chunk_hi > self.progress.num_chunks or block.layer_hi > self.num_layers or not local.on_disk(block):
            raise RuntimeError(f"policy {self.policy_name} read {block}, which is not on local disk "
                               f"(chunks {list(local.chunks)} are)")  # fmt: skip
        self.progress.start_fetch(block)  # a ValueError naming the cell if one is not missing
        n = local.block_bytes(block)
        self.reading = (block, n, now)
        self.fx.start_read(block, n, local.read_s(block), now)

    def _start_query_layer(self, now: float) -> None:
        layer = self.progress.query_layers_done
        self.compute_busy = True
        self.query_layer, self.compute_start_s = layer, now
        if self.send_query_events:
            self._io.update(QueryLayerStarted(now, layer))
        self.fx.start_query_layer(layer, self.query_layer_s[layer], now, self.transfer is not None)

    def _no_flight(self, what: str) -> RuntimeError:
        return RuntimeError(f"policy {self.policy_name}: {what} with no transfer in flight")

    def _check_mirror(self) -> None:
        view = getattr(self.policy, "progress", None)
        if view is None:
            return
        mine = self.progress
        if view.state != mine.state or view.computed_prefix != mine.computed_prefix:
            raise MirrorMismatch(
                f"policy {self.policy_name}: its cell grid differs from the engine's "
                f"({len(view.missing_cells())} vs {len(mine.missing_cells())} cells missing)"
            )
        if self.send_query_events and view.query_layers_done != mine.query_layers_done:
            raise MirrorMismatch(
                f"policy {self.policy_name}: query layers done {view.query_layers_done}, "
                f"engine {mine.query_layers_done}"
            )

    # ---- the outcome ----

    @property
    def log(self) -> list[dict[str, Any]]:
        return self.recorder.log if self.recorder is not None else []

    def missing_cells(self) -> int:
        return len(self.progress.missing_cells())

    def disk_summary(self) -> dict[str, Any]:
        """What the disk lane did, for `Result.extra["disk"]` (a request with cells on local disk)."""
        assert self.local is not None
        return {"local_chunks": list(self.local.chunks), "storage": self.local.curve.name,
                "queue_depth": self.local.queue_depth, "bytes_read": self.bytes_read, "cells_read": self.cells_read,
                "energy": (f"modelled: {self.local.read_w:g} W while reading (storage profile)" if self.local.read_w > 0
                           else "not modelled (the storage profile has no read power)")}  # fmt: skip

    def decision_summary(self) -> dict[str, Any]:
        """The policy's decision time over the request (ms; measured on this run's machine), for
        `Result.extra["decision"]`."""
        return {"dispatches": len(self.decision_s), **tail_ms(self.decision_s),
                "charged_scale": self.decision_scale, "charged_latency_ms": 1e3 * self.command_latency_s}  # fmt: skip

    def sorted_spans(self) -> list[Span]:
        return sorted(self.spans, key=SPAN_ORDER)

    def result(self, world: str, energy_j: dict[str, float], config: dict[str, Any],
               extra: dict[str, Any]) -> Result:  # fmt: skip
        """The request's `Result`; `config` gains the policy's settings, `extra` its run statistics."""
        stats = self.hooks.stats()
        if self.time_decisions:  # wall-clock figures of this machine: the one part of a Result not reproducible
            extra = {**extra, "decision": self.decision_summary()}
        if self.local is not None:
            extra = {**extra, "disk": self.disk_summary()}
            if self.local.read_w > 0:  # the storage profile's read power over the disk lane's busy time
                busy_s = sum(s.end_s - s.start_s for s in self.spans if s.lane == "disk")
                energy_j = {**energy_j, "disk": self.local.read_w * busy_s}
        return Result(
            world=world,
            policy=self.policy_name,
            ttft_s=self.ttft_s,
            energy_j=energy_j,
            spans=self.sorted_spans(),
            config={**config, "policy": self.policy.config()},
            bytes_streamed=self.bytes_streamed,
            bytes_wasted=self.bytes_wasted,
            cells_streamed=self.cells_streamed,
            cells_computed=self.cells_computed,
            faults=list(self.faults),
            log=self.log,
            extra={**extra, "policy_stats": stats} if stats else extra,
        )
