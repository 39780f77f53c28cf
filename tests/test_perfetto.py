"""Chrome/Perfetto trace export: one process per result, lanes as threads, spans as complete events."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from sparkv import cli
from sparkv.analysis.perfetto import to_chrome_trace, write_chrome_trace
from sparkv.core.config import Scenario
from sparkv.core.result import Result
from sparkv.policies import make_policy
from sparkv.sim import build_world, simulate


@pytest.fixture(scope="module")
def results() -> list[Result]:
    scenario = Scenario(device="analytic-cpu-2core", context_tokens=1024, trace="steps:2s@10mbps,1s@1mbps")
    world = build_world(scenario)
    return [simulate(world, make_policy(name)) for name in ("cake", "stream")]


def test_events_match_spans(results: list[Result]) -> None:
    trace = json.loads(json.dumps(to_chrome_trace(results)))  # JSON-serialisable
    events = trace["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert procs == {1: "sim:cake (steps:2s@10mbps,1s@1mbps)", 2: "sim:stream (steps:2s@10mbps,1s@1mbps)"}
    threads = {(e["pid"], e["args"]["name"]) for e in events if e["name"] == "thread_name"}
    assert {(1, "link"), (1, "compute"), (2, "link")} <= threads
    for pid, result in enumerate(results, start=1):
        spans = [e for e in events if e["ph"] == "X" and e["pid"] == pid]
        assert len(spans) == len(result.spans)
        got = sorted((e["ts"], e["dur"], e["cat"]) for e in spans)
        want = sorted((s.start_s * 1e6, (s.end_s - s.start_s) * 1e6, s.kind) for s in result.spans)
        assert got == [(pytest.approx(a), pytest.approx(b), c) for a, b, c in want]
        fetches = [e for e in spans if e["cat"] == "fetch"]
        assert sum(e["args"]["bytes"] for e in fetches) == result.bytes_streamed
        assert all(e["args"]["cells"] > 0 and len(e["args"]["block"]) == 4 for e in fetches)
        token = [e for e in events if e["ph"] == "i" and e["pid"] == pid]
        assert token[0]["ts"] == pytest.approx(result.ttft_s * 1e6)


def test_bandwidth_counter_follows_the_trace(results: list[Result]) -> None:
    events = to_chrome_trace(results[:1])["traceEvents"]
    counter = [(e["ts"] / 1e6, e["args"]["Mbit/s"]) for e in events if e["ph"] == "C"]
    assert counter[0] == (0.0, pytest.approx(10.0)) and counter[1] == (pytest.approx(2.0), pytest.approx(1.0))
    assert counter[2] == (pytest.approx(3.0), pytest.approx(10.0))  # the trace loops
    assert counter[-1][0] == pytest.approx(max(results[0].ttft_s, max(s.end_s for s in results[0].spans)))
    assert not [e for e in to_chrome_trace(results, bandwidth=False)["traceEvents"] if e["ph"] == "C"]


def test_cli_exports_from_result_files(results: list[Result], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for r in results:
        r.save(tmp_path / "res" / f"{r.policy}.json")
    monkeypatch.setattr(cli, "_COMMANDS", ("report",))
    main: Callable[[list[str]], int] = cli.main
    out = tmp_path / "trace.json"
    assert main(["report", "--perfetto", str(out), str(tmp_path / "res")]) == 0
    loaded = json.loads(out.read_text())
    assert len({e["pid"] for e in loaded["traceEvents"]}) == 2
    write_chrome_trace(results[:1], tmp_path / "one.json")
    assert json.loads((tmp_path / "one.json").read_text())["otherData"]["results"] == 1


def test_breakpoints_never_repeat_across_many_loops() -> None:
    """A run outlasting many passes of its trace: the counter walk ends and moves forward at every step,
    including where rounding puts a loop's end a hair before the next loop's start."""
    from sparkv.analysis.perfetto import _breakpoints_after

    times = [0.0, 0.1, 0.7, 2.9999999999999996]
    gen = _breakpoints_after(times, 3.0, 0.05)
    got = [next(gen) for _ in range(400)]
    assert all(b > a for a, b in itertools.pairwise(got)) and got[0] == pytest.approx(0.1)
    assert got[-1] > 3.0 * 99


def test_a_run_longer_than_its_trace_exports(tmp_path: Path) -> None:
    scenario = Scenario(device="analytic-cpu-2core", context_tokens=1024,
                        trace="steps:0.3s@1mbps,0.1s@0.2mbps").with_(trace_offset_s=0.37)
    result = simulate(build_world(scenario), make_policy("stream"))
    end = max(s.end_s for s in result.spans)
    assert end > 10 * 0.4  # many loops of the trace
    counter = [e["ts"] / 1e6 for e in to_chrome_trace([result])["traceEvents"] if e["ph"] == "C"]
    assert counter == sorted(counter) and counter[-1] == pytest.approx(end)
