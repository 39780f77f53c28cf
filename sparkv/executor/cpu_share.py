"""How much CPU other processes took while a real run ran: a disturbed run does not measure the model.

A speed probe before and after a run misses a burst of foreign load inside it (another process's test
run for a few seconds makes every layer 30x slower and leaves both probes untouched). This meter reads the
machine's busy CPU time (`/proc/stat`: user, nice, system, irq, softirq, steal) and this process tree's
own CPU time (this process and every descendant, e.g. the KV server and the `tc` calls it made, with the
time of children they have reaped) at the start and end of a run. What is left over is foreign CPU:
other processes, other VMs (steal) and unattributed kernel work, in cores over the run's wall time.
Linux only; elsewhere `CpuMeter.stop` returns None and runs are not screened.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class CpuShare:
    """CPU time over one wall-clock window: the machine's, this process tree's, and what is left."""

    wall_s: float
    machine_busy_s: float  # all CPUs' busy time in the window
    own_busy_s: float  # this process tree's CPU time in the window
    cpus: int

    @property
    def foreign_cores(self) -> float:
        """Cores' worth of CPU that others used during the window (0 when we used everything)."""
        if self.wall_s <= 0:
            return 0.0
        return max(0.0, self.machine_busy_s - self.own_busy_s) / self.wall_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "foreign_cores": self.foreign_cores}


def machine_busy_s(stat: str | None = None) -> float | None:
    """Busy seconds of all CPUs since boot, from the first line of /proc/stat (None where there is none)."""
    try:
        text = stat if stat is not None else (PROC / "stat").read_text()
    except OSError:
        return None
    fields = text.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu" or len(fields) < 9:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None  # gone meanwhile
    # the command name (field 2) is in parentheses and may hold spaces: split after its last ')'
    return text[text.rfind(")") + 2 :].split()


def tree_busy_s(root: int | None = None) -> float:
    """CPU seconds (user + system, with reaped children's) of process `root` and all its descendants."""
    root = os.getpid() if root is None else root
    parent: dict[int, int] = {}
    busy: dict[int, float] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f is None or len(f) < 15:
            continue
        # after the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17), 1-based
        parent[int(entry.name)] = int(f[1])
        busy[int(entry.name)] = sum(int(x) for x in f[11:15]) / _TICK
    total = 0.0
    for pid, t in busy.items():
        p = pid
        for _ in range(64):  # walk up to the root (or to init)
            if p == root:
                total += t
                break
            p = parent.get(p, 0)
            if p <= 1:
                break
    return total


class CpuMeter:
    """`start()` before a run, `stop()` after it: the CpuShare of the window (None off Linux)."""

    def __init__(self) -> None:
        self._t0 = 0.0
        self._machine0: float | None = None
        self._own0 = 0.0

    def start(self) -> None:
        self._machine0 = machine_busy_s()
        self._own0 = tree_busy_s() if self._machine0 is not None else 0.0
        self._t0 = time.perf_counter()

    def stop(self) -> CpuShare | None:
        wall = time.perf_counter() - self._t0
        machine = machine_busy_s()
        if machine is None or self._machine0 is None:
            return None
        own = tree_busy_s()
        return CpuShare(wall, machine - self._machine0, own - self._own0, os.cpu_count() or 1)
