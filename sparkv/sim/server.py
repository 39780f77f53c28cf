"""The KV server as the simulator sees it: a service time per transfer, optionally shared.

With `concurrency` slots and other clients arriving as a Poisson stream (`background_rps`), a
request's transfers queue behind theirs, as they would at a busy edge server.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import simpy


class SimServer:
    def __init__(
        self,
        env: simpy.Environment,
        service_s: float,
        concurrency: int = 1,
        background_rps: float = 0.0,
        seed: int = 0,
    ) -> None:
        if service_s < 0 or concurrency <= 0 or background_rps < 0:
            raise ValueError(
                f"bad server: service_s={service_s}, concurrency={concurrency}, background_rps={background_rps}"
            )
        self.env = env
        self.service_s = service_s
        self.contended = concurrency > 1 or background_rps > 0  # else a transfer never queues
        self.concurrency = concurrency
        self._slots: simpy.Resource | None = None  # built on first use: the engine queues only when contended
        if background_rps > 0:  # a generator only where it draws (seeding one costs more than a transfer)
            env.process(self._background(background_rps, np.random.default_rng(seed + 7919)))

    @property
    def slots(self) -> simpy.Resource:
        """The server's slots (a SimPy resource; building one costs as much as simulating a transfer)."""
        if self._slots is None:
            self._slots = simpy.Resource(self.env, capacity=self.concurrency)
        return self._slots

    def serve(self) -> Any:
        """SimPy sub-process: wait for a slot, then spend the service time."""
        if self.service_s <= 0:
            return
        with self.slots.request() as slot:
            yield slot
            yield self.env.timeout(self.service_s)

    def _background(self, rps: float, rng: np.random.Generator) -> Any:
        while True:
            yield self.env.timeout(float(rng.exponential(1.0 / rps)))
            self.env.process(self._other_client())

    def _other_client(self) -> Any:
        with self.slots.request() as slot:
            yield slot
            yield self.env.timeout(self.service_s)
