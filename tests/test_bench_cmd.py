"""`sparkv bench sim` runs and prints rates with units; bad counts are one-line errors (no timing asserted)."""

from __future__ import annotations

import pytest

from sparkv.cli import main


def test_bench_sim_prints_rates_and_the_stepping_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "sim", "--trace", "const:20mbps,600s", "--requests", "3", "--repeats", "2",
                 "--policy", "stream", "--policy", "local"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "median req/s" in out and "requests timed" in out and "ratio" in out and "machine reference" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["stream"], ["local"])}
    assert set(rows) == {"stream", "local"} and all(int(r[-1]) == 6 for r in rows.values())  # 3 requests x 2 repeats


def test_bench_sim_stops_a_repeat_at_max_seconds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sim", "--trace", "const:20mbps,600s", "--requests", "100000", "--repeats", "1",
                 "--max-wall-s", "0.05", "--policy", "local"]) == 0  # fmt: skip
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.split()[:1] == ["local"])
    assert 1 <= int(row[-1]) < 100000


@pytest.mark.parametrize("flag", [["--requests", "0"], ["--repeats", "0"], ["--max-wall-s", "0"]])
def test_bench_sim_rejects_bad_counts(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sim", "--trace", "const:20mbps", *flag]) == 2
    assert "--" in capsys.readouterr().err


def test_bench_sim_prints_one_table_per_context(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sim", "--trace", "const:20mbps,600s", "--requests", "1", "--repeats", "1",
                 "--policy", "local", "--policy", "stream", "--context", "1024", "--context", "2048"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "1024 tokens in 2 chunks" in out and "2048 tokens in 4 chunks" in out
    assert out.count("rate / local's") == 2 and "ms/request" in out


def test_bench_sim_counts_a_planning_policys_searches(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "sim", "--trace", "lte:seed=2,dur=60,mean=8mbps", "--requests", "1", "--repeats", "1",
                 "--policy", "sparkv", "--policy", "local", "--context", "2048"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "plan searches/request" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.split()[:1] in (["sparkv"], ["local"])}
    assert int(rows["sparkv"][-2]) >= 1 and rows["local"][-2] == "-"
