"""How fast the device computes right now, relative to its profile.

A device profile is measured once; the machine a request later runs on may be busier or idler than it
was then (other processes, a shared host, thermal state). Before a real run, `probe_speed` times a
fixed piece of the run's own work (the first chunk's layers, computed from scratch with the executor's
prefill) and divides by what the profile predicts for it. The simulator can then predict that run with
the device at the measured speed (an availability trace of 1 / factor), which separates the model's
error from the machine's drift. The probe is a measurement taken before the run, never from the run.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sparkv.core.costs import CostTable
from sparkv.core.request import CellBlock
from sparkv.executor.models import LoadedModel
from sparkv.executor.prefill import LayerwisePrefill


@dataclass(frozen=True)
class DeviceSpeed:
    """Measured / predicted seconds of the probe's compute: 1.0 runs as profiled, 1.2 is 20 % slower."""

    factor: float
    measured_s: float  # median seconds of one sweep
    predicted_s: float  # the profile's seconds for the same sweep
    sweeps: int
    chunk_tokens: int
    layers: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def availability_spec(self, duration_s: float = 3600.0) -> str:
        """A scenario availability trace for the simulator: the device's share of its profiled speed."""
        return f"const:{1.0 / self.factor:.6g}B/s,{duration_s:g}s"


def probe_speed(
    loaded: LoadedModel, context_ids: torch.Tensor, query_ids: torch.Tensor, costs: CostTable, chunk_tokens: int,
    sweeps: int = 3,
) -> DeviceSpeed:
    """Compute chunk 0 through every layer `sweeps` times (one command per sweep, as a whole-chunk
    compute runs) and compare the median sweep with `costs`' prediction for that block."""
    if sweeps < 1:
        raise ValueError(f"sweeps must be >= 1, got {sweeps}")
    prefill = LayerwisePrefill(loaded, context_ids, query_ids, chunk_tokens, max_new_tokens=1)
    layers = prefill.num_layers
    block = CellBlock.one(0, 0, layers)
    times = []
    for _ in range(sweeps):
        prefill.computed[0] = 0  # from layer 0 again: every sweep does the same work
        prefill.hidden.pop(0, None)
        t0 = time.perf_counter()
        prefill.compute_block(block)
        if prefill.device.type == "cuda":
            torch.cuda.synchronize(prefill.device)
        times.append(time.perf_counter() - t0)
    measured = statistics.median(times)
    predicted = costs.compute_s(block)
    return DeviceSpeed(measured / predicted, measured, predicted, sweeps, prefill.request.chunk_len(0), layers)
