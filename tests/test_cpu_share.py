"""The foreign-CPU meter that screens real validation runs: parsing, arithmetic, attribution."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sparkv.executor import cpu_share
from sparkv.executor.cpu_share import CpuMeter, CpuShare, machine_busy_s

linux = pytest.mark.skipif(not cpu_share.PROC.joinpath("stat").exists(), reason="needs /proc")


def test_machine_busy_counts_everything_but_idle_and_iowait() -> None:
    tick = cpu_share._TICK
    stat = f"cpu  {tick} {tick} {tick} {100 * tick} {50 * tick} {tick} {tick} {tick} 0 0\ncpu0 1 2 3\n"
    assert machine_busy_s(stat) == pytest.approx(6.0)
    assert machine_busy_s("intr 1 2 3\n") is None
    assert machine_busy_s("cpu 1 2\n") is None


def test_foreign_cores_is_what_others_used_over_the_window() -> None:
    assert CpuShare(2.0, 3.0, 1.0, 2).foreign_cores == pytest.approx(1.0)
    assert CpuShare(2.0, 1.0, 1.5, 2).foreign_cores == 0.0  # tick rounding can put own above machine
    assert CpuShare(0.0, 1.0, 0.0, 2).foreign_cores == 0.0
    assert CpuShare(1.0, 0.5, 0.25, 2).to_dict()["foreign_cores"] == pytest.approx(0.25)


@linux
def test_a_child_process_is_our_own_cpu_not_foreign() -> None:
    burn = "import time\nwhile time.process_time() < 0.4: pass\n"  # 0.4 s of CPU, however long it takes
    meter = CpuMeter()
    meter.start()
    subprocess.run([sys.executable, "-c", burn], check=True)
    share = meter.stop()
    assert share is not None
    assert share.own_busy_s >= 0.3  # the reaped child's time is attributed to this process tree
    assert share.machine_busy_s >= share.own_busy_s - 0.05
