"""Fitting the link model to transfers timed over a real link (`sparkv.profiling.link_calibration` times them).

The simulator's transfer takes  rtt + per_transfer + bytes / (rate x efficiency)  (plus installation,
which the profiler measures separately). Given a way to run a transfer of N bytes at a known, steady
rate (`fetch(n_bytes) -> elapsed seconds`), timing several sizes and fitting a line by least squares
gives the fixed time (intercept) and the effective goodput (1 / slope), so

    per_transfer_s = intercept - rtt_s      efficiency = goodput / rate.

The slope comes from ordinary least squares (large transfers dominate it, as they should: they
measure the rate), the intercept from the median of t - bytes x slope over all sizes (small transfers
measure it). A shaper's token bucket (tc tbf, sender pacing) lets the first `burst` bytes of a
transfer through at once, so the line is fitted to max(0, bytes - burst) for every candidate burst
(0 and each measured size) and the burst with the smallest median relative error is kept; the
simulator's wireless link has no such burst, so it is reported (`burst_bytes`) but not applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from sparkv.cost_models.fit import error_summary
from sparkv.cost_models.profiles import DeviceProfile


@dataclass(frozen=True)
class LinkCalibration:
    """Fitted link constants and how well the line fits."""

    rate_bps: float  # the shaped rate the transfers ran at, bytes/s
    rtt_s: float  # round trip the link was configured with (subtracted from the intercept)
    fixed_s: float  # fitted intercept: seconds every transfer pays regardless of size
    per_transfer_s: float  # fixed_s - rtt_s, clipped at 0: request handling, framing, server service
    goodput_bps: float  # 1 / fitted slope
    efficiency: float  # goodput / rate, clipped to (0, 1] (a shaper's burst can push the raw ratio above 1)
    burst_bytes: int  # bytes a shaper's bucket let through at once (0 if none was visible)
    rel_error: dict[str, float]  # median / p90 / max relative error of the line on the samples
    samples: list[tuple[int, float]]  # (bytes, median seconds)

    def to_link_dict(self) -> dict[str, float]:
        """The values a profile's `link` dict holds (names match `LinkConfig` where they overlap)."""
        return {
            "per_transfer_s": self.per_transfer_s,
            "efficiency": self.efficiency,
            "rtt_s": self.rtt_s,
            "rate_bps": self.rate_bps,
            "fixed_s": self.fixed_s,
            "goodput_bps": self.goodput_bps,
            "burst_bytes": float(self.burst_bytes),
            "fit_median_rel_error": self.rel_error["median"],
            "fit_p90_rel_error": self.rel_error["p90"],
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_link(samples: Sequence[tuple[int, float]], rate_bps: float, rtt_s: float = 0.0) -> LinkCalibration:
    """Line t = fixed + bytes / goodput through (bytes, seconds) samples (see the module docstring)."""
    if rate_bps <= 0:
        raise ValueError(f"rate_bps must be positive, got {rate_bps}")
    if len({b for b, _ in samples}) < 2:
        raise ValueError(f"need transfers of at least two sizes, got {sorted({b for b, _ in samples})}")
    b = np.array([s[0] for s in samples], dtype=np.float64)
    t = np.array([s[1] for s in samples], dtype=np.float64)
    if np.any(t <= 0):
        raise ValueError("every transfer must take a positive time")
    best: tuple[float, float, float, float] | None = None  # (median rel error, burst, fixed, slope)
    sizes = sorted(set(b.tolist()))
    for burst in [0.0, *sizes[1:-2]]:  # a burst is visible only if >= 2 sizes fit in it and >= 2 exceed it
        x = np.maximum(0.0, b - burst)
        slope = float(np.polyfit(x, t, 1)[0])
        if slope <= 0:
            continue
        fixed = max(0.0, float(np.median(t - x * slope)))
        err = float(np.median(np.abs(fixed + x * slope - t) / t))
        if best is None or err < best[0] * 0.8:  # a burst must clearly help to be kept
            best = (err, burst, fixed, slope)
    if best is None:
        raise ValueError("transfer time does not grow with size: is the rate shaped?")
    _, burst, fixed, slope = best
    pred = fixed + np.maximum(0.0, b - burst) * slope
    goodput = 1.0 / slope
    return LinkCalibration(
        rate_bps=rate_bps,
        rtt_s=rtt_s,
        fixed_s=fixed,
        per_transfer_s=max(0.0, fixed - rtt_s),
        goodput_bps=goodput,
        efficiency=float(min(1.0, max(1e-6, goodput / rate_bps))),
        burst_bytes=int(burst),
        rel_error=error_summary(np.abs(pred - t) / t),
        samples=[(int(x), float(y)) for x, y in zip(b, t, strict=True)],
    )


def apply_calibration(profile: DeviceProfile, calibration: LinkCalibration, kind: str = "") -> DeviceProfile:
    """A copy of `profile` whose `link` dict holds the calibrated values (and the link kind measured).

    A receive contention measured earlier on the same kind of link (`compute_slowdown*`) is kept: it is a
    measurement of its own, which `sparkv profile --link` replaces only when it measures it again."""
    link = calibration.to_link_dict()
    old = profile.link_for(kind) if kind else profile.link
    link.update({k: v for k, v in (old or {}).items() if k.startswith("compute_slowdown")})
    if not kind:
        measurements = {**profile.measurements, "link_samples": calibration.samples}
        return replace(profile, link=link, measurements=measurements)
    link["kind"] = kind  # type: ignore[assignment]
    links = {**profile.links, kind: link}
    samples = dict(profile.measurements.get("link_samples_by_kind", {}))
    old_kind = str(profile.link.get("kind", "")) if profile.link else ""
    if old_kind and old_kind != kind and "link_samples" in profile.measurements:
        samples.setdefault(old_kind, profile.measurements["link_samples"])  # the default link's, kept by kind
    samples[kind] = calibration.samples
    # the simulator's default calibration: the first measured, or this kind's again
    default = link if not profile.link or old_kind == kind else profile.link
    measurements = {**profile.measurements, "link_samples_by_kind": samples}
    if default is link:
        measurements["link_samples"] = calibration.samples  # `link_samples` are always the default link's
    return replace(profile, link=default, links=links, measurements=measurements)


@dataclass(frozen=True)
class ReceiveFit:
    """Wire efficiency and the receive path's per-byte cost, from link fits at several shaped rates.

    A transfer's seconds per byte at rate r is 1 / (r x efficiency) + s_per_byte: the wire's share falls with
    the rate, the receiver's (socket copies, framing, installing) does not, so the goodput a fast link reaches
    levels off below its rate. A least-squares line of each fit's 1 / goodput against 1 / rate gives both.
    """

    efficiency: float  # goodput / rate of the wire alone, (0, 1]
    s_per_byte: float  # receive path, seconds per byte, >= 0
    points: list[tuple[float, float]]  # (shaped rate, measured goodput), bytes/s
    rel_error: dict[str, float]  # of the goodputs the two numbers predict at the measured rates

    def goodput_at(self, rate_bps: float) -> float:
        """Predicted goodput (bytes/s) at shaped rate `rate_bps`."""
        return 1.0 / (1.0 / (rate_bps * self.efficiency) + self.s_per_byte)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_receive_cost(calibrations: Sequence[LinkCalibration]) -> ReceiveFit:
    """`ReceiveFit` from link fits at two or more different shaped rates (see its docstring)."""
    rates = sorted({c.rate_bps for c in calibrations})
    if len(rates) < 2:
        raise ValueError(f"need link fits at two or more rates to separate wire and receiver, got {rates}")
    x = np.array([1.0 / c.rate_bps for c in calibrations])
    y = np.array([1.0 / c.goodput_bps for c in calibrations])
    a, c0 = (float(v) for v in np.polyfit(x, y, 1))
    if c0 < 0 or a <= 0:  # the receiver kept up at every rate measured: the wire alone explains the goodputs
        a, c0 = max(float(np.sum(x * y) / np.sum(x * x)), 1e-12), 0.0
    if a < 1.0:  # the wire cannot beat its rate: efficiency 1, the rest is the receiver's
        a, c0 = 1.0, max(0.0, float(np.median(y - x)))
    fit = ReceiveFit(1.0 / a, c0, [(c.rate_bps, c.goodput_bps) for c in calibrations], {})
    pred = np.array([fit.goodput_at(c.rate_bps) for c in calibrations])
    good = np.array([c.goodput_bps for c in calibrations])
    return replace(fit, rel_error=error_summary(np.abs(pred - good) / good))


def apply_receive_fit(profile: DeviceProfile, fit: ReceiveFit, kind: str) -> DeviceProfile:
    """A copy of `profile` whose `kind` link calibration (and the default link, when it is that kind) holds the
    fit's efficiency and receive cost; the points go to `measurements["receive_by_kind"]`."""
    def updated(link: dict[str, float]) -> dict[str, float]:
        return {**link, "efficiency": fit.efficiency, "receive_s_per_byte": fit.s_per_byte}

    links = dict(profile.links)
    if kind in links:
        links[kind] = updated(links[kind])
    default = profile.link
    if default and str(default.get("kind", "")) == kind:
        default = updated(default)
    measurements = {**profile.measurements,
                    "receive_by_kind": {**profile.measurements.get("receive_by_kind", {}), kind: fit.to_dict()}}
    return replace(profile, link=default, links=links, measurements=measurements)
