"""Loader options inside a trace argument (`PATH?carrier=tmobile&gaps=outage`), gaps, and looping."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparkv import api
from sparkv.cli import main
from sparkv.core.errors import UserError
from sparkv.traces import get_trace
from sparkv.traces.expand import expand_traces
from sparkv.traces.options import join_trace_arg, split_trace_arg

CARRIERS = """protocol,num_tcp_conn,seq_num,Sprint_throughput_mbps,TMobile_throughput_mbps,Verizon_throughput_mbps
TCP,8,100,10,20,30
TCP,8,101,10,20,30
TCP,8,102,10,20,30
TCP,8,109,10,40,30
TCP,8,110,10,40,30
"""


@pytest.fixture()
def car(tmp_path: Path) -> Path:
    path = tmp_path / "car.csv"
    path.write_text(CARRIERS)
    return path


def test_options_split_off_and_back_and_a_glob_is_left_alone() -> None:
    assert split_trace_arg("a.csv?carrier=tmobile&gaps=outage") == ("a.csv", {"carrier": "tmobile", "gaps": "outage"})
    assert split_trace_arg("traces/trace?.csv") == ("traces/trace?.csv", {})
    assert split_trace_arg(join_trace_arg("x/y.csv", {"rate_col": "2"})) == ("x/y.csv", {"rate_col": "2"})
    with pytest.raises(UserError, match="unknown option"):
        split_trace_arg("a.csv?colour=red")


def test_a_multi_carrier_file_names_its_carriers_and_takes_one(car: Path) -> None:
    with pytest.raises(UserError, match=r"carriers Sprint, TMobile, Verizon.*\?carrier="):
        get_trace(str(car))
    trace = get_trace(f"{car}?carrier=tmobile")
    assert trace.name == "car.csv[TMobile]" and trace.info["column"] == "TMobile_throughput_mbps"
    assert trace.rate_at(0.5) == pytest.approx(20e6 / 8)
    with pytest.raises(UserError, match="carriers: Sprint, TMobile, Verizon"):
        get_trace(f"{car}?carrier=att")


def test_a_gap_in_seq_num_keeps_its_length_and_follows_the_gap_option(car: Path) -> None:
    filled = get_trace(f"{car}?carrier=verizon")
    assert filled.duration_s == pytest.approx(11.0)  # seq 100..110, not 5 rows
    assert filled.loop_bytes == pytest.approx(11 * 30e6 / 8) and "6 s" in filled.info["gaps"]
    outage = get_trace(f"{car}?carrier=verizon&gaps=outage")
    assert outage.duration_s == pytest.approx(11.0)
    assert outage.rate_at(5.0) == 0.0 and outage.loop_bytes == pytest.approx(5 * 30e6 / 8)
    with pytest.raises(UserError, match=r"gap.*102 then 109"):
        get_trace(f"{car}?carrier=verizon&gaps=error")


def test_missing_rates_without_a_time_column_follow_the_gap_option(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("mbps\n8\n-\n16\n")
    assert get_trace(f"{path}?format=columns&rate_col=mbps&rate_unit=Mbps").rate_at(1.5) == pytest.approx(1e6)
    assert get_trace(f"{path}?format=columns&rate_col=mbps&rate_unit=Mbps&gaps=outage").rate_at(1.5) == 0.0
    with pytest.raises(UserError, match=r"m.csv:3: missing rate"):
        get_trace(f"{path}?format=columns&rate_col=mbps&rate_unit=Mbps&gaps=error")


def test_a_headerless_csv_is_read_by_naming_its_columns(tmp_path: Path) -> None:
    path = tmp_path / "h.csv"
    path.write_text("0,1000000\n1,2000000\n2,500000\n")
    with pytest.raises(UserError, match=r"\?format=columns&time_col=0&rate_col=1&rate_unit=B/s"):
        get_trace(str(path))
    trace = get_trace(f"{path}?format=columns&time_col=0&rate_col=1&rate_unit=B/s")
    assert trace.rate_at(1.5) == 2e6 and trace.duration_s == pytest.approx(3.0)


def test_folders_and_globs_hand_their_options_to_every_file(car: Path) -> None:
    (car.parent / "car2.csv").write_text(CARRIERS)
    folder = expand_traces([f"{car.parent}?carrier=sprint"])
    assert folder == [f"{car.parent / 'car.csv'}?carrier=sprint", f"{car.parent / 'car2.csv'}?carrier=sprint"]
    assert expand_traces([f"{car.parent}/car*.csv?carrier=sprint"]) == folder
    assert all(get_trace(t).info["column"] == "Sprint_throughput_mbps" for t in folder)


def test_loop_error_turns_a_run_that_outlives_the_trace_into_an_error(tmp_path: Path) -> None:
    path = tmp_path / "short.csv"
    path.write_text("time_s,mbps\n0,20\n1,20\n")
    sc = api.scenario(trace=f"{path}?loop=error", context_tokens=1024, chunk_tokens=256, device="analytic-cpu-2core")
    run = api.simulate(sc, ["local"], warn=False)
    assert run.results == [] and "loop=error" in run.stalled["local"]


def test_traces_show_prints_what_loads_and_one_line_per_failure(
    car: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("what is this\n")
    png = tmp_path / "p.png"
    code = main(["traces", "show", str(car), f"{car}?carrier=verizon", str(bad), "const:8mbps,30s",
                 "--carrier", "tmobile", "--plot", str(png)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1
    assert "car.csv[TMobile]" in captured.out and "car.csv[Verizon]" in captured.out  # the file's own wins
    assert "Verizon_throughput_mbps" in captured.out and "const:8mbps,30s" in captured.out
    assert captured.err.count("error:") == 1 and "bad.txt" in captured.err
    assert png.stat().st_size > 0
    assert main(["traces", "show", str(bad)]) == 2


def test_simulate_takes_a_trace_with_options_and_says_when_it_looped(
    car: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["simulate", "--trace", f"{car}?carrier=sprint", "--context-tokens", "1024", "--chunk-tokens",
                 "256", "--policy", "stream"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "car.csv[Sprint]" in out and "looped" in out and "11.0 s" in out
