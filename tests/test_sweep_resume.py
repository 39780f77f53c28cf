"""Sweep job keys and resumption: a run's key hashes its whole configuration, finished runs are stored in
their own folders as they finish, and an interrupted sweep run again computes only the runs it lacks."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sparkv import api, cli
from sparkv.analysis import sweep as sweep_module
from sparkv.analysis.sweep import SweepInterrupted, SweepSpec, expand
from sparkv.analysis.sweep_store import ROW_FILE, job_key

DEVICE = "analytic-cpu-2core"
BASE = {"device": DEVICE, "context_tokens": 1024, "chunk_tokens": 512}
ARGS = ["sweep", "--trace", "const:20mbps", "--trace", "steps:1s@5mbps,1s@30mbps", "--bandwidth-scale", "0.5,1",
        "--context-tokens", "1024", "--device", DEVICE, "--policy", "local,cake,stream", "--jobs", "1",
        "--no-progress"]  # fmt: skip
RUNS = 12  # 2 traces x 2 scales x 3 policies


class Counter:
    """Wraps `run_point` (which the serial backend calls in this process): counts runs, and raises
    KeyboardInterrupt (a Ctrl-C) on run number `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls = 0
        self.stop_at = stop_at
        self._real = sweep_module.run_point

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self._real(*args, **kwargs)


@pytest.fixture
def count(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int | None], Counter]]:
    def install(stop_at: int | None = None) -> Counter:
        counter = Counter(stop_at)
        monkeypatch.setattr(sweep_module, "run_point", counter)
        return counter

    yield install


@pytest.fixture
def main(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    monkeypatch.setattr(cli, "_COMMANDS", ("sweep",))
    return cli.main


def test_job_keys_hash_the_whole_configuration_and_its_files(tmp_path: Path) -> None:
    grid = expand(SweepSpec({"trace": ["const:20mbps"], "bandwidth_scale": [0.5, 1.0], "policy": ["local", "cake"]},
                            base=BASE))  # fmt: skip
    other_order = expand(SweepSpec({"bandwidth_scale": [1.0, 0.5], "trace": ["const:20mbps"], "policy": ["cake"]},
                                   base=BASE))  # fmt: skip
    keys = {(p["scenario"]["link"]["bandwidth_scale"], p["policy"]): p["key"] for p in grid}
    assert len(set(keys.values())) == 4 and all(len(k) == 16 for k in keys.values())
    assert {p["key"] for p in other_order} == {keys[(0.5, "cake")], keys[(1.0, "cake")]}  # same run, same key
    scenario = grid[0]["scenario"]
    assert job_key(scenario, "local") == grid[0]["key"]
    assert job_key({**scenario, "seed": scenario["seed"] + 1}, "local") != grid[0]["key"]
    assert job_key({**scenario, "link": {**scenario["link"], "rtt_s": 0.5}}, "local") != grid[0]["key"]
    trace = tmp_path / "t.csv"
    trace.write_text("time_s,mbps\n0,5\n1,6\n")
    before = job_key({**scenario, "trace": str(trace)}, "local")
    trace.write_text("time_s,mbps\n0,5\n1,7\n")  # same path, other data: another run
    assert job_key({**scenario, "trace": str(trace)}, "local") != before


def test_an_interrupted_sweep_resumes_without_recomputing_finished_runs(
    tmp_path: Path, count: Callable[[int | None], Counter], main: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    counter = count(None)
    assert main([*ARGS, "--out", str(whole)]) == 0
    assert counter.calls == RUNS
    capsys.readouterr()

    counter = count(8)  # one process, batches of 3 runs: 2 batches (6 runs) finish, the 3rd is cut short
    assert main([*ARGS, "--out", str(parts)]) == 130
    assert "interrupted: 6 of 12 runs" in capsys.readouterr().err
    assert len(list((parts / "runs").glob(f"*/{ROW_FILE}"))) == 6  # each stored in its own folder
    assert not any(p.name.endswith(".tmp") for p in (parts / "runs").rglob("*"))
    assert main([*ARGS, "--out", str(parts), "--dry-run"]) == 0
    assert "6 already done" in capsys.readouterr().out

    counter = count(None)
    assert main([*ARGS, "--out", str(parts)]) == 0  # the same command again: resumes
    assert counter.calls == RUNS - 6  # the finished runs are not computed again
    out = capsys.readouterr().out
    assert "6 computed" in out and "6 reused" in out and "earlier sweep" not in out
    assert (parts / "results.csv").read_text() == (whole / "results.csv").read_text()
    assert json.loads((parts / "sweep.json").read_text())["complete"] is True
    assert not (parts / "INCOMPLETE").exists()

    counter = count(None)
    assert main([*ARGS, "--out", str(parts)]) == 0
    assert counter.calls == 0 and "0 computed" in capsys.readouterr().out
    assert main([*ARGS, "--out", str(parts), "--fresh"]) == 0
    assert counter.calls == RUNS
    assert (parts / "results.csv").read_text() == (whole / "results.csv").read_text()


def test_stored_runs_are_reused_only_when_complete_and_from_the_same_code(
    tmp_path: Path, count: Callable[[int | None], Counter]
) -> None:
    axes: dict[str, Any] = {"trace": ["const:20mbps"], "bandwidth_scale": [0.5, 1.0], "policy": ["local", "cake"]}
    runs = tmp_path / "runs"
    first = api.sweep(BASE, runs=runs, keep_results=True, **axes)
    assert first.computed == 4 and first.reused == 0
    folders = sorted(p for p in runs.iterdir())
    assert len(folders) == 4 and all((f / "result.json").is_file() and (f / ROW_FILE).is_file() for f in folders)
    stored = json.loads((folders[0] / ROW_FILE).read_text())
    stored["code"] = "0" * 16  # computed by other code
    (folders[0] / ROW_FILE).write_text(json.dumps(stored))
    (folders[1] / "result.json").unlink()  # its Result JSON was asked for and is missing
    counter = count(None)
    again = api.sweep(BASE, runs=runs, keep_results=True, **axes)
    assert counter.calls == 2 and again.reused == 2
    assert again.table.drop(columns=["index"]).equals(first.table.drop(columns=["index"]))
    other_grid = api.sweep(BASE, runs=runs, **{**axes, "policy": ["cake", "stream"]})  # cake's runs are stored
    assert counter.calls == 4 and other_grid.reused == 2


def test_interrupted_api_sweep_keeps_what_finished(tmp_path: Path, count: Callable[[int | None], Counter]) -> None:
    count(3)  # serial, 4 runs in batches of 1: runs 1 and 2 finish
    with pytest.raises(SweepInterrupted) as stop:
        api.sweep(BASE, runs=tmp_path / "runs", trace=["const:20mbps"], bandwidth_scale=[0.5, 1.0],
                  policy=["local", "cake"])  # fmt: skip
    assert len(stop.value.rows) == 2 and len(list((tmp_path / "runs").iterdir())) == 2
