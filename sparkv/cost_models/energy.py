"""Energy of one request: radio power by state over the link lane, compute power over the compute lane.

Radio: the state machine of Huang et al., "A Close Examination of Performance and Power
Characteristics of 4G LTE Networks", MobiSys 2012: a promotion before the first byte, active power
rising linearly with downlink throughput (P = beta + alpha_d x Mbit/s), and a tail at high power after
the last byte. Compute: a device's active and idle power from its profile. Both are integrated over the
same timeline of spans that the simulator and the real executor write.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sparkv.core.errors import UserError
from sparkv.core.result import Span


@dataclass(frozen=True)
class RadioModel:
    """Power of a cellular or WiFi radio by RRC state; watts, seconds, W per Mbit/s."""

    name: str
    promotion_s: float  # idle -> connected before the first byte
    promotion_w: float
    active_base_w: float  # beta: active power at zero throughput
    active_w_per_mbps: float  # alpha_d: added power per Mbit/s of downlink goodput
    tail_s: float  # connected, no data, after the last byte
    tail_w: float
    idle_w: float  # RRC idle / DRX
    source: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


RADIO_MODELS: dict[str, RadioModel] = {
    m.name: m
    for m in (
        RadioModel(
            "lte", 0.2601, 1.2107, 1.28804, 0.05197, 11.576, 1.0600, 0.0,
            "Huang et al., MobiSys 2012, Table 3 (LTE): promotion 260.1 ms at 1210.7 mW, "
            "alpha_d 51.97 mW/Mbps, beta 1288.04 mW, tail 11.576 s at 1060.0 mW",
        ),
        RadioModel(
            "wifi", 0.0791, 0.1244, 0.13286, 0.13701, 0.2381, 0.1193, 0.0,
            "Huang et al., MobiSys 2012, Table 3 (WiFi): promotion 79.1 ms at 124.4 mW, "
            "alpha_d 137.01 mW/Mbps, beta 132.86 mW, tail 238.1 ms at 119.3 mW",
        ),
        RadioModel(
            "3g", 0.5821, 0.6594, 0.81788, 0.12212, 8.0882, 0.8039, 0.0,
            "Huang et al., MobiSys 2012, Table 3 (3G): promotion 582.1 ms at 659.4 mW, "
            "alpha_d 122.12 mW/Mbps, beta 817.88 mW, tail 8.088 s at 803.9 mW",
        ),
    )
}


def get_radio(name: str) -> RadioModel:
    model = RADIO_MODELS.get(name.lower())
    if model is None:
        raise UserError(f"unknown radio model {name!r}; choose from {', '.join(sorted(RADIO_MODELS))}")
    return model


@dataclass(frozen=True)
class ComputePower:
    """Device power while computing and while waiting; watts."""

    active_w: float
    idle_w: float
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def radio_energy_j(spans: list[Span], radio: RadioModel, end_s: float, count_tail: bool = True) -> float:
    """Radio energy from the link spans of one request, from its start (t=0) to `end_s`.

    The radio is promoted before the first transfer; between transfers it sits in the tail state
    (high power) or, after `tail_s` without data, idles; after the last transfer the whole tail is
    charged to the request when `count_tail` (it is the request's doing).
    """
    link = sorted((s for s in spans if s.lane == "link"), key=lambda s: s.start_s)
    if not link:
        return radio.idle_w * end_s
    energy = radio.promotion_s * radio.promotion_w
    busy_end = 0.0
    for span in link:
        gap = max(0.0, span.start_s - busy_end)
        if busy_end > 0.0:
            tail = min(gap, radio.tail_s)
            energy += tail * radio.tail_w + (gap - tail) * radio.idle_w
        duration = max(0.0, span.end_s - span.start_s)
        mbps = (span.bytes * 8 / 1e6) / duration if duration > 0 else 0.0
        energy += duration * (radio.active_base_w + radio.active_w_per_mbps * mbps)
        busy_end = max(busy_end, span.end_s)
    if count_tail:
        energy += radio.tail_s * radio.tail_w
    return energy


def compute_energy_j(spans: list[Span], power: ComputePower, end_s: float) -> tuple[float, float]:
    """(active, idle) joules of the compute lane over [0, end_s]."""
    busy = sum(max(0.0, min(s.end_s, end_s) - s.start_s) for s in spans if s.lane == "compute")
    busy = min(busy, end_s)
    return busy * power.active_w, (end_s - busy) * power.idle_w


def request_energy_j(
    spans: list[Span], radio: RadioModel, power: ComputePower, ttft_s: float
) -> dict[str, float]:
    """Energy of one request by component, in joules (a modelled estimate, in either world)."""
    active, idle = compute_energy_j(spans, power, ttft_s)
    return {"radio": radio_energy_j(spans, radio, ttft_s), "compute": active, "idle": idle}
