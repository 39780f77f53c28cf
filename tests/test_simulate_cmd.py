"""`sparkv simulate`: a table with units, result files with their configuration, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkv.cli import main

SMALL = ["--trace", "const:20mbps,600s", "--context-tokens", "1024", "--chunk-tokens", "256"]


def test_simulate_prints_a_table_and_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *SMALL, "--policy", "stream", "--policy", "local", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "TTFT s" in out and "energy J" in out and "streamed MB" in out
    saved = json.loads((tmp_path / "sim-stream.json").read_text())
    assert saved["config"]["scenario"]["context_tokens"] == 1024 and saved["ttft_s"] > 0
    assert saved["spans"][0]["start_s"] == 0.0 and isinstance(saved["spans"][0]["start_s"], float)
    assert (tmp_path / "sim-local-timeline.csv").exists() and (tmp_path / "gantt.png").stat().st_size > 0


def test_a_request_longer_than_the_limit_says_it_needs_longer(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *SMALL, "--policy", "local", "--max-sim-s", "0.5"]) == 3  # stalled, not a usage error
    out = capsys.readouterr().out
    assert "did not finish" in out and "needs longer" in out and "--max-sim-s raises the limit" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-sim-s", "0"], "--max-sim-s"),
        (["--policy", "nope"], "unknown policy"),
        (["--trace", "/no/such/trace.csv"], "trace.csv"),
        (["--model", "no-such-model"], "unknown model"),
    ],
)
def test_bad_input_is_one_line_and_status_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", *SMALL, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
