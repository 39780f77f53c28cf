"""The SimPy model of one request: a trace-driven link, a serial device, a KV server, and a policy.

Where some of the context's KV is on local disk, a third lane reads it: one read at a time, each taking
the storage profile's time for its requests (`CostTable.local`).

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
from typing import Any

import numpy as np
import simpy
from simpy.core import StopSimulation
from simpy.events import Timeout

from sparkv.core.contention import ReceiveContention
from sparkv.core.errors import UserError
from sparkv.core.request import CellBlock
from sparkv.core.result import Result
from sparkv.cost_models.energy import request_energy_j
from sparkv.engine.request import Flight, RequestEngine
from sparkv.engine.world import World
from sparkv.policies.base import Policy, RequestContext
from sparkv.policies.planner_energy import EnergyRates
from sparkv.sim.server import SimServer

DEFAULT_MAX_TIME_S = 3600.0  # simulated seconds a request may take before it counts as not finished


class SimulationStalled(UserError):
    """The request could not finish: it needed longer than allowed, the policy waits forever, or the link
    delivers nothing. `needs_longer` tells the first case apart (a larger time limit would finish it)."""

    def __init__(self, message: str, needs_longer: bool = False) -> None:
        super().__init__(message)
        self.needs_longer = needs_longer


class SimRun:
    """One simulated request under one policy; `run()` returns its `Result`.

    The world half of the request: SimPy's clock and the physics of the link, the server and the device.
    Everything else (events, commands, accounting, spans) is the shared `RequestEngine`'s.
    """

    def __init__(
        self,
        world: World,
        policy: Policy,
        max_time_s: float = DEFAULT_MAX_TIME_S,
        record: bool = True,
        check_mirror: bool = False,
        speed_hint: float | None = None,
        decision_scale: float = 0.0,
        command_latency_s: float = 0.0,
        time_decisions: bool = False,
    ) -> None:
        self.world = world
        self.env = simpy.Environment()
        self.ctx = RequestContext(world.request, world.spec, world.costs, 0.0, speed_hint,
                                  EnergyRates.of(world.radio, world.profile.power))
        self.engine = RequestEngine(self.ctx, policy, self, record, check_mirror, decision_scale,
                                    command_latency_s, time_decisions)
        self.policy_name = policy.name
        link = world.scenario.link
        self.server = SimServer(
            self.env, link.per_transfer_s, link.server_concurrency, link.server_background_rps, world.scenario.seed
        )
        self.rng: np.random.Generator | None = None  # compute noise, seeded on first use
        self.noise = world.scenario.compute_noise
        self.first_byte_s = self.server.service_s + link.rtt_s  # fetch to first payload byte, without a queue
        self.availability = world.availability
        self.exact_compute = self.noise <= 0 and self.availability is None  # wall time = work time
        # compute that starts while a transfer is in flight runs slower (the receive path takes CPU time in
        # proportion to the rate it receives at; measured by `sparkv profile --link`, 1.0 when not measured)
        self.contention = ReceiveContention.from_link(world.profile.link)
        # read on every transfer: the trace, link and install constants, as attributes
        self.trace = world.trace
        self.offset_s = link.trace_offset_s
        self.efficiency = link.efficiency
        self.install_s_per_byte = world.costs.install_s_per_byte
        self.install_fixed_s = world.profile.install_fixed_s
        self.max_time_s = max_time_s
        self.fails_at_s = link.server_fails_at_s  # the server's death, if the scenario injects one
        self.rtt_s = link.rtt_s
        self.compute_end_s = 0.0  # the clock when the compute lane's timeout fires
        self.finished = self.env.event()
        # the engine's report methods, bound once (each is called per piece of work)
        self._done_compute = self.engine.compute_done
        self._done_query = self.engine.query_layer_done

    # ---- time helpers ----

    def _trace_t(self, t_s: float) -> float:
        return t_s + self.offset_s

    def _lag(self, now_s: float) -> float:
        """Seconds from the clock to `now_s`, when a command starts after its decision time (charged by the
        engine with `decision_scale`); 0.0 otherwise."""
        lag = now_s - self.env.now
        return lag if lag > 0 else 0.0

    def _compute_duration(self, work_s: float, now_s: float | None = None) -> float:
        """Wall seconds for `work_s` seconds of full-speed work starting at `now_s` (default now)."""
        noise = self.noise
        if noise > 0:
            if self.rng is None:
                self.rng = np.random.default_rng(self.world.scenario.seed)
            work_s *= max(0.05, 1.0 + noise * float(self.rng.standard_normal()))
        avail = self.availability
        if avail is None:
            return work_s
        now = self.env.now if now_s is None else now_s
        return avail.time_to_deliver(now, work_s) - now

    def _after(self, delay_s: float, step: Callable[[simpy.Event], None]) -> simpy.Event:
        """A timeout `delay_s` from now whose callback is `step`."""
        ev = Timeout(self.env, delay_s)
        ev.callbacks.append(step)
        return ev

    def _soon(self, step: Callable[[], None]) -> None:
        """Run `step` in an urgent event now: after the current event, as a process start or interrupt would."""
        self.env.process(_call(step))

    # ---- effects (called by the engine) ----

    def start_fetch(self, flight: Flight, now_s: float) -> None:
        t = flight
        lag = self._lag(now_s)
        if self.fails_at_s is not None and now_s >= self.fails_at_s:  # nobody answers: refused after a round trip
            t.handle = self._after(lag + self.rtt_s, lambda _ev: self._fail(t, "connection refused"))
            return
        if self.server.contended:
            t.handle = self.env.process(self._queue(t, lag))  # a process while it queues, a timeout after
            return
        # no queue: the phases are known now, so the whole transfer is one timeout
        data_start = now_s + self.first_byte_s  # the clock after a timeout of the round trip
        end = data_start + self._payload(t, data_start)
        clock = self.env.now  # the timeout runs from the clock (before `now_s` when a decision was charged)
        delay = end - clock
        if clock + delay != end:  # rounded: `_delay_to` lands the clock on `end`
            delay = _delay_to(clock, end)
        t.end_s = clock + delay  # SimPy's own sum: the clock when the timeout fires
        if self.fails_at_s is not None and t.end_s > self.fails_at_s:
            self._fail_at(t)
            return
        ev = t.handle = Timeout(self.env, delay)  # `_wait`, written out
        ev.callbacks.append(self._transfer_done)

    def cancel_fetch(self, block: CellBlock, now_s: float) -> None:
        t = self.engine.transfer
        assert t is not None and t.block == block  # the engine checked
        if now_s < t.payload_end_s:  # a cancel during installation is ignored
            if isinstance(t.handle, simpy.Process):
                t.handle.interrupt("cancel")
            else:
                assert t.handle is not None
                t.handle.callbacks.clear()  # its end (or its failure) will not come
                lag = self._lag(now_s)
                if lag > 0:  # the cancel lands once it is decided
                    self._after(lag, lambda _ev: self._cancel(t))
                else:
                    self._soon(lambda: self._cancel(t))

    def start_compute(self, block: CellBlock, work_s: float, now_s: float, receiving: bool) -> None:
        if receiving:
            work_s *= self.contention.during(self.trace, now_s + self.offset_s, self.efficiency)
        duration = work_s if self.exact_compute else self._compute_duration(work_s, now_s)
        self.compute_end_s = now_s + duration  # SimPy's own sum: the clock when the timeout fires
        ev = Timeout(self.env, duration + self._lag(now_s))  # `_after`, written out
        ev.callbacks.append(self._compute_end)

    def start_query_layer(self, layer: int, work_s: float, now_s: float, receiving: bool) -> None:
        if receiving:
            work_s *= self.contention.during(self.trace, now_s + self.offset_s, self.efficiency)
        duration = work_s if self.exact_compute else self._compute_duration(work_s, now_s)
        self.compute_end_s = now_s + duration
        ev = Timeout(self.env, duration + self._lag(now_s))  # `_after`, written out
        ev.callbacks.append(self._query_layer_end)

    def start_first_token(self, work_s: float, now_s: float) -> None:
        self._after(self._compute_duration(work_s), self._first_token)

    def start_read(self, block: CellBlock, n_bytes: int, work_s: float, now_s: float) -> None:
        """The disk lane: a read takes exactly the storage model's time (`LocalCosts.read_s`: one request per
        layer at the scenario's queue depth, then installation); no noise, no contention with compute."""
        end = now_s + work_s
        ev = Timeout(self.env, work_s + self._lag(now_s))
        ev.callbacks.append(lambda _ev: self.engine.read_done(end))

    def received_bytes(self, now_s: float) -> int:
        t = self.engine.transfer
        if t is None or now_s <= t.data_start_s:  # the first byte had not arrived
            return 0
        got = self.trace.bytes_between(self._trace_t(t.data_start_s), self._trace_t(now_s)) * self.efficiency
        return int(min(got, t.bytes))

    # ---- link lane ----

    def _wait(self, t: Flight, delay_s: float) -> None:
        """The transfer's last phase: a timeout whose callback ends it (the link runs one transfer at a
        time, so the callback finds it in the engine's `transfer`)."""
        t.end_s = self.env.now + delay_s
        if self.fails_at_s is not None and t.end_s > self.fails_at_s:
            self._fail_at(t)
            return
        ev = t.handle = Timeout(self.env, delay_s)
        ev.callbacks.append(self._transfer_done)

    def _fail_at(self, t: Flight) -> None:
        """The server dies while `t` is in flight: the transfer fails then, with what had arrived."""
        assert self.fails_at_s is not None
        t.handle = self._after(max(0.0, self.fails_at_s - self.env.now), lambda _ev: self._fail(t, "server died"))

    def _fail(self, t: Flight, why: str) -> None:
        t.handle = None
        now = self.env.now
        received = self.received_bytes(now)
        self.engine.transfer_lost(now, received, f"server gone (modelled): {why}")

    def _queue(self, t: Flight, lag_s: float = 0.0) -> Any:
        """SimPy process: (after `lag_s`, the decision) queue for a slot at a shared server, get served, then
        the round trip."""
        try:
            if lag_s > 0:
                yield self.env.timeout(lag_s)
            yield from self.server.serve()
            yield self.env.timeout(self.world.scenario.link.rtt_s)
        except simpy.Interrupt:
            self._cancel(t)
            return
        t.handle = None
        self._wait(t, self._payload(t, self.env.now))

    def _payload(self, t: Flight, start_s: float) -> float:
        """Payload bytes flow from `start_s`, then installation: seconds from `start_s` to the end of both."""
        offset = self.offset_s
        end = self.trace.time_to_deliver(start_s + offset, t.bytes / self.efficiency)
        self.engine.payload_started(start_s, end - offset)
        install = t.bytes * self.install_s_per_byte + self.install_fixed_s
        return self.max_time_s if math.isinf(end) else t.payload_end_s + install - start_s

    def _cancel(self, t: Flight) -> None:
        t.handle = None
        received = self.received_bytes(self.env.now)
        self.engine.transfer_lost(self.env.now, received)

    def _transfer_done(self, _ev: simpy.Event) -> None:
        """The transfer in flight has arrived and been installed (the callback of its last timeout)."""
        t = self.engine.transfer
        assert t is not None
        self.engine.transfer_done(t.end_s, t.bytes, t.payload_end_s)

    # ---- compute lane ----

    def _compute_end(self, _ev: simpy.Event) -> None:
        self._done_compute(self.compute_end_s)

    def _query_layer_end(self, _ev: simpy.Event) -> None:
        self._done_query(self.compute_end_s)

    def _first_token(self, _ev: simpy.Event) -> None:
        self.engine.first_token_done(self.env.now)
        self.finished.succeed()

    # ---- ticks ----

    def _tick(self, _ev: simpy.Event) -> None:
        if self.engine.finished:
            return
        tick_s = self.engine.tick_s
        assert tick_s is not None
        self._after(tick_s, self._tick)  # before the dispatch, as a ticking process would order it
        self.engine.tick(self.env.now)

    # ---- run ----

    def run(self) -> Result:
        # the run stops at the first token, or at the deadline (both by SimPy's own StopSimulation)
        self._after(self.max_time_s, StopSimulation.callback)
        self.engine.begin()
        if self.engine.tick_s:
            self._after(self.engine.tick_s, self._tick)
        self.env.run(until=self.finished)
        if not self.finished.triggered:
            raise SimulationStalled(self._stall_reason(), needs_longer=self._still_working())
        return self._result()

    def _still_working(self) -> bool:
        """At the deadline, work was running (compute, or a transfer over a link that delivers): the request
        only needs longer."""
        if self.engine.compute_busy:
            return True
        delivers = self.trace.bytes_between(self._trace_t(0.0), self._trace_t(self.max_time_s)) > 0
        return self.engine.transfer is not None and delivers

    def _stall_reason(self) -> str:
        missing = self.engine.missing_cells()
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
        w, eng = self.world, self.engine
        energy = request_energy_j(eng.spans, w.radio, w.profile.power, eng.ttft_s)
        config = {
            "scenario": w.scenario_dict(),
            "trace": {"name": w.trace.name, "source": w.trace.source, "mean_bps": w.trace.mean_bps},
            "profile": w.profile.name,
        }
        if eng.charges:  # decisions charged (with decision_scale, the result depends on this machine's speed)
            config["decision_charge"] = {"decision_scale": eng.decision_scale,
                                         "command_latency_s": eng.command_latency_s}
        # what a replay of the log needs (without a log there is nothing to replay)
        extra: dict[str, Any] = {"energy_kind": "modelled"}
        if eng.recorder is not None:
            assert self.ctx.energy is not None
            extra = {"context": {"costs": w.costs_dict(), "speed_hint": self.ctx.speed_hint,
                                 "energy": self.ctx.energy.to_dict()}, "energy_kind": "modelled"}  # fmt: skip
        return eng.result("sim", energy, config, extra)


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


