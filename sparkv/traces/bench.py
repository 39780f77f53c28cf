"""Micro-benchmark: a transfer as one `time_to_deliver` call versus stepping the link every millisecond.

Both methods deliver the same back-to-back transfers from t = 0 on the same trace; the stepping one is
what a simulator without cumulative byte counts would do (look up the rate, add rate * dt, repeat).
"""

from __future__ import annotations

import time

from sparkv.traces.trace import Trace


def _by_integral(trace: Trace, n_transfers: int, transfer_bytes: float) -> float:
    t = 0.0
    for _ in range(n_transfers):
        t = trace.time_to_deliver(t, transfer_bytes)
    return t


def _by_stepping(trace: Trace, n_transfers: int, transfer_bytes: float, step_s: float) -> float:
    t = 0.0
    rate_at = trace.rate_at
    for _ in range(n_transfers):
        got = 0.0
        while got < transfer_bytes:
            got += rate_at(t) * step_s
            t += step_s
    return t


def integral_vs_stepping(
    trace: Trace, n_transfers: int, transfer_bytes: float, step_s: float = 0.001
) -> dict[str, float]:
    """Wall time of both methods (s), their ratio (stepping / integral) and the end times they reach.

    The end times differ by up to one step per transfer: stepping rounds every transfer up to a step.
    """
    if n_transfers < 1:
        raise ValueError(f"n_transfers must be >= 1, got {n_transfers!r}")
    if not transfer_bytes > 0:
        raise ValueError(f"transfer_bytes must be > 0, got {transfer_bytes!r}")
    if not step_s > 0:
        raise ValueError(f"step_s must be > 0, got {step_s!r}")
    if trace.loop_bytes <= 0:
        raise ValueError(f"trace {trace.name!r} carries no bytes; stepping would never finish")
    t0 = time.perf_counter()
    end_integral = _by_integral(trace, n_transfers, transfer_bytes)
    integral_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    end_stepping = _by_stepping(trace, n_transfers, transfer_bytes, step_s)
    stepping_s = time.perf_counter() - t0
    return {
        "n_transfers": float(n_transfers),
        "transfer_bytes": float(transfer_bytes),
        "step_s": step_s,
        "integral_s": integral_s,
        "stepping_s": stepping_s,
        "ratio": stepping_s / integral_s if integral_s > 0 else float("inf"),
        "end_integral_s": end_integral,
        "end_stepping_s": end_stepping,
    }
