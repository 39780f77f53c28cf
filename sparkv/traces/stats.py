"""Summary statistics and plots of traces, in the units people quote: Mbit/s and seconds.

Percentiles are time-weighted over one loop (a rate that holds for 10 s counts ten times a rate that
holds for 1 s). Outage time is the total time the rate is below a threshold, 0.1 Mbit/s by default:
below that a KV transfer of even a few MB takes minutes, so for this project the link is effectively down.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sparkv.traces.trace import Trace

BPS_PER_MBIT = 1e6 / 8.0  # bytes per second in one Mbit/s
OUTAGE_THRESHOLD_BPS = 0.1 * BPS_PER_MBIT  # 0.1 Mbit/s


@dataclass(frozen=True)
class TraceStats:
    """One loop of a trace, summarised. Rates in Mbit/s (bits!), times in seconds."""

    name: str
    duration_s: float  # length of one loop
    mean_mbit_s: float  # time-weighted mean rate
    p10_mbit_s: float  # time-weighted 10th percentile of the rate
    p50_mbit_s: float  # time-weighted median
    p90_mbit_s: float  # time-weighted 90th percentile
    outage_s: float  # time with rate below outage_threshold_mbit_s
    outage_threshold_mbit_s: float  # the threshold used for outage_s

    @classmethod
    def of(cls, trace: Trace, outage_threshold_bps: float = OUTAGE_THRESHOLD_BPS) -> TraceStats:
        """Statistics of one loop of `trace`."""
        p10, p50, p90 = time_weighted_percentiles(trace, (10.0, 50.0, 90.0))
        widths = segment_widths(trace)
        outage = float(widths[trace.rates_bps < outage_threshold_bps].sum())
        return cls(
            name=trace.name,
            duration_s=trace.duration_s,
            mean_mbit_s=trace.mean_bps / BPS_PER_MBIT,
            p10_mbit_s=p10 / BPS_PER_MBIT,
            p50_mbit_s=p50 / BPS_PER_MBIT,
            p90_mbit_s=p90 / BPS_PER_MBIT,
            outage_s=outage,
            outage_threshold_mbit_s=outage_threshold_bps / BPS_PER_MBIT,
        )


def segment_widths(trace: Trace) -> np.ndarray:
    """(n,) seconds each rate holds within one loop."""
    return np.diff(np.append(trace.times_s, trace.duration_s))


def time_weighted_percentiles(trace: Trace, percentiles: Sequence[float]) -> list[float]:
    """Rates (bytes/s) below which the link spends each given percentage of its time."""
    order = np.argsort(trace.rates_bps, kind="stable")
    rates = trace.rates_bps[order]
    cum = np.cumsum(segment_widths(trace)[order])
    out = []
    for p in percentiles:
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {p!r}")
        i = int(np.searchsorted(cum, p / 100.0 * cum[-1], side="left"))
        out.append(float(rates[min(i, rates.size - 1)]))
    return out


def trace_stats(trace: Trace, outage_threshold_bps: float = OUTAGE_THRESHOLD_BPS) -> TraceStats:
    """Same as `TraceStats.of`."""
    return TraceStats.of(trace, outage_threshold_bps)
