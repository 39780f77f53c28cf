"""Energy of one request: radio power by state over the link lane, compute power over the compute lane.

Radio: the state machine of Huang et al., "A Close Examination of Performance and Power
Characteristics of 4G LTE Networks", MobiSys 2012: a promotion before the first byte, active power
rising linearly with downlink throughput (P = beta + alpha_d x Mbit/s), and a tail at high power after
the last byte (3G: two tails, DCH then FACH). LTE, WiFi and 3G numbers are the paper's; 5G NSA mmWave
and low-band follow Narayanan et al., SIGCOMM 2021 (see each model's `source` for what is measured and
what is an estimate). Compute: a device's active and idle power from its profile. Both are integrated
over the same timeline of spans that the simulator and the real executor write.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from operator import attrgetter
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
    idle_w: float  # RRC idle / DRX, averaged over its paging cycle
    source: str
    tail2_s: float = 0.0  # a second, lower tail state (3G: FACH after DCH), 0 if none
    tail2_w: float = 0.0

    def __post_init__(self) -> None:
        for f in ("promotion_s", "promotion_w", "active_base_w", "active_w_per_mbps", "tail_s", "tail_w", "idle_w"):
            if getattr(self, f) < 0:
                raise ValueError(f"RadioModel.{f} must be >= 0, got {getattr(self, f)}")

    def active_w(self, mbps: float) -> float:
        """Power while receiving at `mbps` Mbit/s of downlink goodput."""
        return self.active_base_w + self.active_w_per_mbps * mbps

    def gap_j(self, gap_s: float) -> float:
        """Energy of `gap_s` seconds without data after a transfer: tail, second tail, then idle."""
        t1 = min(gap_s, self.tail_s)
        t2 = min(max(0.0, gap_s - self.tail_s), self.tail2_s)
        rest = max(0.0, gap_s - self.tail_s - self.tail2_s)
        return t1 * self.tail_w + t2 * self.tail2_w + rest * self.idle_w

    @property
    def full_tail_j(self) -> float:
        return self.tail_s * self.tail_w + self.tail2_s * self.tail2_w

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_HUANG = 'Huang et al., "A Close Examination of Performance and Power Characteristics of 4G LTE Networks", MobiSys 2012'
_NARAYANAN = (
    'Narayanan et al., "A Variegated Look at 5G in the Wild: Performance, Power, and QoE Implications", SIGCOMM 2021'
)
# LTE beta of Huang et al., to which the 5G models add the extra base power measured on the same phone.
_LTE_BETA_W = 1.28804

RADIO_MODELS: dict[str, RadioModel] = {
    m.name: m
    for m in (
        RadioModel(
            "lte", 0.2601, 1.2107, _LTE_BETA_W, 0.05197, 11.576, 1.0600, 0.5943 * 43.2 / 1280.2,
            f"{_HUANG}: Table 3 (promotion 260.1 ms at 1210.7 mW; tail base 1060.0 mW for 11576 ms; RRC_IDLE DRX "
            "on 594.3 mW for 43.2 ms every 1280.2 ms, averaged here) and the data-transfer model (alpha_d 51.97 "
            "mW/Mbps, beta 1288.04 mW). Tail DRX on-durations (1680 mW, ~1 ms every 20-40 ms, ~+2%) are folded "
            "into the base. Cross-checked with AT&T ARO's lte.conf (T_PROMOTION 0.26, P_TAIL 1.06, "
            "LTE_ALPHA_DOWN 51.97, P_IDLE_PING 0.594 every 1.28 s).",
        ),
        RadioModel(
            "wifi", 0.0791, 0.1244, 0.13286, 0.13701, 0.2381, 0.1193, 0.0772 * 7.6 / 308.2,
            f"{_HUANG}: Table 3 (promotion 79.1 ms at 124.4 mW; tail base 119.3 mW for 238.1 ms; beacon 77.2 mW "
            "for 7.6 ms every 308.2 ms, averaged as idle) and the data-transfer model (alpha_d 137.01 mW/Mbps, "
            "beta 132.86 mW)",
        ),
        RadioModel(
            "3g", 0.5821, 0.6594, 0.81788, 0.12212, 8.0882, 0.8039, 0.3742 * 55.4 / 5112.4,
            f"{_HUANG}: Table 3 (promotion 582.1 ms at 659.4 mW; DCH tail 803.9 mW for 8088.2 ms then FACH tail "
            "601.3 mW for 824.2 ms; idle DRX 374.2 mW for 55.4 ms every 5112.4 ms, averaged) and the data-transfer "
            "model (alpha_d 122.12 mW/Mbps, beta 817.88 mW)",
            tail2_s=0.8242,
            tail2_w=0.6013,
        ),
        RadioModel(
            "5g-mmwave", 0.2601, 1.2107, _LTE_BETA_W + 2.59, 0.00167, 11.576, (_LTE_BETA_W + 2.59) * 1.06 / 1.28804,
            0.5943 * 43.2 / 1280.2,
            f"{_NARAYANAN} (5G NSA mmWave, Verizon, Galaxy S20U). alpha_d 1.67 mW/Mbps and base = LTE beta + 2.59 W "
            "are our least-squares line through per-target mean power read off the paper's released data "
            "(SIGCOMM21-5G/artifact, Data-Transfer-Power/MN-Transfer/data-processed/MN-Transfer_combined.csv, "
            "downlink 1-1000 Mbit/s: 5.23 W intercept vs 2.64 W for LTE on the same phone, whole-phone power); "
            "approximate (group means read by eye). Promotion, tail and idle: estimate, LTE's values (NSA 5G is "
            "anchored on LTE RRC; the paper's RRC table could not be consulted here), tail power scaled by LTE's "
            "tail/base ratio",
        ),
        RadioModel(
            "5g-lowband", 0.2601, 1.2107, _LTE_BETA_W + 0.20, 0.0181, 11.576, (_LTE_BETA_W + 0.20) * 1.06 / 1.28804,
            0.5943 * 43.2 / 1280.2,
            f"{_NARAYANAN} (5G NSA low-band, Verizon). alpha_d 18.1 mW/Mbps and base = LTE beta + 0.20 W from the "
            "same artifact file as 5g-mmwave (downlink 1-50 Mbit/s group means, read by eye; approximate). "
            "Promotion, tail and idle: estimate, LTE's values (NSA), tail power scaled by LTE's tail/base ratio",
        ),
    )
}
RADIO_ALIASES = {"5g": "5g-mmwave", "4g": "lte", "5g-nsa-mmwave": "5g-mmwave", "5g-nsa-lowband": "5g-lowband"}


def get_radio(name: str) -> RadioModel:
    key = RADIO_ALIASES.get(name.lower(), name.lower())
    model = RADIO_MODELS.get(key)
    if model is None:
        names = sorted([*RADIO_MODELS, *RADIO_ALIASES])
        raise UserError(f"unknown radio model {name!r}; choose from {', '.join(names)}")
    return model


@dataclass(frozen=True)
class ComputePower:
    """Device power while computing and while waiting; watts."""

    active_w: float
    idle_w: float
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_START = attrgetter("start_s")


def radio_energy_j(spans: list[Span], radio: RadioModel, end_s: float, count_tail: bool = True) -> float:
    """Radio energy of one request from its start (t=0) to `end_s`, from its link spans.

    Idle until the promotion that ends when the first transfer starts (a transfer starting before
    `promotion_s` pays the whole promotion anyway); each transfer at `active_w(goodput)`; between
    transfers the tail (then idle once it runs out); after the last transfer the whole tail when
    `count_tail` (the request caused it), else what remains of it up to `end_s`.
    """
    link = sorted([s for s in spans if s.lane == "link"], key=_START)
    if not link:
        return radio.idle_w * max(0.0, end_s)
    energy = radio.promotion_s * radio.promotion_w + radio.idle_w * max(0.0, link[0].start_s - radio.promotion_s)
    # the loop below is `gap_j(max(0.0, gap))` and `active_w` with the max/min calls written out (same
    # arithmetic, same order): a request has a span per transfer, most right after the one before
    zero_gap_j = radio.gap_j(0.0)
    base_w, w_per_mbps = radio.active_base_w, radio.active_w_per_mbps
    busy_end = link[0].start_s
    for span in link:
        span_start, span_end = span.start_s, span.end_s
        gap = span_start - busy_end
        energy += radio.gap_j(gap) if gap > 0.0 else zero_gap_j
        start = busy_end if busy_end > span_start else span_start  # overlapping spans: count the radio busy once
        duration = span_end - start
        duration = duration if duration > 0.0 else 0.0
        full = span_end - span_start
        full = full if full > 0.0 else 0.0
        mbps = (span.bytes * 8 / 1e6) / full if full > 0 else 0.0
        energy += duration * (base_w + w_per_mbps * mbps)
        busy_end = span_end if span_end > busy_end else busy_end
    if count_tail:
        energy += radio.full_tail_j
    else:
        energy += radio.gap_j(max(0.0, end_s - busy_end))
    return energy


def compute_energy_j(spans: list[Span], power: ComputePower, end_s: float) -> tuple[float, float]:
    """(active, idle) joules of the compute lane over [0, end_s]."""
    parts = []  # max(0.0, min(s.end_s, end_s) - s.start_s) per compute span, summed below as `sum` does
    for s in spans:
        if s.lane == "compute":
            part = (end_s if end_s < s.end_s else s.end_s) - s.start_s
            parts.append(part if part > 0.0 else 0.0)
    busy = sum(parts)
    busy = min(busy, end_s)
    return busy * power.active_w, (end_s - busy) * power.idle_w


def request_energy_j(
    spans: list[Span], radio: RadioModel, power: ComputePower, ttft_s: float
) -> dict[str, float]:
    """Energy of one request by component, in joules (a modelled estimate, in either world)."""
    active, idle = compute_energy_j(spans, power, ttft_s)
    return {"radio": radio_energy_j(spans, radio, ttft_s), "compute": active, "idle": idle}