def simulate(world: World, policy: Policy, max_time_s: float = DEFAULT_MAX_TIME_S, record: bool = True,
             check_mirror: bool = False, speed_hint: float | None = None,
             decision_scale: float = 0.0, command_latency_s: float = 0.0,
             time_decisions: bool = False) -> Result:  # fmt: skip
    """Run one request of `world` under `policy` in the SimPy model; `record` keeps the policy log,
    `check_mirror` checks the policy's picture of the request against the engine's after every event;
    `speed_hint` is the device speed the policy is told at the start (as a real session's probe would).

    `decision_scale` > 0 charges the policy's own decision time: each dispatch's policy calls are timed on
    this machine, and its commands start that many seconds x `decision_scale` later (1.0: this machine is
    the device; the device's policy seconds per this machine's, otherwise). The result then depends on how
    fast this machine ran the policy, so it is not reproducible to the bit; 0 (the default) charges nothing.
    `command_latency_s` is added to every decision that starts work: the hand-over from the deciding thread
    to the lane (a queue and a thread's wake-up on the real executor). `time_decisions` keeps the policy's
    decision times (`extra["decision"]`) without charging them; a charged run keeps them too."""
    return SimRun(world, policy, max_time_s, record, check_mirror, speed_hint, decision_scale,
                  command_latency_s, time_decisions).run()
