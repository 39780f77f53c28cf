"""Sender-side pacing to a bandwidth trace: the fallback link when traffic shaping is not allowed.

The pacer is a token bucket whose fill is the trace's cumulative byte count: a piece of n bytes may
leave when the trace has delivered n more bytes since the previous piece's bytes were delivered. The
bucket is BUCKET_S deep in trace time: a sender running late inside a response (timer overshoot,
encoding a cell) may catch up by that much. The first frame of a response starts from now: capacity
the link had while nothing was being sent is lost, as on a wireless link and in the simulator, whose
transfer's payload flows from its first byte (banked idle credit made real transfers up to 12 % faster
than the trace at 300 Mbit/s). Trace time 0 is the
clock start (`set_clock`), by default the pacer's creation. Pieces are sized to about 10 ms of the
current rate, so the flow is smooth and a cancel takes effect within one small piece.

Pacing waits are the link's real delivery time, not stand-ins for work: they happen in `_pace_until`,
an `Event.wait` with a timeout that a cancel or a shutdown interrupts.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sparkv.executor.net.protocol import PIECE_BYTES

MIN_PIECE_BYTES = 1024
PIECE_WINDOW_S = 0.01  # a paced piece carries about this much time of the current rate
BUCKET_S = 0.02  # token-bucket depth, in seconds of the trace
PACE_STEP_S = 0.1  # longest single wait, so shutdown is noticed even while a zero-rate segment plays


class TraceLike(Protocol):
    """What pacing needs of a trace (sparkv.traces.Trace has it): bytes/s inside, times in seconds."""

    def bytes_between(self, t0_s: float, t1_s: float) -> float: ...

    def time_to_deliver(self, t0_s: float, n_bytes: float) -> float: ...


def trace_to_json(trace: Any) -> dict[str, Any]:
    """{"times_s", "rates_bps", "duration_s"} of a piecewise-constant trace (sparkv.traces.Trace)."""
    for attr in ("times_s", "rates_bps", "duration_s"):
        if not hasattr(trace, attr):
            raise ValueError(f"trace {trace!r} has no {attr!r}: pass a sparkv.traces.Trace or a trace file path")
    return {"times_s": [float(t) for t in np.asarray(trace.times_s)],
            "rates_bps": [float(r) for r in np.asarray(trace.rates_bps)],
            "duration_s": float(trace.duration_s), "name": str(getattr(trace, "name", "trace"))}


def load_trace_arg(path: str | Path) -> TraceLike:
    """A trace from the server's --trace argument: our JSON (see trace_to_json) or any trace file."""
    p = Path(path)
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        if isinstance(data, dict) and "times_s" in data and "rates_bps" in data:
            from sparkv.traces.trace import Trace

            return Trace(np.asarray(data["times_s"], dtype=np.float64),
                         np.asarray(data["rates_bps"], dtype=np.float64),
                         float(data["duration_s"]), str(data.get("name", p.stem)), str(p))
    from sparkv.traces import load_trace

    return load_trace(p)


class Pacer:
    """Shared by every connection of one server: the trace is one link, whatever the number of flows."""

    def __init__(self, trace: TraceLike, t0_s: float | None = None) -> None:
        self.trace = trace
        self._lock = threading.Lock()
        self._t0_s = time.perf_counter() if t0_s is None else t0_s  # perf_counter instant of trace time 0
        self._free_at_s = 0.0  # trace time at which every reserved byte has been delivered

    def set_clock(self, t0_s: float) -> None:
        """Make `t0_s` (a perf_counter instant) the trace's time 0, with an empty link."""
        with self._lock:
            self._t0_s, self._free_at_s = t0_s, 0.0

    def trace_time(self, now_s: float | None = None) -> float:
        now = time.perf_counter() if now_s is None else now_s
        return max(0.0, now - self._t0_s)

    def piece_bytes(self) -> int:
        """Size of the next paced piece: about PIECE_WINDOW_S of the current rate."""
        tau = self.trace_time()
        n = self.trace.bytes_between(tau, tau + PIECE_WINDOW_S)
        return int(min(PIECE_BYTES, max(MIN_PIECE_BYTES, n)))

    def reserve(self, n_bytes: int, fresh: bool = False) -> float:
        """perf_counter instant when `n_bytes` more will have crossed the link (math.inf: never). A `fresh`
        reservation (a response's first frame) gets no credit for the time the link sat idle."""
        with self._lock:
            now = self.trace_time()
            start = max(self._free_at_s, now if fresh else now - BUCKET_S, 0.0)
            finish = self.trace.time_to_deliver(start, float(n_bytes))
            self._free_at_s = finish
            return self._t0_s + finish


def _pace_until(when_s: float, cancel: threading.Event, stop: threading.Event, deadline_s: float) -> bool:
    """Hold the next piece until the trace has carried it (perf_counter instant `when_s`).

    True when the time has come; False when `cancel` or `stop` is set first or when `deadline_s` comes
    first (a zero-rate stretch longer than the sender will wait).
    """
    while True:
        if cancel.is_set() or stop.is_set():
            return False
        now = time.perf_counter()
        if now >= when_s:
            return True
        if now >= deadline_s:
            return False
        wait_s = min(when_s, deadline_s) - now
        if not math.isfinite(wait_s):
            wait_s = PACE_STEP_S
        cancel.wait(min(wait_s, PACE_STEP_S))
