"""The link between the KV server and the device, replaying a bandwidth trace in real time.

Two kinds, recorded as `Link.kind`:

- "netns-tbf" (`NetnsLink`): the server runs inside its own network namespace; a tc token-bucket
  filter on its veth egress is re-rated every `step_s` (default 0.1 s) to the trace's mean rate over
  that step (`tc qdisc change`), by a background thread. Real TCP over a real shaper.
  The veth caps its packets at a few TCP segments (sparkv.executor.net.netns explains why: a GSO packet
  larger than the burst of a slower step wedges tbf). When the link fails, the client's error quotes
  `describe_shaper` (player thread, last setting, tc counters) and the server's last log lines.
- "pacing" (`PacingLink`): the server, on loopback, paces its own sends to the trace (sparkv.executor.
  net_pacing). Used where namespaces are refused.

`make_link("auto", ...)` tries netns and falls back to pacing, saying why in `Link.reason`. Trace time 0
is the last `start_clock(t0)` (a perf_counter instant; default now), else the link's opening.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sparkv.executor.net.launch import ServerHandle, start_server
from sparkv.executor.net.netns import (
    LATENCY_S,
    MIN_RATE_BPS,
    Netns,
    NetnsUnavailable,
    create_netns,
    delete_netns,
    exists,
    gso_max_segs,
    set_tbf,
    tbf_status,
)
from sparkv.executor.net.pacing import TraceLike

log = logging.getLogger(__name__)
STEP_S = 0.1  # the netns link re-rates its shaper at most this often
RATE_TOLERANCE = 0.005  # a step whose rate differs by less than this fraction keeps the old setting


@dataclass(frozen=True)
class RateChange:
    """One rate the shaper was set to."""

    trace_s: float  # start of the trace step it plays
    rate_bps: float  # the trace's mean rate over that step, bytes/s
    applied_bps: float  # tbf's rate: max(rate_bps, MIN_RATE_BPS) x the frame overhead (frames, not payload)
    wall_s: float  # perf_counter instant the change took effect
    took_s: float  # how long the tc call took


class Link(Protocol):
    """A running KV server behind a shaped link; a context manager."""

    kind: str  # "netns-tbf" or "pacing"
    reason: str  # why this kind (e.g. why auto fell back to pacing)
    server: ServerHandle
    rate_changes: list[RateChange]  # shaper settings applied, in order (empty for pacing)

    def start_clock(self, t0_s: float | None = None) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Link: ...

    def __exit__(self, *exc: object) -> None: ...


class PacingLink:
    """Sender-side pacing on loopback: the server never sends faster than the trace allows."""

    kind = "pacing"

    def __init__(self, trace: TraceLike, store_root: Path | str, reason: str = "requested",
                 faults: tuple[str, ...] = ()) -> None:
        self.trace, self.reason = trace, reason
        self.rate_changes: list[RateChange] = []  # the server follows the trace itself, continuously
        self.server = start_server(store_root, "127.0.0.1", 0, pacing_trace=trace, faults=faults)
        self.clock_starts: list[float] = []

    def start_clock(self, t0_s: float | None = None) -> None:
        t0 = time.perf_counter() if t0_s is None else t0_s
        self.clock_starts.append(t0)
        if not self.server.set_clock(t0):
            log.warning("pacing link: the server did not acknowledge the clock start (is it alive?)")

    def close(self) -> None:
        self.server.stop()

    def __enter__(self) -> PacingLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NetnsLink:
    """The server in a network namespace behind tc tbf, whose rate a thread changes as the trace plays."""

    kind = "netns-tbf"

    def __init__(self, trace: TraceLike, store_root: Path | str, step_s: float = STEP_S,
                 latency_s: float = LATENCY_S, faults: tuple[str, ...] = ()) -> None:
        if not step_s > 0:
            raise ValueError(f"step_s must be > 0, got {step_s!r}")
        self.trace, self.step_s, self.latency_s = trace, step_s, latency_s
        self.reason = "network namespaces permitted"
        self.rate_changes: list[RateChange] = []
        self.clock_starts: list[float] = []
        self._t0_s = time.perf_counter()
        self._current_bps = math.nan
        self._stop, self._restart = threading.Event(), threading.Event()
        self.player_error = ""  # why the player thread stopped early, if it did
        self.ns: Netns = create_netns()  # NetnsUnavailable when refused
        try:
            try:
                self._apply(0.0, self._step_rate(0.0), add=True)
            except RuntimeError as exc:
                raise NetnsUnavailable(f"tc tbf refused: {exc}") from exc
            self.server = start_server(store_root, self.ns.ns_addr, 0, netns=self.ns.name, faults=faults)
            self.server.diagnosers.append(self.describe_shaper)
        except BaseException:
            delete_netns(self.ns)
            raise
        self._player = threading.Thread(target=self._play, name="sparkv-tbf-player", daemon=True)
        self._player.start()

    def _step_rate(self, step_start_s: float) -> float:
        """Mean trace rate over [step_start_s, step_start_s + step_s), bytes/s."""
        return self.trace.bytes_between(step_start_s, step_start_s + self.step_s) / self.step_s

    def _apply(self, trace_s: float, rate_bps: float, add: bool = False) -> None:
        t = time.perf_counter()
        applied = set_tbf(self.ns, rate_bps, self.latency_s, change=not add)
        now = time.perf_counter()
        self._current_bps = rate_bps
        self.rate_changes.append(RateChange(trace_s, rate_bps, applied, now, now - t))

    def _play(self) -> None:
        """Re-rate the shaper at every step boundary of trace time until closed."""
        try:
            self._play_steps()
        except Exception as exc:  # the shaper would stay at its last rate: say so, loudly
            self.player_error = f"player failed: {exc!r}"
            log.error("netns link: %s; the shaper keeps its last rate", self.player_error)

    def _play_steps(self) -> None:
        while not self._stop.is_set():
            self._restart.clear()
            t0 = self._t0_s
            k = math.floor(max(0.0, time.perf_counter() - t0) / self.step_s)
            rate = self._step_rate(k * self.step_s)
            if not math.isclose(rate, self._current_bps, rel_tol=RATE_TOLERANCE):
                try:
                    self._apply(k * self.step_s, rate)
                except RuntimeError as exc:  # the namespace went away under us: nothing left to shape
                    self.player_error = f"tc failed: {exc}"
                    log.warning("netns link: %s", exc)
                    return
            self._wait_for_step(t0 + (k + 1) * self.step_s)

    def describe_shaper(self) -> str:
        """The shaper's state for an error message: the player thread, its last setting, tc's counters."""
        if not exists(self.ns):
            return f"netns {self.ns.name} is gone"
        thread = getattr(self, "_player", None)
        player = "running" if thread is not None and thread.is_alive() else "stopped"
        if self._stop.is_set():
            player += " (link closed)"
        elif self.player_error:
            player += f" ({self.player_error})"
        last = self.rate_changes[-1] if self.rate_changes else None
        now = time.perf_counter()
        setting = (f"last set {now - last.wall_s:.2f} s ago to {last.rate_bps * 8e-6:.3f} Mbit/s of payload "
                   f"(trace t={last.trace_s:.2f} s, now t={max(0.0, now - self._t0_s):.2f} s)") if last else "never set"
        status = tbf_status(self.ns)
        text = f"shaper player {player}, {setting}; {status}"
        burst, backlog = re.search(r"burst (\d+)b", status), re.search(r"backlog (\d+)b (\d+)p", status)
        if burst and backlog and int(backlog.group(2)) > 0:
            mean = int(backlog.group(1)) / int(backlog.group(2))
            if mean > int(burst.group(1)):
                text += (f"; queued packets average {mean:.0f} B, more than the {burst.group(1)} B burst: tbf "
                         f"cannot send them (GSO packets? the veth's gso_max_segs is {gso_max_segs(self.ns)})")
        return text

    def _wait_for_step(self, when_s: float) -> None:
        """Pacing wait: hold the current rate until the next step boundary (or a clock restart/close)."""
        while not (self._stop.is_set() or self._restart.is_set()):
            remaining = when_s - time.perf_counter()
            if remaining <= 0:
                return
            self._restart.wait(min(remaining, self.step_s))

    def start_clock(self, t0_s: float | None = None) -> None:
        self._t0_s = time.perf_counter() if t0_s is None else t0_s
        self.clock_starts.append(self._t0_s)
        self._restart.set()

    def close(self) -> None:
        """Stop the player and the server, then delete the namespace and veth (always)."""
        self._stop.set()
        self._restart.set()
        try:
            self._player.join(timeout=5.0)
            self.server.stop()
        finally:
            delete_netns(self.ns)

    def __enter__(self) -> NetnsLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_link(kind: str, trace: TraceLike, store_root: Path | str, **options: Any) -> Link:
    """An open link of `kind` ("netns", "pacing" or "auto"); use it as a context manager to close it.

    options: `faults` (server fault specs) for both; `step_s`, `latency_s` for netns.
    """
    faults = tuple(options.pop("faults", ()))
    if kind == "pacing":
        if options:
            raise ValueError(f"pacing link takes no options {sorted(options)}")
        return PacingLink(trace, store_root, "requested", faults)
    if kind == "netns":
        return NetnsLink(trace, store_root, faults=faults, **options)
    if kind != "auto":
        raise ValueError(f"link kind must be 'netns', 'pacing' or 'auto', got {kind!r}")
    try:
        return NetnsLink(trace, store_root, faults=faults, **options)
    except NetnsUnavailable as exc:
        reason = f"network namespaces unavailable ({exc}); sender-side pacing instead"
        log.warning("link: %s", reason)
        return PacingLink(trace, store_root, reason, faults)


__all__ = ["MIN_RATE_BPS", "Link", "NetnsLink", "PacingLink", "RateChange", "make_link"]
