"""The Ray backend on a real cluster: `ray start --head` on this machine (loopback only, 2 CPUs, little
memory, its own ports, token authentication), then `sparkv sweep` and `sparkv tune` joining it by address
in their own processes; their results equal the local backend's.

The cluster is ended by its own `ray start --block` process and, for anything left, by process group and by
its temporary folder; not with `ray stop`, which ends every Ray cluster this user runs on the machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sparkv import cli

ROOT = str(Path(__file__).resolve().parents[1])
DEVICE = "analytic-cpu-2core"
START_TIMEOUT_S = 90.0  # `ray start` takes ~5 s on the 2-core VM
RUN_TIMEOUT_S = 240.0

pytestmark = pytest.mark.slow  # a real cluster: ~30 s in all on the 2-core VM


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pids_naming(text: str) -> list[int]:
    """Processes whose command line contains `text` (this cluster's unique temporary folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


def _end_cluster(proc: subprocess.Popen[bytes], temp_dir: str) -> list[int]:
    """Stop the head and everything it started; the pids still alive after 10 s (should be none)."""
    proc.terminate()  # `ray start --block` stops the cluster's processes when it ends
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own session (start_new_session): what is left of it
    deadline = time.monotonic() + 10
    left = _pids_naming(temp_dir)
    while left and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        left = _pids_naming(temp_dir)
    return left


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """(address, environment for clients) of a one-node Ray cluster started for these tests."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):  # CI installs the ray extra: a missing Ray there is a broken install
            pytest.fail("ray is not importable in CI; the README's install command installs '.[dev,ray]'")
        pytest.skip("ray is not installed (optional extra 'ray')")
    temp_dir = tempfile.mkdtemp(prefix="sparkv-ray-", dir="/tmp")  # short: Ray's socket paths must fit
    env = {
        **os.environ,
        "PYTHONPATH": ROOT,
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # single-node mode: every address is 127.0.0.1
        "RAY_AUTH_MODE": "token",  # a token of this cluster's own, not the user's ~/.ray one
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    port = _free_port()
    ports = {flag: _free_port() for flag in ("--dashboard-port", "--node-manager-port", "--object-manager-port",
                                             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                             "--runtime-env-agent-port", "--metrics-export-port")}  # fmt: skip
    cmd = [sys.executable, "-c", "from ray.scripts.scripts import main; main()", "start", "--head", "--block",
           "--port", str(port), "--num-cpus", "2", "--memory", str(1 << 30), "--object-store-memory", str(100 << 20),
           "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir,
           *(str(x) for item in ports.items() for x in item)]  # fmt: skip
    log_path = Path(temp_dir) / "head.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                pytest.fail(f"ray start --head did not come up (exit {proc.poll()}):\n{tail}")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}", env
    finally:
        left = _end_cluster(proc, temp_dir)
        with contextlib.suppress(OSError):
            import shutil

            shutil.rmtree(temp_dir)
        assert not left, f"Ray processes left after the test cluster was stopped: {left}"


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    monkeypatch.setattr(cli, "_COMMANDS", ("sweep", "tune"))
    return cli.main


def _sparkv(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    run = subprocess.run([sys.executable, "-m", "sparkv.cli", *argv], capture_output=True, text=True, env=env,
                         timeout=RUN_TIMEOUT_S)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run


SWEEP = ["sweep", "--trace", "const:20mbps", "--trace", "lte:seed=1", "--bandwidth-scale", "0.5,1",
         "--context-tokens", "1024", "--device", DEVICE, "--no-progress"]  # fmt: skip


def test_sweep_on_a_ray_cluster_equals_the_local_one_and_resumes_there(
    cluster: tuple[str, dict[str, str]], tmp_path: Path, main: Callable[[list[str]], int]
) -> None:
    address, env = cluster
    local, remote = tmp_path / "local", tmp_path / "ray"
    assert main([*SWEEP, "--policy", "local,cake,stream", "--jobs", "1", "--out", str(local)]) == 0
    assert main([*SWEEP, "--policy", "local", "--jobs", "1", "--out", str(remote)]) == 0  # 4 of the 12 runs
    run = _sparkv(env, *SWEEP, "--policy", "local,cake,stream", "--backend", "ray", "--address", address,
                  "--out", str(remote))  # fmt: skip
    print(run.stdout)
    assert f"12 runs (grid: trace x2, bandwidth_scale x2, context_tokens x1, device x1, policy x3), backend ray at " \
           f"{address}; 4 already done" in run.stdout  # fmt: skip
    assert "8 computed" in run.stdout and "ray x2" in run.stdout and "4 reused" in run.stdout
    meta = json.loads((remote / "sweep.json").read_text())
    assert meta["backend"] == "ray" and meta["workers"] == 2 and meta["computed"] == 8
    assert (remote / "results.csv").read_text() == (local / "results.csv").read_text()
    assert len(list((remote / "runs").glob("*/row.json"))) == 12  # rows written here, by the driver


def test_tune_on_a_ray_cluster_equals_the_local_one(
    cluster: tuple[str, dict[str, str]], tmp_path: Path, main: Callable[[list[str]], int]
) -> None:
    address, env = cluster
    argv = ["tune", "--policy", "sparkv", "--trace", "const:20mbps", "--trace", "lte:seed=1", "--test-trace",
            "lte:seed=2", "--device", DEVICE, "--context-tokens", "1024", "--budget", "6", "--seed", "1"]  # fmt: skip
    assert main([*argv, "--jobs", "1", "--out", str(tmp_path / "local.json")]) == 0
    run = _sparkv(env, *argv, "--ray-address", address, "--out", str(tmp_path / "ray.json"))  # implies ray
    print(run.stdout)
    local = json.loads((tmp_path / "local.json").read_text())
    remote = json.loads((tmp_path / "ray.json").read_text())
    assert remote["training"]["optimizer"]["evaluations"] == local["training"]["optimizer"]["evaluations"] > 0
    assert remote["policy"] == local["policy"] and remote["results"] == local["results"]
