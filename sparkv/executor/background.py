"""A reproducible background load for real runs: CPU-bound processes on a given number of cores.

A phone runs other apps; a shared machine runs other jobs. `BackgroundLoad(cores)` starts `cores` busy
processes (pure-Python loops, one core each) for the length of a `with` block, so a real run can be
measured loaded as well as quiet. They stop when the block ends, when this process dies (each checks its
parent every ~50 ms), and after `max_s` in any case. They are this process's children, so the validation
run's foreign-CPU screen (`executor.cpu_share`) counts them as the run's own, not as disturbance. The
simulator does not model the load process by process: the speed probe taken under it measures how much
slower compute runs, and the simulator predicts at that speed (an availability trace).
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import TracebackType

MAX_CORES = 64
_LOOP = """
import os, sys, time
parent, end = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < end and os.getppid() == parent:
    t = time.monotonic() + 0.05
    while time.monotonic() < t:
        pass
"""


class BackgroundLoad:
    """`cores` busy processes while the `with` block runs (0: none)."""

    def __init__(self, cores: int, max_s: float = 3600.0) -> None:
        if not 0 <= cores <= MAX_CORES:
            raise ValueError(f"background load must be 0-{MAX_CORES} cores, got {cores}")
        if max_s <= 0:
            raise ValueError(f"max_s must be > 0, got {max_s}")
        self.cores = cores
        self.max_s = max_s
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        me = str(os.getpid())
        for _ in range(self.cores):
            self.procs.append(subprocess.Popen([sys.executable, "-c", _LOOP, me, str(self.max_s)],
                                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL))  # fmt: skip

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5.0)
        self.procs.clear()

    def running(self) -> int:
        return sum(p.poll() is None for p in self.procs)

    def __enter__(self) -> BackgroundLoad:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()
