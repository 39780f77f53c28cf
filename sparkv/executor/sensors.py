"""Measured energy, beside the model's estimate: readers for NVML, RAPL and Jetson's tegrastats.

Every reader satisfies `EnergySensor`: `energy_j()` returns cumulative joules since an arbitrary
origin (differences are what matter), or None when it cannot read. The constructors return None when
the sensor does not exist here (no NVIDIA GPU or no pynvml, no readable powercap, not a Jetson), so a
caller can always write `sensor = open_sensor(device)` and record measured energy only if it is not None.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

T = TypeVar("T")
RAPL_ROOT = Path("/sys/class/powercap")


@runtime_checkable
class EnergySensor(Protocol):
    name: str  # what it measures, e.g. "nvml:NVIDIA H100" or "rapl:package-0"

    def energy_j(self) -> float | None: ...

    def close(self) -> None: ...


class NvmlSensor:
    """GPU board energy from NVML: the total-energy counter (Volta and later) or sampled power."""

    def __init__(self, nvml: Any, handle: Any, name: str) -> None:
        self._nvml, self._handle, self.name = nvml, handle, f"nvml:{name}"
        try:
            nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            self._counter = True
        except Exception:
            self._counter = False
            self._sampler = PowerIntegrator(self._power_w, period_s=0.02)

    def _power_w(self) -> float | None:
        try:
            return float(self._nvml.nvmlDeviceGetPowerUsage(self._handle)) / 1e3
        except Exception:
            return None

    def energy_j(self) -> float | None:
        if not self._counter:
            return self._sampler.energy_j()
        try:
            return float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)) / 1e3
        except Exception:
            return None

    def close(self) -> None:
        if not self._counter:
            self._sampler.close()


def nvml_sensor(index: int = 0) -> NvmlSensor | None:
    """NVML reader for GPU `index`, or None without pynvml or an NVIDIA driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
    except Exception:
        return None
    return NvmlSensor(pynvml, handle, name.decode() if isinstance(name, bytes) else str(name))


class RaplSensor:
    """CPU package energy from Linux powercap (intel-rapl, also used by AMD), summed over packages."""

    def __init__(self, zones: list[Path]) -> None:
        self.zones = zones
        self.name = "rapl:" + "+".join(_read(z / "name") or z.name for z in zones)
        self._last = [self._raw(z) for z in zones]
        self._total = 0.0

    @staticmethod
    def _raw(zone: Path) -> int | None:
        text = _read(zone / "energy_uj")
        return int(text) if text and text.isdigit() else None

    def energy_j(self) -> float | None:
        for i, zone in enumerate(self.zones):
            now, last = self._raw(zone), self._last[i]
            if now is None or last is None:
                return None
            delta = now - last
            if delta < 0:  # the counter wrapped
                top = _read(zone / "max_energy_range_uj")
                delta += int(top) if top and top.isdigit() else 0
            self._total += delta / 1e6
            self._last[i] = now
        return self._total

    def close(self) -> None:
        return None


def rapl_sensor(root: Path | None = None) -> RaplSensor | None:
    """Package-level zones (intel-rapl:N, not their sub-zones) whose counters are readable, or None."""
    root = root or RAPL_ROOT
    if not root.is_dir():
        return None
    zones = sorted(z for z in root.glob("intel-rapl:*") if z.name.count(":") == 1 and RaplSensor._raw(z) is not None)
    return RaplSensor(zones) if zones else None


# tegrastats rails: "VDD_IN 4936mW/4936mW" (Orin, JetPack 5+), "POM_5V_IN 2862/2862" (Xavier/Nano, JetPack 4)
_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*(?:IN|GPU|CPU|SOC|CV|DDR|SYS)[A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?")
TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")


def parse_tegrastats_line(line: str) -> dict[str, float]:
    """Rail -> instantaneous watts from one tegrastats line."""
    return {m.group(1): int(m.group(2)) / 1e3 for m in _RAIL.finditer(line)}


def total_power_w(rails: dict[str, float]) -> float | None:
    """Module input power from parsed rails (the first total rail present), else the sum of all rails."""
    for name in TOTAL_RAILS:
        if name in rails:
            return rails[name]
    return sum(rails.values()) if rails else None


class PowerIntegrator:
    """Integrates a power reading (W, or None) sampled every `period_s` on a background thread."""

    def __init__(self, read_w: Callable[[], float | None], period_s: float) -> None:
        self._read, self._period = read_w, period_s
        self._energy, self._ok = 0.0, False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop.wait(self._period):
            watts, now = self._read(), time.perf_counter()
            with self._lock:
                if watts is not None:
                    self._energy += watts * (now - last)
                    self._ok = True
            last = now

    def energy_j(self) -> float | None:
        with self._lock:
            return self._energy if self._ok else None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


class TegrastatsSensor:
    """Jetson module power from a `tegrastats --interval` subprocess, integrated over time."""

    def __init__(self, exe: str, interval_ms: int = 50) -> None:
        self.name = "tegrastats:VDD_IN"
        self._proc = subprocess.Popen(
            [exe, "--interval", str(interval_ms)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._watts: float | None = None
        self._reader = threading.Thread(target=self._read_lines, daemon=True)
        self._reader.start()
        self._integrator = PowerIntegrator(lambda: self._watts, interval_ms / 1e3)

    def _read_lines(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._watts = total_power_w(parse_tegrastats_line(line))

    def energy_j(self) -> float | None:
        return self._integrator.energy_j()

    def close(self) -> None:
        self._integrator.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._proc.kill()


def tegrastats_sensor(interval_ms: int = 50) -> TegrastatsSensor | None:
    """A tegrastats reader on a Jetson (the binary is on PATH or in /usr/bin), else None."""
    exe = shutil.which("tegrastats") or ("/usr/bin/tegrastats" if Path("/usr/bin/tegrastats").exists() else None)
    if exe is None or not Path("/etc/nv_tegra_release").exists():
        return None
    try:
        return TegrastatsSensor(exe, interval_ms)
    except OSError:
        return None


def open_sensor(device: str = "cpu") -> EnergySensor | None:
    """The best sensor for `device` ("cpu", "cuda[:n]", "jetson"), or None if none is readable."""
    if device == "jetson":
        return tegrastats_sensor()
    if device.startswith("cuda"):
        index = int(device.split(":")[1]) if ":" in device else 0
        return nvml_sensor(index) or tegrastats_sensor()
    return rapl_sensor() or tegrastats_sensor()


def measure_energy(sensor: EnergySensor | None, fn: Callable[[], T]) -> tuple[T, float | None, float]:
    """Run `fn`; return its result, joules the sensor saw (None if none or unreadable), and seconds."""
    e0 = sensor.energy_j() if sensor else None
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    e1 = sensor.energy_j() if sensor else None
    return out, (e1 - e0 if e0 is not None and e1 is not None else None), wall


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None
