"""Timing on a shared machine: wall-clock timers, a guard that notices other processes' CPU use, and a
description of the machine a profile was measured on.

On a small VM other processes can steal a core in the middle of a measurement. `ContentionGuard`
reads /proc/stat and /proc/self/stat around a measurement and reports how many CPU-seconds *other*
processes used meanwhile, so a contended point can be measured again instead of polluting the fit.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _system_busy_ticks() -> int | None:
    """Non-idle ticks of all CPUs (user+nice+system+irq+softirq+steal), or None without /proc."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    v = [int(x) for x in fields]
    return v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)


def _self_ticks() -> int | None:
    """utime + stime of this process (all threads), in ticks."""
    try:
        rest = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(rest[11]) + int(rest[12])


class ContentionGuard:
    """`with ContentionGuard() as g: ...` then `g.other_cpu_s`: CPU-seconds other processes used."""

    def __init__(self) -> None:
        self.other_cpu_s = 0.0
        self.wall_s = 0.0
        self._start: tuple[int | None, int | None, float] = (None, None, 0.0)

    def __enter__(self) -> ContentionGuard:
        self._start = (_system_busy_ticks(), _self_ticks(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        sys0, self0, t0 = self._start
        sys1, self1 = _system_busy_ticks(), _self_ticks()
        self.wall_s = time.perf_counter() - t0
        if None in (sys0, self0, sys1, self1):
            self.other_cpu_s = 0.0
            return
        assert sys0 is not None and self0 is not None and sys1 is not None and self1 is not None
        self.other_cpu_s = max(0.0, ((sys1 - sys0) - (self1 - self0)) / _CLK_TCK)

    @property
    def other_fraction(self) -> float:
        """Other processes' CPU use as a fraction of one core over the measurement."""
        return self.other_cpu_s / self.wall_s if self.wall_s > 0 else 0.0


def wait_for_quiet(max_other: float, max_wait_s: float, window_s: float = 0.25) -> float:
    """Sleep in `window_s` steps until other processes use at most `max_other` of a core (or
    `max_wait_s` passes); returns the share seen in the last window."""
    deadline = time.perf_counter() + max_wait_s
    while True:
        with ContentionGuard() as guard:
            time.sleep(window_s)
        if guard.other_fraction <= max_other or time.perf_counter() >= deadline:
            return guard.other_fraction


def time_calls(fn: Callable[[], object], repeats: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Wall seconds of `repeats` calls of `fn` (after `sync`, e.g. torch.cuda.synchronize, each)."""
    out = []
    for _ in range(repeats):
        if sync:
            sync()
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        out.append(time.perf_counter() - t0)
    return out


def robust_median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (or platform), with core count and ISA hints."""
    name, flags = "", ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not name:
                name = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = value
    except OSError:
        pass
    name = name or platform.processor() or platform.machine()
    isa = [f for f in ("avx512f", "avx2", "fma", "amx_tile", "neon") if f" {f}" in f" {flags} "]
    hyper = " (virtualised)" if " hypervisor" in f" {flags} " else ""
    return f"{name}, {os.cpu_count()} logical CPUs{hyper}" + (f", {'/'.join(isa)}" if isa else "")


def load_state() -> dict[str, Any]:
    """Load average and this process's scheduling priority (nice, autogroup), for the record."""
    out: dict[str, Any] = {"nice": os.nice(0) if hasattr(os, "nice") else 0}
    for key, path in (("loadavg", "/proc/loadavg"), ("autogroup", "/proc/self/autogroup")):
        try:
            out[key] = Path(path).read_text().strip()
        except OSError:
            continue
    return out


def library_versions() -> dict[str, str]:
    """Versions of the libraries a measurement depends on."""
    out = {"python": platform.python_version()}
    for mod in ("torch", "transformers", "numpy", "zstandard"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except (ImportError, AttributeError):
            continue
    return out


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Device description, versions and date for a profile file."""
    desc = cpu_model()
    if device.startswith("cuda"):
        import torch

        index = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(index)
        desc = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs); host {desc}"
    return {
        "device": desc,
        "versions": library_versions(),
        "date": dt.date.today().isoformat(),
        "platform": platform.platform(),
    }
