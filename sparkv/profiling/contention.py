"""How much slower compute runs while cells arrive, measured with the executor's own parts.

A real run receives cells on one thread (socket reads, CRC, decode, copy into the cache) while the
model computes on another. On a small CPU the two share cores, and a compute kernel whose thread team
loses a core for a moment waits at its next barrier, so compute slows by more than the receive path's
own CPU time. This module times the same compute commands alone and while the real KV server streams
cells over a real link (pacing or netns) into the same cache, alternating the two so that drift of the
machine hits both alike, and reports the ratio of medians. Measured at several shaped rates it gives the
slowdown as a function of the received rate (`apply_slowdown_curve`); the simulator stretches compute that
starts while a transfer is in flight by the factor at the rate the link delivers then. Like `profiler`, it
drives the executor, so the executor imports are inside the functions.
"""

from __future__ import annotations

import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparkv.core.contention import CURVE_KEY, FACTOR_KEY
from sparkv.cost_models.profiles import DeviceProfile

KEY = "contention000000"


@dataclass(frozen=True)
class ReceiveSlowdown:
    """Compute seconds while receiving / alone, and what was measured."""

    ratio: float  # median compute seconds while cells arrive / median alone
    alone_s: float  # median seconds of one command, nothing arriving
    receiving_s: float  # median seconds of one command while cells arrive
    commands: int  # timed commands per mode
    received_bps: float  # wire bytes/s the receiver took in over its lifetime (it waits for a first cell)
    link: str  # link kind
    rate_bps: float  # shaped rate, bytes/s
    codec: str
    chunk_tokens: int
    layers: int  # layers per compute command
    discarded_rounds: int = 0  # rounds measured again because other processes loaded the CPU
    fetch_layers: int = 1  # layers of one chunk per fetch request

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Receiver:
    """A thread fetching blocks of `fetch_layers` layers of one chunk after another and installing them, as
    the driver's link thread does, until stopped."""

    def __init__(
        self, client: Any, link: Any, prefill: Any, codec: str, chunk_tokens: int, num_layers: int, fetch_layers: int
    ) -> None:
        self.client, self.link, self.prefill = client, link, prefill
        self.codec, self.chunk_tokens, self.num_layers = codec, chunk_tokens, num_layers
        self.fetch_layers = fetch_layers
        self.stop = threading.Event()
        self.first = threading.Event()
        self.bytes = 0
        self.error: BaseException | None = None
        self.started_s = self.elapsed_s = 0.0  # the receiver's lifetime, for its byte rate
        self._thread = threading.Thread(target=self._run, name="sparkv-contention-rx", daemon=True)
        self._ids = iter(range(1, 1 << 30))

    def _run(self) -> None:
        from sparkv.core.request import CellBlock

        try:
            layer = 0
            while not self.stop.is_set():
                self.link.start_clock()
                block = CellBlock(0, 1, layer, min(layer + self.fetch_layers, self.num_layers))
                deadline = time.perf_counter() + 60.0
                for cell in self.client.fetch(next(self._ids), KEY, self.chunk_tokens, self.codec, block, deadline):
                    self.prefill.install(cell.chunk, cell.layer, np.asarray(cell.k), np.asarray(cell.v))
                    self.bytes += cell.wire_bytes
                    self.first.set()
                layer = block.layer_hi % self.num_layers
        except BaseException as exc:  # reported by `__exit__` on the measuring thread
            self.error = exc
            self.first.set()

    def __enter__(self) -> _Receiver:
        self.started_s = time.perf_counter()
        self._thread.start()
        if not self.first.wait(30.0):
            raise RuntimeError("contention probe: no cell arrived within 30 s (is the KV server alive?)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._thread.join(timeout=60.0)
        self.elapsed_s = time.perf_counter() - self.started_s
        if self.error is not None:
            raise RuntimeError(f"contention probe: the receiver failed: {self.error}") from self.error


def _time_commands(prefill: Any, chunk: int, layers: int, num_layers: int) -> list[float]:
    """Seconds of each `layers`-layer command of `chunk`, stepping through the model once (from layer 0
    again: the chunk's progress is reset first, so every sweep does the same work)."""
    prefill.computed[chunk] = 0
    prefill.hidden.pop(chunk, None)
    out = []
    for lo in range(0, num_layers - layers + 1, layers):
        t0 = time.perf_counter()
        prefill.compute(chunk, lo, lo + layers)
        out.append(time.perf_counter() - t0)
    return out


def measure_receive_slowdown(
    loaded: Any,
    kind: str = "pacing",
    rate_bps: float = 2.5e6,
    codec: str = "fp16",
    chunk_tokens: int = 256,
    past_chunks: int = 3,
    layers: int | None = None,
    rounds: int = 12,
    tick: Callable[[str], None] = lambda _: None,
    max_foreign_cores: float = 0.25,
    fetch_layers: int | None = None,
) -> ReceiveSlowdown:
    """Time `rounds` x (alone, receiving) sweeps of compute commands over chunk `past_chunks`'s layers.

    The defaults have the shape of a real run's work: commands of a whole chunk (`layers`, default every
    layer) while the receiver fetches whole chunks (`fetch_layers`, default every layer), as the loading
    policies do; the receiver then takes in close to the shaped rate, which one-layer fetches with their
    round trips do not (they under-state contention at high rates). A round during which other processes
    used more than `max_foreign_cores` cores of CPU is discarded and measured again (at most 3 x `rounds`
    tries): foreign load on one half of a pair fakes a ratio."""
    from sparkv.executor.cpu_share import CpuMeter
    from sparkv.executor.net.client import KVClient
    from sparkv.executor.net.link import make_link
    from sparkv.executor.net.store import make_synthetic_store
    from sparkv.profiling.profiler import _prefill_with_past
    from sparkv.traces.synthetic import constant

    spec = loaded.spec
    layers = spec.num_layers if layers is None else layers
    fetch_layers = spec.num_layers if fetch_layers is None else fetch_layers
    if not 1 <= layers <= spec.num_layers:
        raise ValueError(f"layers must be in [1, {spec.num_layers}], got {layers}")
    if not 1 <= fetch_layers <= spec.num_layers:
        raise ValueError(f"fetch_layers must be in [1, {spec.num_layers}], got {fetch_layers}")
    prefill = _prefill_with_past(loaded, chunk_tokens, past_chunks + 1, 8, 0)
    prefill.compute(past_chunks, 0, spec.num_layers)  # warm-up
    alone: list[float] = []
    receiving: list[float] = []
    received_bytes, received_s = 0, 0.0
    discarded = 0
    with tempfile.TemporaryDirectory(prefix="sparkv-contention-") as tmp:
        root = Path(tmp)
        make_synthetic_store(root, KEY, spec.num_layers, spec.num_kv_heads, chunk_tokens, spec.head_dim)
        with make_link(kind, constant(rate_bps, 24 * 3600.0), root) as link:
            client = KVClient(link.server.host, link.server.port)
            meter = CpuMeter()
            try:
                kept = tries = 0
                while kept < rounds and tries < 3 * rounds:
                    tries += 1
                    meter.start()
                    a_round = _time_commands(prefill, past_chunks, layers, spec.num_layers)
                    with _Receiver(client, link, prefill, codec, chunk_tokens, spec.num_layers, fetch_layers) as rx:
                        r_round = _time_commands(prefill, past_chunks, layers, spec.num_layers)
                    share = meter.stop()
                    spare = 3 * rounds - tries >= rounds - kept  # tries enough left for the rounds still to do
                    if share is not None and share.foreign_cores > max_foreign_cores and spare:
                        discarded += 1  # another process's load hit one half of the pair: not our contention
                        continue
                    kept += 1
                    alone += a_round
                    receiving += r_round
                    received_bytes += rx.bytes
                    received_s += rx.elapsed_s
                    tick(f"receive contention: round {kept} of {rounds}")
            finally:
                client.close()
    a, b = statistics.median(alone), statistics.median(receiving)
    return ReceiveSlowdown(
        ratio=b / a,
        alone_s=a,
        receiving_s=b,
        commands=len(alone),
        received_bps=received_bytes / received_s if received_s > 0 else 0.0,
        link=kind,
        rate_bps=rate_bps,
        codec=codec,
        chunk_tokens=chunk_tokens,
        layers=layers,
        discarded_rounds=discarded,
        fetch_layers=fetch_layers,
    )


def apply_slowdown(profile: DeviceProfile, slow: ReceiveSlowdown) -> DeviceProfile:
    """A copy of `profile` whose calibration of the link kind measured holds the slowdown (`compute_slowdown`),
    with its details; a curve measured before is dropped."""
    kind = slow.link.split(" ")[0]
    return _with_contention(profile, kind, {FACTOR_KEY: slow.ratio}, {"receive_contention_by_kind": slow.to_dict()})


def apply_slowdown_curve(profile: DeviceProfile, slows: list[ReceiveSlowdown]) -> DeviceProfile:
    """A copy of `profile` whose calibration of the link kind measured holds the slowdown against the received
    rate (`compute_slowdown_curve`, see `sparkv.core.contention`), measured at several shaped rates; its single
    `compute_slowdown` is the measurement at the lowest rate (what a reader of the factor alone gets)."""
    if not slows:
        raise ValueError("a slowdown curve needs at least one measurement")
    kinds = {s.link.split(" ")[0] for s in slows}
    if len(kinds) != 1:
        raise ValueError(f"a slowdown curve is measured on one link kind, got {sorted(kinds)}")
    points: list[list[float]] = []
    for s in sorted(slows, key=lambda s: s.received_bps or s.rate_bps):
        rate = s.received_bps or s.rate_bps
        if points and rate <= points[-1][0] * 1.02:  # the receiver's ceiling: two asks, one received rate
            points[-1] = [max(points[-1][0], rate), max(points[-1][1], s.ratio)]
        else:
            points.append([rate, s.ratio])
    lowest = min(slows, key=lambda s: s.rate_bps)
    return _with_contention(
        profile, kinds.pop(), {FACTOR_KEY: lowest.ratio, CURVE_KEY: points},
        {"receive_contention_by_kind": lowest.to_dict(),
         "receive_contention_curve_by_kind": [s.to_dict() for s in slows]},
    )  # fmt: skip


def _with_contention(
    profile: DeviceProfile, kind: str, entries: dict[str, Any], details: dict[str, Any]
) -> DeviceProfile:
    """`profile` with the link kind's calibration (and the default link, where it is that kind's or has none)
    holding `entries` in place of any contention measured before, and `details` under each measurements key."""
    from dataclasses import replace

    def updated(link: dict[str, Any]) -> dict[str, Any]:
        return {**{k: v for k, v in link.items() if k not in (FACTOR_KEY, CURVE_KEY)}, **entries}

    links = dict(profile.links)
    if kind in links:
        links[kind] = updated(links[kind])
    link = profile.link
    if not link or link.get("kind") in (None, kind):
        link = updated(link)
    measurements = dict(profile.measurements)
    for key, value in details.items():
        measurements[key] = {**measurements.get(key, {}), kind: value}
    return replace(profile, link=link, links=links, measurements=measurements)
