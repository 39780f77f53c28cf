"""What the oracle knows of a request's future: every input of the simulator that a policy cannot see.

A deployable policy sees the cost table and the events. The oracle is told, in one `Foresight`, the
rest of what the simulator (`sparkv.sim.engine`) will do: the scaled bandwidth trace with the request's
offset into it (it loops), the link's efficiency, round trip and server service, the fixed part of
installing a transfer, how much slower compute runs while a transfer is in flight, the device's
availability over time, the KV server's other clients (slots and a seeded Poisson stream) and the
seeded compute noise. The last two are random in the simulator, but drawn from the scenario's seed
before anything a policy does can change them, so knowing them is knowing the future like knowing
the trace: `ServerForecast` and `NoiseDraws` draw the same numbers in the same order.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

from sparkv.core.contention import ReceiveContention
from sparkv.core.costs import BandwidthForecast

BACKGROUND_SEED_OFFSET = 7919  # the simulator seeds its background clients with scenario seed + this
_DRAW_BATCH = 256  # random numbers drawn at a time (a batch continues the same stream as single draws)


@dataclass(frozen=True, eq=False)
class Foresight:
    """The simulator's inputs beyond the cost table; `sparkv.analysis` builds one from a simulated world."""

    forecast: BandwidthForecast  # the trace's rates in bytes/s, already scaled
    offset_s: float = 0.0  # request time 0 is this trace time
    efficiency: float = 1.0  # goodput / trace rate
    service_s: float = 0.0  # server service per transfer (`LinkConfig.per_transfer_s`)
    rtt_s: float = 0.0  # request round trip before the first payload byte
    install_fixed_s: float = 0.0  # per transfer after its last byte (the simulator's profile-wide value)
    receive_slowdown: float = 1.0  # compute started while a transfer is in flight takes this x longer
    # where measured, the slowdown as a function of the delivered rate: (bytes/s, factor) points that
    # replace `receive_slowdown` (`sparkv.core.contention`)
    receive_curve: tuple[tuple[float, float], ...] = ()
    availability: BandwidthForecast | None = None  # fraction of the device available over time (as "B/s")
    server_concurrency: int = 1  # transfers the KV server serves at once
    server_background_rps: float = 0.0  # other clients' transfers per second (Poisson)
    compute_noise: float = 0.0  # relative std-dev of the simulator's compute times
    seed: int = 0  # the scenario's seed (server clients and compute noise are drawn from it)

    def __post_init__(self) -> None:
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"efficiency must be in (0, 1], got {self.efficiency}")
        if self.receive_slowdown <= 0:
            raise ValueError(f"receive_slowdown must be positive, got {self.receive_slowdown}")
        if self.server_concurrency <= 0 or self.server_background_rps < 0 or self.service_s < 0 or self.rtt_s < 0:
            raise ValueError(
                f"bad server: concurrency={self.server_concurrency}, background_rps={self.server_background_rps}, "
                f"service_s={self.service_s}, rtt_s={self.rtt_s}"
            )
        if self.compute_noise < 0:
            raise ValueError(f"compute_noise must be >= 0, got {self.compute_noise}")
        object.__setattr__(self, "_contention", ReceiveContention(self.receive_slowdown, self.receive_curve))

    @property
    def contention(self) -> ReceiveContention:
        return self._contention  # type: ignore[attr-defined]

    def slowdown_at(self, t_s: float) -> float:
        """The receive slowdown of compute started at request time `t_s` while a transfer is in flight: the
        simulator's rule (`sparkv.sim.engine`), at the rate the link delivers then."""
        return self.contention.during(self.forecast, t_s + self.offset_s, self.efficiency)

    def planning_slowdown(self, n_bytes: float) -> float:
        """One factor for a planner that models a constant slowdown: the curve at the mean rate the link
        delivers while it carries `n_bytes` from request time 0 (the constant where there is no curve)."""
        c = self.contention
        if not c.varies:
            return self.receive_slowdown
        if n_bytes <= 0:
            return c.factor(self.forecast.rate_at(self.offset_s) * self.efficiency)
        span = self.forecast.time_to_deliver(self.offset_s, n_bytes / self.efficiency) - self.offset_s
        return c.factor(n_bytes / span) if span > 0 and math.isfinite(span) else c.factor(0.0)

    @property
    def first_byte_s(self) -> float:
        """Fetch to first payload byte at an idle server (the simulator's own sum)."""
        return self.service_s + self.rtt_s

    @property
    def contended(self) -> bool:
        """Transfers can queue at the server (else a transfer never waits for a slot)."""
        return self.server_concurrency > 1 or self.server_background_rps > 0

    def server(self) -> ServerForecast:
        return ServerForecast(self.service_s, self.server_concurrency, self.server_background_rps, self.seed)

    def noise(self) -> NoiseDraws:
        return NoiseDraws(self.compute_noise, self.seed)

    def describe(self) -> dict[str, object]:
        """Plain data for a policy's config (the forecast by name)."""
        return {
            "forecast": getattr(self.forecast, "name", None), "offset_s": self.offset_s,
            "efficiency": self.efficiency, "service_s": self.service_s, "rtt_s": self.rtt_s,
            "install_fixed_s": self.install_fixed_s, "receive_slowdown": self.receive_slowdown,
            "receive_curve": [list(p) for p in self.receive_curve],
            "availability": getattr(self.availability, "name", None) if self.availability is not None else None,
            "server_concurrency": self.server_concurrency, "server_background_rps": self.server_background_rps,
            "compute_noise": self.compute_noise, "seed": self.seed,
        }  # fmt: skip


