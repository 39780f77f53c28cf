"""The SimPy model of one request: a trace-driven link, a serial device, a KV server, and a policy.

The link lane runs one transfer at a time: a request round trip and server service, then the
payload at the trace's rate (one `env.timeout` computed from the trace's integral, never per-packet
stepping), then installation into the cache. A transfer can be cancelled; the bytes already received
are accounted as wasted. The compute lane runs the policy's prefill commands and, with priority, the
query's prefill layer by layer as each layer of the context becomes complete. Energy is integrated
afterwards over the same timeline.

Each piece of work is one SimPy timeout whose callback runs the next step (a process per command
costs three scheduler steps instead of one). A transfer that need not queue knows its phases when it
starts (round trip, then payload and installation), so it too is one timeout. Only a transfer queueing
at a shared server runs as a process, for its slot request, and a cancel interrupts it; otherwise the
cancel runs in a process started at that instant, an urgent event like SimPy's interrupt. Events thus
keep the order, and the times, they had when every command was a process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import simpy
from simpy.core import StopSimulation
from simpy.events import Timeout

from sparkv.core.errors import UserError
from sparkv.core.events import (
    BandwidthSample,
    Cancel,
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
)
from sparkv.core.progress import RequestProgress
from sparkv.core.replay import PolicyRecorder
from sparkv.core.request import CellBlock
from sparkv.core.result import Result, Span, make_span
from sparkv.cost_models.energy import request_energy_j
from sparkv.engine.world import World
from sparkv.policies.base import Policy, RequestContext, ignored_events
from sparkv.sim.server import SimServer

DEFAULT_MAX_TIME_S = 3600.0  # simulated seconds a request may take before it counts as not finished


class SimulationStalled(UserError):
    """The request could not finish: it needed longer than allowed, the policy waits forever, or the link
    delivers nothing. `needs_longer` tells the first case apart (a larger time limit would finish it)."""

    def __init__(self, message: str, needs_longer: bool = False) -> None:
        super().__init__(message)
        self.needs_longer = needs_longer


_IDLE = {  # idle lanes by (link idle, compute idle)
    (link, compute): frozenset(r for r, idle in ((Resource.LINK, link), (Resource.COMPUTE, compute)) if idle)
    for link in (False, True)
    for compute in (False, True)
}


@dataclass(slots=True)
class _Transfer:
    block: CellBlock
    bytes: int
    start_s: float
    process: simpy.Process | None = None  # the queueing phase at a shared server, while it runs
    waiting: simpy.Event | None = None  # the timeout the transfer waits on outside that phase
    cancelled: bool = False  # a cancel is on its way
    data_start_s: float = math.inf  # when payload bytes began to flow
    payload_end_s: float = math.inf  # when the last payload byte arrives (installation follows)
    sampled_s: float = math.inf  # end of the last bandwidth sample taken in flight
    end_s: float = math.inf  # the clock when its last timeout fires (read instead of `env.now`, a property)


class SimRun:
    """One simulated request under one policy; `run()` returns its `Result`."""

    def __init__(
        self, world: World, policy: Policy, max_time_s: float = DEFAULT_MAX_TIME_S, record: bool = True
    ) -> None:
        self.world = world
        self.env = simpy.Environment()
        self.policy_name = policy.name
        self.policy_config = policy.config
        self.recorder = PolicyRecorder(policy) if record else policy  # the log costs ~30% of a run
        # without a log, events the policy's `update` ignores are not built (see `sparkv.policies.base`)
        ignored = ignored_events(policy) if not record else frozenset()
        self.send_samples = BandwidthSample not in ignored
        self.send_query_done = QueryLayerDone not in ignored
        self.ctx = RequestContext(world.request, world.spec, world.costs, 0.0)
        policy.begin(self.ctx)
        self.progress = RequestProgress(world.request.num_chunks, world.spec.num_layers)
        link = world.scenario.link
        self.server = SimServer(
            self.env, link.per_transfer_s, link.server_concurrency, link.server_background_rps, world.scenario.seed
        )
        self.rng: np.random.Generator | None = None  # compute noise, seeded on first use
        self.noise = world.scenario.compute_noise
        self.first_byte_s = self.server.service_s + link.rtt_s  # fetch to first payload byte, without a queue
        self.availability = world.availability
        self.exact_compute = self.noise <= 0 and self.availability is None  # wall time = work time
        # compute that starts while a transfer is in flight runs this much slower (the receive path takes
        # CPU time; measured by `sparkv profile --link`, 1.0 when the profile has no measurement)
        self.receive_slowdown = float(world.profile.link.get("compute_slowdown", 1.0))
        self.receiving = False
        # read on every transfer: the trace, link and install constants, as attributes
        self.trace = world.trace
        self.offset_s = link.trace_offset_s
        self.efficiency = link.efficiency
        self.install_s_per_byte = world.costs.install_s_per_byte
        self.install_fixed_s = world.profile.install_fixed_s
        self.num_layers = world.spec.num_layers
        self.tick_s: float | None = getattr(policy, "tick_s", None)
        self.max_time_s = max_time_s
        self.transfer: _Transfer | None = None
        self.compute_busy = False
        # the compute lane's current work, read by its bound callbacks (one piece at a time, so no closure)
        self.computing: CellBlock | None = None
        self.compute_start_s = 0.0
        self.compute_end_s = 0.0  # the clock when the compute lane's timeout fires
        self.query_layer = 0
        self.slowed = self.receive_slowdown != 1.0
        self.block_bytes = world.costs.block_bytes
        self.compute_s = world.costs.compute_s
        self.spans: list[Span] = []
        self.finished = self.env.event()
        self.ttft_s = math.nan
        self.query_layer_s: list[float] = world.costs.query_layer_s.tolist()
        self.bytes_streamed = self.bytes_wasted = self.cells_streamed = self.cells_computed = 0

    # ---- time helpers ----

    def _trace_t(self, t_s: float) -> float:
        return t_s + self.offset_s

    def _compute_duration(self, work_s: float) -> float:
        """Wall seconds for `work_s` seconds of full-speed work starting now."""
        noise = self.noise
        if noise > 0:
            if self.rng is None:
                self.rng = np.random.default_rng(self.world.scenario.seed)
            work_s *= max(0.05, 1.0 + noise * float(self.rng.standard_normal()))
        avail = self.availability
        if avail is None:
            return work_s
        now = self.env.now
        return avail.time_to_deliver(now, work_s) - now

    def _after(self, delay_s: float, step: Callable[[simpy.Event], None]) -> simpy.Event:
        """A timeout `delay_s` from now whose callback is `step`."""
        ev = Timeout(self.env, delay_s)
        ev.callbacks.append(step)
        return ev

    def _soon(self, step: Callable[[], None]) -> None:
        """Run `step` in an urgent event now: after the current event, as a process start or interrupt would."""
        self.env.process(_call(step))

    # ---- dispatch ----

    def _dispatch(self, event: Event | None, now: float) -> None:
        """Feed `event` (None: one the policy ignores) to the policy and run what it asks for; `now` is the
        clock (`env.now`)."""
        policy = self.recorder
        if event is not None:
            policy.update(event)
        if not self.compute_busy and self.progress.query_layer_ready():
            self._start_query_layer(self.progress.query_layers_done, now)
        commands = policy.schedule(now, _IDLE[self.transfer is None, not self.compute_busy])
        if not commands:
            return
        if self.slowed:  # does compute started now share the CPU with a transfer?
            receiving = self.transfer is not None
            if not receiving:
                for command in commands:
                    if isinstance(command, Fetch):
                        receiving = True
                        break
            self.receiving = receiving
        for command in commands:
            if isinstance(command, Fetch):
                if self.transfer is not None:
                    raise RuntimeError(f"policy {self.policy_name} fetched {command.block} while the link is busy")
                self._start_fetch(command.block, now)
            elif isinstance(command, Compute):
                if self.compute_busy:
                    raise RuntimeError(f"policy {self.policy_name} computed {command.block} while compute is busy")
                self._start_compute(command.block, now)
            elif isinstance(command, Cancel):
                self._cancel_fetch(command.block)

    # ---- link lane ----

    def _start_fetch(self, block: CellBlock, now: float) -> None:
        self.progress.start_fetch(block)
        t = _Transfer(block, self.block_bytes(block), now)
        self.transfer = t
        if self.server.contended:
            t.process = self.env.process(self._queue(t))
            return
        # no queue: the phases are known now, so the whole transfer is one timeout
        data_start = now + self.first_byte_s  # the clock after a timeout of the round trip
        end = data_start + self._payload(t, data_start)
        delay = end - now
        if now + delay != end:  # rounded: `_delay_to` lands the clock on `end`
            delay = _delay_to(now, end)
        t.end_s = now + delay  # SimPy's own sum: the clock when the timeout fires
        ev = t.waiting = Timeout(self.env, delay)  # `_wait`, written out
        ev.callbacks.append(self._transfer_done)

    def _cancel_fetch(self, block: CellBlock) -> None:
        t = self.transfer
        if t is None or t.block != block:
            raise RuntimeError(f"policy {self.policy_name} cancelled {block}, which is not in flight")
        if self.env.now < t.payload_end_s and not t.cancelled:  # a cancel during installation is ignored
            t.cancelled = True
            if t.process is not None:
                t.process.interrupt("cancel")
            else:
                assert t.waiting is not None
                t.waiting.callbacks.remove(self._transfer_done)
                self._soon(lambda: self._cancel(t))

    def _wait(self, t: _Transfer, delay_s: float) -> None:
        """The transfer's last phase: a timeout whose callback ends it (the link runs one transfer at a
        time, so the callback finds it in `self.transfer`)."""
        t.end_s = self.env.now + delay_s
        ev = t.waiting = Timeout(self.env, delay_s)
        ev.callbacks.append(self._transfer_done)

    def _queue(self, t: _Transfer) -> Any:
        """SimPy process: queue for a slot at a shared server, get served, then the round trip."""
        try:
            yield from self.server.serve()
            yield self.env.timeout(self.world.scenario.link.rtt_s)
        except simpy.Interrupt:
            self._cancel(t)
            return
        t.process = None
        self._wait(t, self._payload(t, self.env.now))

    def _payload(self, t: _Transfer, start_s: float) -> float:
        """Payload bytes flow from `start_s`, then installation: seconds from `start_s` to the end of both."""
        offset = self.offset_s
        t.data_start_s = t.sampled_s = start_s
        end = self.trace.time_to_deliver(start_s + offset, t.bytes / self.efficiency)
        t.payload_end_s = end - offset
        install = t.bytes * self.install_s_per_byte + self.install_fixed_s
        return self.max_time_s if math.isinf(end) else t.payload_end_s + install - start_s

    def _cancel(self, t: _Transfer) -> None:
        t.process = t.waiting = None
        received = self._received(t)
        now = self.env.now
        self.spans.append(make_span(("link", "cancelled", t.start_s, now, t.block, received, -1)))
        self.bytes_wasted += received
        self.progress.abort_fetch(t.block)
        self.transfer = None
        self._dispatch(TransferCancelled(now, t.block, received), now)

    def _transfer_done(self, _ev: simpy.Event) -> None:
        """The transfer in flight has arrived and been installed (the callback of its last timeout)."""
        t = self.transfer
        assert t is not None
        block, n_bytes, now = t.block, t.bytes, t.end_s
        self.spans.append(make_span(("link", "fetch", t.start_s, now, block, n_bytes, -1)))
        self.bytes_streamed += n_bytes
        self.cells_streamed += (block.chunk_hi - block.chunk_lo) * (block.layer_hi - block.layer_lo)  # num_cells
        self.progress.finish(block)
        self.transfer = None
        if self.send_samples:  # the payload's last stretch (since the last in-flight sample, if any)
            data_end = t.payload_end_s
            sampled = self._sampled_bytes(t) if t.sampled_s > t.data_start_s else 0  # no sample in flight: 0
            window = data_end - t.sampled_s
            self.recorder.update(BandwidthSample(data_end, n_bytes - sampled, window if window > 1e-9 else 1e-9))
        self._dispatch(TransferDone(now, block, n_bytes, now - t.start_s), now)

    def _received(self, t: _Transfer | None) -> int:
        if t is None or self.env.now <= t.data_start_s:  # the first byte had not arrived
            return 0
        got = self.trace.bytes_between(self._trace_t(t.data_start_s), self._trace_t(self.env.now)) * self.efficiency
        return int(min(got, t.bytes))

    def _sampled_bytes(self, t: _Transfer | None) -> int:
        """Payload bytes already reported by in-flight samples of transfer `t`."""
        if t is None or math.isinf(t.data_start_s) or t.sampled_s <= t.data_start_s:
            return 0
        got = self.trace.bytes_between(self._trace_t(t.data_start_s), self._trace_t(t.sampled_s)) * self.efficiency
        return int(min(got, t.bytes))

    # ---- compute lane ----

    def _start_compute(self, block: CellBlock, start: float) -> None:
        self.progress.start_compute(block)
        self.compute_busy = True
        self.computing, self.compute_start_s = block, start
        work_s = self.compute_s(block)
        if self.receiving:
            work_s *= self.receive_slowdown
        duration = work_s if self.exact_compute else self._compute_duration(work_s)
        self.compute_end_s = start + duration  # SimPy's own sum: the clock when the timeout fires
        ev = Timeout(self.env, duration)  # `_after`, written out
        ev.callbacks.append(self._compute_end)

    def _compute_end(self, _ev: simpy.Event) -> None:
        block, start, now = self.computing, self.compute_start_s, self.compute_end_s
        assert block is not None
        self.computing = None
        self.spans.append(make_span(("compute", "compute", start, now, block, 0, -1)))
        self.cells_computed += block.num_cells
        self.progress.finish(block)
        self.compute_busy = False
        self._dispatch(ComputeDone(now, block, now - start), now)

    def _start_query_layer(self, layer: int, start: float) -> None:
        """With compute idle at `start` and every cell of `layer` present: start the query's `layer`."""
        self.compute_busy = True
        self.query_layer, self.compute_start_s = layer, start
        work_s = self.query_layer_s[layer]
        if self.transfer is not None:
            work_s *= self.receive_slowdown
        duration = work_s if self.exact_compute else self._compute_duration(work_s)
        self.compute_end_s = start + duration
        ev = Timeout(self.env, duration)  # `_after`, written out
        ev.callbacks.append(self._query_layer_end)

    def _query_layer_end(self, _ev: simpy.Event) -> None:
        layer, start, now = self.query_layer, self.compute_start_s, self.compute_end_s
        self.spans.append(make_span(("compute", "query", start, now, None, 0, layer)))
        self.progress.query_layers_done = layer + 1
        if layer + 1 == self.num_layers:
            self._after(self._compute_duration(self.world.costs.first_token_s), lambda _ev: self._first_token(now))
            return
        self.compute_busy = False
        self._dispatch(QueryLayerDone(now, layer, now - start) if self.send_query_done else None, now)

    def _first_token(self, start: float) -> None:
        self.spans.append(Span("compute", "first_token", start, self.env.now))
        self.ttft_s = self.env.now
        self.finished.succeed()

    # ---- ticks ----

    def _tick(self, _ev: simpy.Event) -> None:
        if self.finished.triggered:
            return
        assert self.tick_s is not None
        self._after(self.tick_s, self._tick)  # before the dispatch, as a ticking process would order it
        now = self.env.now
        t = self.transfer
        if t is not None and t.sampled_s < now < t.payload_end_s:
            before = self._sampled_bytes(t)
            window = now - t.sampled_s
            t.sampled_s = now
            self.recorder.update(BandwidthSample(now, self._sampled_bytes(t) - before, window))
        self._dispatch(Tick(now), now)

    # ---- run ----

    def run(self) -> Result:
        # the run stops at the first token, or at the deadline (both by SimPy's own StopSimulation)
        self._after(self.max_time_s, StopSimulation.callback)
        self._dispatch(RequestStarted(0.0), 0.0)  # (env.now is the int 0 here)
        if self.tick_s:
            self._after(self.tick_s, self._tick)
        self.env.run(until=self.finished)
        if not self.finished.triggered:
            raise SimulationStalled(self._stall_reason(), needs_longer=self._still_working())
        return self._result()

    def _still_working(self) -> bool:
        """At the deadline, work was running (compute, or a transfer over a link that delivers): the request
        only needs longer."""
        if self.compute_busy:
            return True
        delivers = self.trace.bytes_between(self._trace_t(0.0), self._trace_t(self.max_time_s)) > 0
        return self.transfer is not None and delivers

    def _stall_reason(self) -> str:
        missing = len(self.progress.missing_cells())
        got = self.world.trace.bytes_between(self._trace_t(0.0), self._trace_t(self.max_time_s))
        if self._still_working():
            why = "work was still running at that point, so the request needs longer (a larger time limit)"
        elif got <= 0:
            why = "the link delivered no bytes"
        else:
            why = "the policy left cells unscheduled"
        return (
            f"policy {self.policy_name} did not reach the first token within {self.max_time_s:.0f} s "
            f"simulated ({missing} cells still missing): {why}"
        )

    def _result(self) -> Result:
        w = self.world
        log = self.recorder.log if isinstance(self.recorder, PolicyRecorder) else None  # None: not recorded
        energy = request_energy_j(self.spans, w.radio, w.profile.power, self.ttft_s)
        return Result(
            world="sim",
            policy=self.policy_name,
            ttft_s=self.ttft_s,
            energy_j=energy,
            spans=sorted(self.spans, key=_SPAN_ORDER),
            config={
                "scenario": w.scenario_dict(),
                "policy": self.policy_config(),
                "trace": {"name": w.trace.name, "source": w.trace.source, "mean_bps": w.trace.mean_bps},
                "profile": w.profile.name,
            },
            bytes_streamed=self.bytes_streamed,
            bytes_wasted=self.bytes_wasted,
            cells_streamed=self.cells_streamed,
            cells_computed=self.cells_computed,
            log=log if log is not None else [],
            # what a replay of the log needs (without a log there is nothing to replay)
            extra={"context": {"costs": w.costs_dict()}, "energy_kind": "modelled"} if log is not None
            else {"energy_kind": "modelled"},
        )


_SPAN_ORDER = itemgetter(2, 0)  # timeline order of a result's spans: (start_s, lane)


def _delay_to(now_s: float, t_s: float) -> float:
    """A delay from `now_s` that SimPy's clock turns into exactly `t_s` (one ulp off in rare ties)."""
    delay = t_s - now_s
    if now_s + delay != t_s:  # the subtraction rounded: step it one ulp towards t_s
        delay = math.nextafter(delay, math.inf if now_s + delay < t_s else -math.inf)
    return delay


def _call(step: Callable[[], None]) -> Any:
    """A SimPy process that runs `step` when it starts."""
    step()
    return
    yield  # a generator, so SimPy can start it


def simulate(world: World, policy: Policy, max_time_s: float = DEFAULT_MAX_TIME_S, record: bool = True) -> Result:
    """Run one request of `world` under `policy` in the SimPy model; `record` keeps the policy log."""
    return SimRun(world, policy, max_time_s, record).run()
