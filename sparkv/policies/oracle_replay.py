"""The simulator's arithmetic for one fixed schedule, replayed event by event in pure Python.

A schedule is what the oracle hands the driver: a queue of compute commands, each taken when the
compute lane is free and its cells' dependencies are present, and a queue of transfers, issued
whenever the link is free. `Replayer.run` plays it exactly as `sparkv.sim.engine.SimRun` plays the
oracle holding those queues, with the same floating-point sums in the same order:

- at every event (start, transfer done, compute done, query layer done) the query's next layer starts
  first if the compute lane is free and that layer is complete, then the next compute command if its
  dependencies are present, then the next transfer if the link is free;
- a transfer: (a slot at the KV server, queueing behind its other clients), service, round trip,
  payload at the trace's rate from the request's offset (looping), installation per byte plus a fixed
  part; with nothing to queue for, the simulator's single-timeout sum;
- compute: the cost table's seconds, x the receive slowdown (at the rate the trace delivers then, where it
  follows a measured curve) when a transfer is in flight as it starts
  or starts in the same step (a query layer: only when one is already in flight), x the seeded noise
  factor of its turn, stretched by the device's availability;
- the first token after the last query layer, noise and availability included.

The oracle scores candidate schedules with it, so its predicted TTFT is the simulated one. A test holds
the two equal; a change to the simulator's arithmetic must be made here too.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from sparkv.core.costs import CostTable
from sparkv.core.request import CellBlock
from sparkv.policies.foresight import Foresight, NoiseDraws, ServerForecast, ServerQueue

DEFAULT_MAX_TIME_S = 3600.0  # the simulator's default limit: a request not done by then does not finish
_COMPUTE, _QUERY, _TRANSFER = 0, 1, 2
_Info = tuple[int, int, int, int, int, float]  # chunk_lo, chunk_hi, layer_lo, layer_hi, chunk mask, cost


@dataclass(frozen=True)
class Schedule:
    """Two queues in the order the driver is given them."""

    compute: tuple[CellBlock, ...]  # compute commands, in order
    link: tuple[CellBlock, ...]  # transfers, in order
    label: str = ""  # where the schedule came from (for stats)


@dataclass(frozen=True)
class Replayed:
    ttft_s: float  # math.inf if the request would not finish
    link_end_s: float  # last transfer installed (0 without transfers)
    compute_end_s: float  # last compute command done (0 without any)
    compute_starts_s: tuple[float, ...] = ()  # when each compute command started (`run(record=True)`)


class Replayer:
    """Replays schedules of one request; the server's and the noise's draws are shared between runs."""

    def __init__(self, costs: CostTable, foresight: Foresight, max_time_s: float = DEFAULT_MAX_TIME_S) -> None:
        self.costs, self.fs, self.max_time_s = costs, foresight, max_time_s
        self.server: ServerForecast | None = foresight.server() if foresight.contended else None
        self.noise: NoiseDraws = foresight.noise()
        self.query_s: list[float] = costs.query_layer_s.tolist()
        self.runs = 0
        self._info_cache: dict[tuple[bool, tuple[int, int, int, int]], _Info] = {}

    def duration_s(self, work_s: float, now_s: float, turn: int) -> float:
        """`SimRun._compute_duration`: wall seconds for `work_s` started at `now_s`, the `turn`-th draw."""
        fs = self.fs
        if fs.compute_noise > 0:
            work_s *= self.noise.factor(turn)
        if fs.availability is None:
            return work_s
        return fs.availability.time_to_deliver(now_s, work_s) - now_s

    def transfer_end_s(self, now_s: float, n_bytes: float, queue: ServerQueue | None) -> float:
        """`SimRun`'s transfer issued at `now_s`: (a server slot,) service, round trip, payload at the trace's
        rate from the request's offset, installation; the clock's value when it is done (inf: never)."""
        fs = self.fs
        if queue is not None:
            grant = queue.grant_s(now_s)
            data_start = (grant + fs.service_s if fs.service_s > 0 else now_s) + fs.rtt_s
        else:
            data_start = now_s + fs.first_byte_s
        trace_end = fs.forecast.time_to_deliver(data_start + fs.offset_s, n_bytes / fs.efficiency)
        if math.isinf(trace_end):
            return math.inf
        install = n_bytes * self.costs.install_s_per_byte + fs.install_fixed_s
        end = data_start + (trace_end - fs.offset_s + install - data_start)
        if queue is None:  # one timeout from `now_s`: SimPy's sum lands the clock on `end`
            delay = end - now_s
            if now_s + delay != end:
                delay = _delay_to(now_s, end)
            end = now_s + delay
        return end

    def _infos(self, blocks: tuple[CellBlock, ...], compute: bool) -> list[_Info]:
        """Per block: its bounds and chunk masks, and its seconds (compute) or wire bytes (transfer) as the
        simulator reads them from the cost table."""
        cache, costs = self._info_cache, self.costs
        out = []
        for b in blocks:
            key = (compute, b.key)
            info = cache.get(key)
            if info is None:
                value = costs.compute_s(b) if compute else float(costs.block_bytes(b))
                chunks = ((1 << b.chunk_hi) - 1) ^ ((1 << b.chunk_lo) - 1)
                info = cache[key] = (b.chunk_lo, b.chunk_hi, b.layer_lo, b.layer_hi, chunks, value)
            out.append(info)
        return out

    def run(self, schedule: Schedule, record: bool = False) -> Replayed:
        self.runs += 1
        costs, fs = self.costs, self.fs
        C, L = costs.num_chunks, costs.num_layers
        full = (1 << C) - 1
        present = [0] * L  # per layer: bit c set when chunk c's cell is present
        busy = [0] * L  # per layer: fetching or computing
        prefix = [0] * C  # per chunk: layers computed or computing
        q = 0  # query layers done
        comp_q, link_q = self._infos(schedule.compute, True), self._infos(schedule.link, False)
        n_comp, n_link = len(comp_q), len(link_q)
        slowdown = fs.receive_slowdown
        slowed = not fs.contention.neutral
        slowdown_at = fs.slowdown_at if fs.contention.varies else None  # a factor that follows the rate
        exact = fs.compute_noise <= 0 and fs.availability is None
        queue = self.server.queue() if self.server is not None else None
        transfer_end = self.transfer_end_s
        query_s, duration_of, max_time = self.query_s, self.duration_s, self.max_time_s
        heap: list[tuple[float, int, int, _Info | None]] = []
        push, pop = heapq.heappush, heapq.heappop
        seq = 0  # creation order breaks ties between events at the same time, as SimPy's event ids do
        turn = 0  # compute pieces started so far (the noise draws)
        ci = li = 0
        compute_busy = in_flight = False
        link_end = compute_end = 0.0
        now = 0.0
        starts: list[float] = []
        while True:
            # ---- dispatch at `now`: the query's next layer, then the policy's commands ----
            if not compute_busy and q < L and present[q] == full:
                work = query_s[q]
                if in_flight:
                    work *= slowdown if slowdown_at is None else slowdown_at(now)
                push(heap, (now + (work if exact else duration_of(work, now, turn)), seq, _QUERY, None))
                seq += 1
                turn += 1
                compute_busy = True
            comp = None
            if not compute_busy and ci < n_comp:
                # `RequestProgress.can_compute`: no cell in flight, each chunk continuing its computed
                # prefix, the block's layers of every earlier chunk present
                comp = comp_q[ci]
                c_lo, c_hi, lo, hi, chunks, _ = comp
                earlier = (1 << c_lo) - 1
                for layer in range(lo, hi):
                    if busy[layer] & chunks or present[layer] & earlier != earlier:
                        comp = None
                        break
                if comp is not None and any(prefix[c] != lo for c in range(c_lo, c_hi)):
                    comp = None
            fetch = link_q[li] if not in_flight and li < n_link else None
            if comp is not None:
                c_lo, c_hi, lo, hi, chunks, work = comp
                for layer in range(lo, hi):
                    busy[layer] |= chunks & ~present[layer]
                for c in range(c_lo, c_hi):
                    prefix[c] = hi
                ci += 1
                if record:
                    starts.append(now)
                if slowed and (in_flight or fetch is not None):
                    work *= slowdown if slowdown_at is None else slowdown_at(now)
                push(heap, (now + (work if exact else duration_of(work, now, turn)), seq, _COMPUTE, comp))
                seq += 1
                turn += 1
                compute_busy = True
            if fetch is not None:
                _, _, lo, hi, chunks, n = fetch
                for layer in range(lo, hi):
                    if (busy[layer] | present[layer]) & chunks:
                        raise ValueError(f"schedule {schedule.label!r} fetches cells already started: {fetch[:4]}")
                    busy[layer] |= chunks
                li += 1
                in_flight = True
                end = transfer_end(now, n, queue)
                push(heap, (end, seq, _TRANSFER, fetch))
                seq += 1
            # ---- the next event ----
            if not heap:
                return Replayed(math.inf, link_end, compute_end)
            now, _, kind, info = pop(heap)
            if now > max_time:
                return Replayed(math.inf, link_end, compute_end)
            if kind == _QUERY:
                q += 1
                if q == L:
                    ttft = now + duration_of(costs.first_token_s, now, turn)
                    return Replayed(ttft if ttft <= max_time else math.inf, link_end, compute_end, tuple(starts))
                compute_busy = False
                continue
            assert info is not None
            _, _, lo, hi, chunks, _ = info
            for layer in range(lo, hi):
                present[layer] |= chunks
                busy[layer] &= ~chunks
            if kind == _TRANSFER:
                in_flight = False
                link_end = now
            else:
                compute_busy = False
                compute_end = now


def _delay_to(now_s: float, t_s: float) -> float:
    """The simulator's `_delay_to`: a delay from `now_s` that the clock turns into exactly `t_s`."""
    delay = t_s - now_s
    if now_s + delay != t_s:
        delay = math.nextafter(delay, math.inf if now_s + delay < t_s else -math.inf)
    return delay
