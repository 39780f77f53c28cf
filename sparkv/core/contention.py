"""How much slower compute runs while the link delivers cells: a factor that grows with the received rate.

The receive path (socket reads, CRC, decode, copy into the cache) takes CPU time in proportion to the bytes
it takes in, so on a small CPU compute that overlaps it slows by more at a higher rate: measured here on the
netns link x1.04 at 20 Mbit/s received, x1.18 at 77 and x1.94 at 282. A profile holds either one factor
(`compute_slowdown`, measured at one rate and applied at every rate) or a curve of measured points
(`compute_slowdown_curve`: [received bytes/s, factor] pairs), interpolated linearly from (0, 1.0) through the
points and held at the last point's factor beyond it (the receiver cannot take in more than its ceiling).
The simulator, the oracle's replay and its planner all read the factor from here, at the rate the link
delivers when a compute command starts.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sparkv.core.costs import BandwidthForecast

CURVE_KEY = "compute_slowdown_curve"  # a link calibration's measured [received bytes/s, factor] points
FACTOR_KEY = "compute_slowdown"  # a link calibration's single factor


@dataclass(frozen=True)
class ReceiveContention:
    """Compute slowdown while receiving: `constant` at every rate, or interpolated over `points`."""

    constant: float = 1.0  # used where `points` is empty
    points: tuple[tuple[float, float], ...] = ()  # (received bytes/s, factor), rates ascending and > 0

    def __post_init__(self) -> None:
        if not self.constant > 0:
            raise ValueError(f"compute slowdown must be positive, got {self.constant}")
        last = 0.0
        for rate, factor in self.points:
            if not rate > last:
                raise ValueError(f"slowdown curve rates must be positive and ascending, got {self.points}")
            if not factor > 0:
                raise ValueError(f"slowdown curve factors must be positive, got {self.points}")
            last = rate
        object.__setattr__(self, "_rates", (0.0, *(r for r, _ in self.points)))
        object.__setattr__(self, "_factors", (1.0, *(f for _, f in self.points)))

    @property
    def varies(self) -> bool:
        """The factor depends on the rate (a measured curve)."""
        return bool(self.points)

    @property
    def neutral(self) -> bool:
        """Compute never slows."""
        return not self.points and self.constant == 1.0

    def factor(self, rate_bps: float) -> float:
        """The slowdown of compute started while the link delivers `rate_bps` bytes/s."""
        if not self.points:
            return self.constant
        rates: tuple[float, ...] = self._rates  # type: ignore[attr-defined]
        factors: tuple[float, ...] = self._factors  # type: ignore[attr-defined]
        if rate_bps >= rates[-1]:
            return factors[-1]
        if rate_bps <= 0.0:
            return 1.0
        i = bisect_right(rates, rate_bps) - 1
        r0, f0 = rates[i], factors[i]
        return f0 + (factors[i + 1] - f0) * (rate_bps - r0) / (rates[i + 1] - r0)

    def during(self, forecast: BandwidthForecast, trace_t_s: float, efficiency: float) -> float:
        """The slowdown of compute started at trace time `trace_t_s` while a transfer is in flight, on a
        link that delivers `forecast`'s rate x `efficiency` (the simulator's rule; its replays use it too)."""
        if not self.points:
            return self.constant
        return self.factor(forecast.rate_at(trace_t_s) * efficiency)

    @classmethod
    def from_link(cls, link: Mapping[str, Any]) -> ReceiveContention:
        """From a profile's link calibration: the curve where it has one, else the single factor (1.0 if
        neither was measured)."""
        curve = link.get(CURVE_KEY)
        if curve:
            return cls(float(link.get(FACTOR_KEY, 1.0)), curve_points(curve))
        return cls(float(link.get(FACTOR_KEY, 1.0)))


def curve_points(curve: Sequence[Sequence[float]]) -> tuple[tuple[float, float], ...]:
    """Validated (rate, factor) pairs from a JSON list of pairs."""
    out = []
    for pair in curve:
        if len(pair) != 2:
            raise ValueError(f"a slowdown curve point is [received bytes/s, factor], got {pair!r}")
        out.append((float(pair[0]), float(pair[1])))
    return tuple(sorted(out))
