"""A sweep under Ctrl-C or killed, with stalled runs kept, and in a reused output folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sparkv.analysis.tables import read_csv

DEVICE = "analytic-cpu-2core"
ROOT = str(Path(__file__).resolve().parents[1])


def _sweep(out: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    traces = [arg for spec in ("const:20mbps", "lte:seed=1", "lte:seed=2", "lte:seed=3") for arg in ("--trace", spec)]
    cmd = [sys.executable, "-m", "sparkv.cli", "sweep", *traces,
           "--context-tokens", "2048,4096,8192,16384,32768",
           "--bandwidth-scale", ",".join(str(x / 20) for x in range(1, 121)),  # about 10,000 runs: tens of seconds
           "--device", DEVICE, "--policy", "local,stream,cake,static", "--jobs", "2", "--no-progress",
           "--out", str(out),
           *extra]
    # A process started in the background by a non-interactive shell (`cmd &`, nohup) ignores SIGINT, and children
    # inherit an ignored signal: give the sweep the default disposition a terminal's Ctrl-C meets (a Python handler
    # here becomes the default across exec).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def _wait_for_a_stored_run(out: Path, proc: subprocess.Popen[str], limit_s: float = 120.0) -> None:
    """Until the sweep has stored its first run (or ended, or `limit_s` passed)."""
    deadline = time.monotonic() + limit_s
    while not any((out / "runs").glob("*/row.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def test_ctrl_c_saves_partial_results_marked_partial(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    proc = _sweep(out)
    assert proc.stdout is not None
    proc.stdout.readline()  # "sweep: N runs": the pool is starting
    _wait_for_a_stored_run(out, proc)  # some batches finished, most still to run (a fixed wait can outlast them all)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group, workers included
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1 and "interrupted" in err
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["complete"] is False and meta["runs"] < meta["planned_runs"]
    assert "interrupted" in (out / "INCOMPLETE").read_text()
    assert len(read_csv(out / "results.csv")) == meta["runs"]
    again, _ = _sweep(out, "--dry-run").communicate(timeout=120)  # the same command: what it would resume from
    stored = len(list((out / "runs").glob("*/row.json")))
    assert stored == meta["runs"]  # what the partial table holds is exactly what was stored
    assert (f"; {stored} already done in {out / 'runs'}" in again) if stored else ("already done" not in again)


def test_a_killed_sweep_keeps_every_run_it_had_finished(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    proc = _sweep(out)
    _wait_for_a_stored_run(out, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to save anything: only what was stored as it finished
    proc.communicate(timeout=60)
    stored = len(list((out / "runs").glob("*/row.json")))
    assert stored > 0 and "running" in (out / "INCOMPLETE").read_text()
    again, _ = _sweep(out, "--dry-run").communicate(timeout=120)
    assert f"; {stored} already done" in again


def test_a_reused_out_folder_is_not_mistaken_for_this_sweep(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    out.mkdir()
    (out / "results.csv").write_text("index,status\n0,ok\n")
    env = {**os.environ, "PYTHONPATH": ROOT}
    run = subprocess.run([sys.executable, "-m", "sparkv.cli", "sweep", "--trace", "steps:1s@1mbps,600s@0mbps",
                          "--context-tokens", "1024", "--device", DEVICE, "--policy", "stream", "--jobs", "1",
                          "--keep-results", "--no-progress", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert (out / "previous" / "results.csv").read_text() == "index,status\n0,ok\n", run.stderr
    assert "earlier sweep" in run.stdout
    assert not (out / "INCOMPLETE").exists() and json.loads((out / "sweep.json").read_text())["complete"]
    assert read_csv(out / "results.csv")[0]["status"] == "stalled"  # the link goes silent
    kept = list((out / "runs").glob("*/stalled.json"))
    assert len(kept) == 1 and json.loads(kept[0].read_text())["status"] == "stalled"
