"""The SimPy model of one request: a trace-driven link, a serial device, a KV server, and a policy.

The link lane runs one transfer at a time: a request round trip and server service, then the
payload at the trace's rate (one `env.timeout` computed from the trace's integral, never per-packet
stepping), then installation into the cache. A transfer can be cancelled (SimPy interrupt); the bytes
already received are accounted as wasted. The compute lane runs the policy's prefill commands and,
with priority, the query's prefill layer by layer as each layer of the context becomes complete.
Energy is integrated afterwards over the same timeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

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
from sparkv.core.result import Result, Span
from sparkv.cost_models.energy import request_energy_j
from sparkv.policies.base import Policy, RequestContext
from sparkv.sim.server import SimServer
from sparkv.sim.world import World


class SimulationStalled(UserError):
    """The request could not finish: the policy waits forever or the link delivers nothing."""


@dataclass
class _Transfer:
    block: CellBlock
    bytes: int
    start_s: float
    process: simpy.Process
    data_start_s: float = math.inf  # when payload bytes began to flow
    payload_end_s: float = math.inf  # when the last payload byte arrives (installation follows)
    sampled_s: float = math.inf  # end of the last bandwidth sample taken in flight


class SimRun:
    """One simulated request under one policy; `run()` returns its `Result`."""

    def __init__(self, world: World, policy: Policy, max_time_s: float = 3600.0, record: bool = True) -> None:
        self.world = world
        self.env = simpy.Environment()
        self.policy_name = policy.name
        self.policy_config = policy.config
        self.recorder = PolicyRecorder(policy) if record else policy  # the log costs ~30% of a run
        self.ctx = RequestContext(world.request, world.spec, world.costs, 0.0)
        policy.begin(self.ctx)
        self.progress = RequestProgress(world.request.num_chunks, world.spec.num_layers)
        link = world.scenario.link
        self.server = SimServer(
            self.env, link.per_transfer_s, link.server_concurrency, link.server_background_rps, world.scenario.seed
        )
        self.rng = np.random.default_rng(world.scenario.seed)
        self.tick_s: float | None = getattr(policy, "tick_s", None)
        self.max_time_s = max_time_s
        self.transfer: _Transfer | None = None
        self.compute_busy = False
        self.spans: list[Span] = []
        self.finished = self.env.event()
        self.ttft_s = math.nan
        self.bytes_streamed = self.bytes_wasted = self.cells_streamed = self.cells_computed = 0

    # ---- time helpers ----

    def _trace_t(self, t_s: float) -> float:
        return t_s + self.world.scenario.link.trace_offset_s

    def _compute_duration(self, work_s: float) -> float:
        """Wall seconds for `work_s` seconds of full-speed work starting now."""
        noise = self.world.scenario.compute_noise
        if noise > 0:
            work_s *= max(0.05, 1.0 + noise * float(self.rng.standard_normal()))
        avail = self.world.availability
        if avail is None:
            return work_s
        now = self.env.now
        return avail.time_to_deliver(now, work_s) - now

    # ---- dispatch ----

    def _dispatch(self, event: Event) -> None:
        self.recorder.update(event)
        self._start_query_layer()
        idle = set()
        if self.transfer is None:
            idle.add(Resource.LINK)
        if not self.compute_busy:
            idle.add(Resource.COMPUTE)
        for command in self.recorder.schedule(self.env.now, frozenset(idle)):
            self._apply(command)

    def _apply(self, command: Fetch | Compute | Cancel) -> None:
        if isinstance(command, Fetch):
            if self.transfer is not None:
                raise RuntimeError(f"policy {self.policy_name} fetched {command.block} while the link is busy")
            self.progress.start_fetch(command.block)
            n = self.world.costs.block_bytes(command.block)
            proc = self.env.process(self._transfer(command.block, n))
            self.transfer = _Transfer(command.block, n, self.env.now, proc)
        elif isinstance(command, Compute):
            if self.compute_busy:
                raise RuntimeError(f"policy {self.policy_name} computed {command.block} while compute is busy")
            self.progress.start_compute(command.block)
            self.compute_busy = True
            self.env.process(self._compute(command.block))
        elif isinstance(command, Cancel):
            t = self.transfer
            if t is None or t.block != command.block:
                raise RuntimeError(f"policy {self.policy_name} cancelled {command.block}, which is not in flight")
            if self.env.now < t.payload_end_s and t.process.is_alive:
                t.process.interrupt("cancel")

    # ---- link lane ----

    def _transfer(self, block: CellBlock, n_bytes: int) -> Any:
        link = self.world.scenario.link
        start = self.env.now
        t = self.transfer
        assert t is not None
        try:
            if self.server.contended:
                yield from self.server.serve()
                yield self.env.timeout(link.rtt_s)
            else:
                yield self.env.timeout(self.server.service_s + link.rtt_s)
            t.data_start_s = t.sampled_s = self.env.now
            end = self.world.trace.time_to_deliver(self._trace_t(self.env.now), n_bytes / link.efficiency)
            t.payload_end_s = end - link.trace_offset_s
            install = n_bytes * self.world.costs.install_s_per_byte + self.world.profile.install_fixed_s
            # one timeout for payload and installation; a cancel during installation is ignored
            yield self.env.timeout(self.max_time_s if math.isinf(end) else t.payload_end_s + install - self.env.now)
        except simpy.Interrupt:
            received = self._received(t)
            self.spans.append(Span("link", "cancelled", start, self.env.now, block, received))
            self.bytes_wasted += received
            self.progress.abort_fetch(block)
            self.transfer = None
            self._dispatch(TransferCancelled(self.env.now, block, received))
            return
        self.spans.append(Span("link", "fetch", start, self.env.now, block, n_bytes))
        self.bytes_streamed += n_bytes
        self.cells_streamed += block.num_cells
        self.progress.finish(block)
        self.transfer = None
        data_end = t.payload_end_s
        self.recorder.update(
            BandwidthSample(data_end, n_bytes - self._sampled_bytes(t), max(data_end - t.sampled_s, 1e-9))
        )
        self._dispatch(TransferDone(self.env.now, block, n_bytes, self.env.now - start))

    def _received(self, t: _Transfer | None) -> int:
        if t is None or math.isinf(t.data_start_s):
            return 0
        eff = self.world.scenario.link.efficiency
        got = self.world.trace.bytes_between(self._trace_t(t.data_start_s), self._trace_t(self.env.now)) * eff
        return int(min(got, t.bytes))

    def _sampled_bytes(self, t: _Transfer | None) -> int:
        """Payload bytes already reported by in-flight samples of transfer `t`."""
        if t is None or math.isinf(t.data_start_s) or t.sampled_s <= t.data_start_s:
            return 0
        eff = self.world.scenario.link.efficiency
        got = self.world.trace.bytes_between(self._trace_t(t.data_start_s), self._trace_t(t.sampled_s)) * eff
        return int(min(got, t.bytes))

    # ---- compute lane ----

    def _compute(self, block: CellBlock) -> Any:
        start = self.env.now
        yield self.env.timeout(self._compute_duration(self.world.costs.compute_s(block)))
        self.spans.append(Span("compute", "compute", start, self.env.now, block))
        self.cells_computed += block.num_cells
        self.progress.finish(block)
        self.compute_busy = False
        self._dispatch(ComputeDone(self.env.now, block, self.env.now - start))

    def _start_query_layer(self) -> None:
        if not self.compute_busy and self.progress.query_layer_ready():
            self.compute_busy = True
            self.env.process(self._query_layer(self.progress.query_layers_done))

    def _query_layer(self, layer: int) -> Any:
        costs = self.world.costs
        start = self.env.now
        yield self.env.timeout(self._compute_duration(float(costs.query_layer_s[layer])))
        self.spans.append(Span("compute", "query", start, self.env.now, layer=layer))
        self.progress.query_layers_done = layer + 1
        if layer + 1 == self.world.spec.num_layers:
            first = self.env.now
            yield self.env.timeout(self._compute_duration(costs.first_token_s))
            self.spans.append(Span("compute", "first_token", first, self.env.now))
            self.ttft_s = self.env.now
            self.finished.succeed()
            return
        self.compute_busy = False
        self._dispatch(QueryLayerDone(self.env.now, layer, self.env.now - start))

    # ---- ticks ----

    def _ticker(self, tick_s: float) -> Any:
        while not self.finished.triggered:
            yield self.env.timeout(tick_s)
            if self.finished.triggered:
                return
            t = self.transfer
            if t is not None and t.sampled_s < self.env.now < t.payload_end_s:
                before = self._sampled_bytes(t)
                window = self.env.now - t.sampled_s
                t.sampled_s = self.env.now
                self.recorder.update(BandwidthSample(self.env.now, self._sampled_bytes(t) - before, window))
            self._dispatch(Tick(self.env.now))

    # ---- run ----

    def run(self) -> Result:
        self._dispatch(RequestStarted(0.0))
        if self.tick_s:
            self.env.process(self._ticker(self.tick_s))
        deadline = self.env.timeout(self.max_time_s)
        self.env.run(until=self.finished | deadline)
        if not self.finished.triggered:
            raise SimulationStalled(self._stall_reason())
        return self._result()

    def _stall_reason(self) -> str:
        missing = len(self.progress.missing_cells())
        got = self.world.trace.bytes_between(self._trace_t(0.0), self._trace_t(self.max_time_s))
        why = "the link delivered no bytes" if got <= 0 else "the policy left cells unscheduled"
        return (
            f"policy {self.policy_name} did not reach the first token within {self.max_time_s:.0f} s "
            f"simulated ({missing} cells still missing): {why}"
        )

    def _result(self) -> Result:
        w = self.world
        energy = request_energy_j(self.spans, w.radio, w.profile.power, self.ttft_s)
        return Result(
            world="sim",
            policy=self.policy_name,
            ttft_s=self.ttft_s,
            energy_j=energy,
            spans=sorted(self.spans, key=lambda s: (s.start_s, s.lane)),
            config={
                "scenario": w.scenario.to_dict(),
                "policy": self.policy_config(),
                "trace": {"name": w.trace.name, "source": w.trace.source, "mean_bps": w.trace.mean_bps},
                "profile": w.profile.name,
            },
            bytes_streamed=self.bytes_streamed,
            bytes_wasted=self.bytes_wasted,
            cells_streamed=self.cells_streamed,
            cells_computed=self.cells_computed,
            log=self.recorder.log if isinstance(self.recorder, PolicyRecorder) else [],
            extra={"context": {"costs": w.costs.to_dict()}, "energy_kind": "modelled"},
        )


def simulate(world: World, policy: Policy, max_time_s: float = 3600.0, record: bool = True) -> Result:
    """Run one request of `world` under `policy` in the SimPy model; `record` keeps the policy log."""
    return SimRun(world, policy, max_time_s, record).run()