class ServerForecast:
    """The KV server's other clients as the simulator draws them: arrivals of a seeded Poisson stream,
    each holding one of `concurrency` FIFO slots for `service_s`."""

    def __init__(self, service_s: float, concurrency: int, background_rps: float, seed: int) -> None:
        self.service_s, self.concurrency, self.rps = service_s, concurrency, background_rps
        self._rng = np.random.default_rng(seed + BACKGROUND_SEED_OFFSET) if background_rps > 0 else None
        self.arrivals_s: list[float] = []  # background arrival times, ascending
        self._alone_free: list[float] = [0.0]  # earliest free slot after the first i arrivals, without us
        self._alone_heap = [0.0] * concurrency

    def _draw_past(self, t_s: float) -> None:
        """Draw arrivals until one lies after `t_s` (the simulator adds each gap to the clock)."""
        if self._rng is None:
            return
        scale = 1.0 / self.rps
        now = self.arrivals_s[-1] if self.arrivals_s else 0.0
        while not self.arrivals_s or self.arrivals_s[-1] <= t_s:
            for gap in self._rng.exponential(scale, _DRAW_BATCH).tolist():
                now = now + gap
                self.arrivals_s.append(now)
                heap = self._alone_heap
                free = heapq.heappop(heap)
                heapq.heappush(heap, (now if now > free else free) + self.service_s)
                self._alone_free.append(heap[0])

    def grant_alone_s(self, t_s: float) -> float:
        """When a request at `t_s` would get a slot were it the request's only transfer (a fast estimate:
        the request's own earlier transfers, which also delay the other clients, are left out)."""
        if self.service_s <= 0:
            return t_s
        self._draw_past(t_s)
        free = self._alone_free[bisect_right(self.arrivals_s, t_s)]
        return t_s if free <= t_s else free

    def queue(self) -> ServerQueue:
        return ServerQueue(self)


class ServerQueue:
    """One request's exact view of the server: its transfers and the other clients in arrival order."""

    def __init__(self, forecast: ServerForecast) -> None:
        self.forecast = forecast
        self.heap = [0.0] * forecast.concurrency  # when each slot is next free
        self.done = 0  # background arrivals already queued

    def _take(self, t_s: float) -> float:
        heap = self.heap
        free = heapq.heappop(heap)
        grant = t_s if free <= t_s else free
        heapq.heappush(heap, grant + self.forecast.service_s)
        return grant

    def grant_s(self, t_s: float) -> float:
        """When a transfer requested at `t_s` (later than every earlier call's) gets its slot."""
        fc = self.forecast
        if fc.service_s <= 0:
            return t_s  # the simulator's server then serves without a slot
        fc._draw_past(t_s)
        arrivals = fc.arrivals_s
        while self.done < len(arrivals) and arrivals[self.done] < t_s:
            self._take(arrivals[self.done])
            self.done += 1
        return self._take(t_s)


class NoiseDraws:
    """The simulator's compute-noise factors in the order its compute lane draws them (one per piece of
    work: a compute command, a query layer, the first token), from the scenario's seed."""

    def __init__(self, noise: float, seed: int) -> None:
        self.noise = noise
        self._rng = np.random.default_rng(seed) if noise > 0 else None
        self._z: list[float] = []

    def factor(self, i: int) -> float:
        """Wall time / work of the i-th piece of compute (0-based)."""
        if self._rng is None:
            return 1.0
        while len(self._z) <= i:
            self._z.extend(self._rng.standard_normal(_DRAW_BATCH).tolist())
        return max(0.05, 1.0 + self.noise * self._z[i])

    def smallest(self, n: int) -> float:
        """The smallest factor among the first `n` draws (1.0 without noise)."""
        if self._rng is None or n <= 0:
            return 1.0
        self.factor(n - 1)
        return max(0.05, 1.0 + self.noise * min(self._z[:n]))
