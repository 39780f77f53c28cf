"""How fast the device computes right now, relative to its profile.

A device profile is measured once; the machine a request later runs on may be busier or idler than it
was then (other processes, a shared host, thermal state). `probe_speed` times a fixed piece of a run's
own work (the middle chunk's layers, over zeros for the chunks before it, computed from scratch with the
executor's prefill) and divides by what the profile predicts for it. The simulator can then predict a
run with the device at the measured speed (an availability trace of 1 / factor), which separates the
model's error from the machine's drift. Probes are taken before and after a run, never from the run
itself; on a machine whose speed jumps within seconds (a shared VM), the two disagree when a jump fell
inside the run, and such a run can be measured again.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sparkv.core.costs import CostTable
from sparkv.core.request import CellBlock
from sparkv.executor.model.prefill import LayerwisePrefill


@dataclass(frozen=True)
class DeviceSpeed:
    """Measured / predicted seconds of the probe's compute: 1.0 runs as profiled, 1.2 is 20 % slower."""

    factor: float
    measured_s: float  # median seconds of one sweep
    predicted_s: float  # the profile's seconds for the same sweep
    sweeps: int
    chunk_tokens: int
    layers: int
    chunk: int = 0  # which chunk was computed (its past is chunk x chunk_tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def availability_spec(factor: float, duration_s: float = 3600.0) -> str:
    """A scenario availability trace for the simulator: a device whose compute takes `factor` times the
    profiled seconds has 1 / factor of the profiled speed."""
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"speed factor must be finite and > 0, got {factor!r}")
    return f"const:{1.0 / factor:.6g}B/s,{duration_s:g}s"


@dataclass(frozen=True)
class RunSpeed:
    """The device's speed around one real run: probed before and after it. A run during which the speed
    changed (the two probes disagree by more than a tolerance) is not `steady`."""

    before: DeviceSpeed
    after: DeviceSpeed

    @property
    def factor(self) -> float:
        """The geometric mean of the two probes' factors: the speed the run most likely saw."""
        return math.sqrt(self.before.factor * self.after.factor)

    def steady(self, tolerance: float) -> bool:
        return abs(self.after.factor / self.before.factor - 1.0) <= tolerance

    def to_dict(self) -> dict[str, Any]:
        return {"factor": self.factor, "before": self.before.to_dict(), "after": self.after.to_dict()}


def probe_speed(prefill: LayerwisePrefill, costs: CostTable, sweeps: int = 2, chunk: int | None = None) -> DeviceSpeed:
    """Compute one chunk of `prefill` through every layer `sweeps` times (one command per sweep, as a
    whole-chunk compute runs) and compare the median sweep with `costs`' prediction for that block.

    The chunk is the middle one by default: its attention spans half the context, the mean over a
    request's chunks, so the probe weighs attention and the other layers' work as a whole request does
    (a machine can slow the two unequally). The cells before it are filled with zeros once (attention
    costs the same whatever the values). The prefill is only used for probing and can be reused."""
    if sweeps < 1:
        raise ValueError(f"sweeps must be >= 1, got {sweeps}")
    c = prefill.num_chunks // 2 if chunk is None else chunk
    if not 0 <= c < prefill.num_chunks:
        raise ValueError(f"chunk {c} outside [0, {prefill.num_chunks})")
    layers = prefill.num_layers
    _fill_before(prefill, c)
    block = CellBlock.one(c, 0, layers)
    times = []
    for _ in range(sweeps):
        prefill.computed[c] = 0  # from layer 0 again: every sweep does the same work
        prefill.hidden.pop(c, None)
        t0 = time.perf_counter()
        prefill.compute_block(block)
        if prefill.device.type == "cuda":
            torch.cuda.synchronize(prefill.device)
        times.append(time.perf_counter() - t0)
    measured = statistics.median(times)
    predicted = costs.compute_s(block)
    return DeviceSpeed(measured / predicted, measured, predicted, sweeps, prefill.request.chunk_len(c), layers, c)


def _fill_before(prefill: LayerwisePrefill, chunk: int) -> None:
    """Make every cell of the chunks before `chunk` present (zeros), so that it can be computed."""
    k0 = prefill.k[0]
    for c in range(chunk):
        missing = [layer for layer in range(prefill.num_layers) if not prefill.present[layer][c]]
        if missing:
            zeros = torch.zeros((k0.shape[0], prefill.request.chunk_len(c), k0.shape[2]), dtype=k0.dtype,
                                device=k0.device)  # fmt: skip
            for layer in missing:
                prefill.install(c, layer, zeros, zeros)
