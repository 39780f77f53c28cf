"""The background load of real runs: busy processes that burn CPU, stop with the block, die with their parent."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from sparkv.executor.background import BackgroundLoad
from sparkv.executor.cpu_share import tree_busy_s


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_load_burns_cpu_and_stops_with_the_block() -> None:
    with BackgroundLoad(1, max_s=30.0) as load:
        assert load.running() == 1
        pid = load.procs[0].pid
        deadline = time.monotonic() + 20.0
        while tree_busy_s(pid) < 0.2 and time.monotonic() < deadline:  # CPU time, not wall time
            time.sleep(0.05)
        assert tree_busy_s(pid) >= 0.2
    assert not _alive(pid)
    with BackgroundLoad(0) as none:
        assert none.running() == 0


def test_load_dies_with_its_parent() -> None:
    code = ("from sparkv.executor.background import BackgroundLoad\n"
            "import os\nb = BackgroundLoad(2, max_s=60.0)\nb.start()\n"
            "print(' '.join(str(p.pid) for p in b.procs), flush=True)\nos._exit(0)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 20.0
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids)


def test_bad_loads_are_refused() -> None:
    with pytest.raises(ValueError):
        BackgroundLoad(-1)
    with pytest.raises(ValueError):
        BackgroundLoad(1, max_s=0.0)
