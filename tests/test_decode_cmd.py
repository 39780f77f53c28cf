"""`sparkv decode` in the simulator: the table, result files, and one-line errors with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparkv.cli import main


def test_decode_prints_every_policy_and_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["decode", "--context-tokens", "1024", "--steps", "4", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("full-kv", "full-reload", "kvswap", "streaming", "oracle-topm"):
        assert name in out
        data = json.loads((tmp_path / f"decode-sim-{name}.json").read_text())
        assert data["decode"]["totals"]["steps"] == 4
        assert data["config"]["decode_scenario"]["context_tokens"] == 1024
    assert "step median ms" in out and "KV memory hwm MB" in out


def test_budget_below_sinks_and_tail_exits_2_naming_the_minimum(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--context-tokens", "1024", "--steps", "2", "--budget", "1000B"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "minimum is 207360 bytes" in err[0]


@pytest.mark.parametrize("args", [["--storage", "/nonexistent/disk.json"], ["--policy", "nope"], ["--budget", "x"]])
def test_bad_input_is_one_line_and_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", "--steps", "2", *args]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
