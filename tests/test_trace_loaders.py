"""Trace loaders: every public format on the real shared files, the generic table reader, errors, the CLI.

Expected durations and means are computed here with a few lines of plain Python (csv, statistics),
never with the loaders' own helpers.
"""

from __future__ import annotations

import csv
import itertools
import statistics
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from sparkv.cli import main
from sparkv.core.errors import UserError
from sparkv.traces import detect_format, load_trace

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
MBIT = 1e6 / 8  # bytes/s per Mbit/s

needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared traces not found at {SHARED}")

FOLDER_FORMAT = {
    "mahimahi_lte_us": "mahimahi",
    "norway_hsdpa_3g": "pensieve",
    "fcc_broadband": "pensieve",
    "5gophers_mmwave": "5gophers",
    "ucc_5g_ireland": "gnettrack",
    "nyu_mets_lte": "nyu-mets",
}


def shared_files() -> list[Path]:
    if not SHARED.is_dir():
        return []
    skip = ("README", "UPSTREAM", "LICENSE", "COPYING")
    return sorted(f for f in SHARED.glob("*/*") if f.is_file() and not f.name.startswith(skip))


def held_mean(times: list[float], rates: list[float]) -> tuple[float, float]:
    """(duration, mean) of rates that hold until the next time, the last for the median interval."""
    last = statistics.median(b - a for a, b in itertools.pairwise(times))
    ends = [*times[1:], times[-1] + last]
    total = sum(r * (e - t) for t, e, r in zip(times, ends, rates, strict=True))
    duration = ends[-1] - times[0]
    return duration, total / duration


# -- real files ---------------------------------------------------------------------------------------


@needs_shared
@pytest.mark.parametrize("path", shared_files(), ids=lambda p: p.name)
def test_auto_detects_every_shared_file(path: Path) -> None:
    assert detect_format(path) == FOLDER_FORMAT[path.parent.name]
    assert load_trace(path).mean_bps > 0


@needs_shared
@pytest.mark.parametrize("name", ["Verizon-LTE-short.down", "ATT-LTE-driving-2016.up"])
def test_mahimahi_real(name: str) -> None:
    path = SHARED / "mahimahi_lte_us" / name
    stamps = [int(s) for s in path.read_text().split()]
    tr = load_trace(path)
    assert tr.duration_s == pytest.approx(stamps[-1] / 1000)
    assert tr.loop_bytes == pytest.approx(len(stamps) * 1500)  # every packet once per loop
    assert tr.mean_bps == pytest.approx(len(stamps) * 1500 / (stamps[-1] / 1000))
    assert np.diff(np.append(tr.times_s, tr.duration_s)).min() >= 0.05  # no sliver bins (120.002 s loops)
    one_s = load_trace(path, window_s=1.0)
    in_10th_second = sum(10_000 <= s < 11_000 for s in stamps)
    assert one_s.rate_at(10.5) == pytest.approx(in_10th_second * 1500)
    assert one_s.rate_at(10.5 + one_s.duration_s) == one_s.rate_at(10.5)  # loops


@needs_shared
@pytest.mark.parametrize(
    "rel",
    [
        "norway_hsdpa_3g/norway_bus_1",
        "norway_hsdpa_3g/norway_ferry_2",
        "fcc_broadband/trace_7190_http---www.yahoo.com",
    ],
)
def test_pensieve_real(rel: str) -> None:
    rows = [line.split() for line in (SHARED / rel).read_text().splitlines() if line.strip()]
    times = [float(t) for t, _ in rows]
    duration, mean = held_mean(times, [float(r) * MBIT for _, r in rows])
    tr = load_trace(SHARED / rel)
    assert tr.duration_s == pytest.approx(duration)
    assert tr.mean_bps == pytest.approx(mean)


@needs_shared
def test_5gophers_real() -> None:
    path = SHARED / "5gophers_mmwave" / "walking-trace.csv"
    with path.open() as f:
        mbps = [float(row["throughput_mbps"]) for row in csv.DictReader(f)]
    tr = load_trace(path)
    assert tr.duration_s == len(mbps)
    assert tr.mean_bps == pytest.approx(statistics.fmean(mbps) * MBIT)


@needs_shared
@pytest.mark.parametrize("name", ["static_B_2020.02.14_13.21.26.csv", "driving_B_2019.12.16_14.23.32.csv"])
def test_gnettrack_real(name: str) -> None:
    path = SHARED / "ucc_5g_ireland" / name
    by_second: dict[datetime, list[float]] = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            if row["DL_bitrate"] != "-":
                stamp = datetime.strptime(row["Timestamp"], "%Y.%m.%d_%H.%M.%S")
                by_second.setdefault(stamp, []).append(float(row["DL_bitrate"]) * 1000 / 8)
    seconds = sorted(by_second)
    t = [(s - seconds[0]).total_seconds() for s in seconds]
    duration, mean = held_mean(t, [statistics.fmean(by_second[s]) for s in seconds])
    tr = load_trace(path)
    assert tr.duration_s == pytest.approx(duration)
    assert tr.mean_bps == pytest.approx(mean)
    assert tr.times_s.size == len(seconds)  # repeated seconds merged


@needs_shared
@pytest.mark.parametrize("name", ["bus57.csv", "7Train1.csv"])
def test_nyu_mets_real(name: str) -> None:
    factor = {"bits/sec": 1 / 8, "Kbits/sec": 1e3 / 8, "Mbits/sec": 1e6 / 8}
    values = []
    with (SHARED / "nyu_mets_lte" / name).open() as f:
        for value, unit in csv.reader(f):
            values.append(float(value) * factor[unit.strip()])
    tr = load_trace(SHARED / "nyu_mets_lte" / name)
    assert tr.duration_s == len(values)
    assert tr.mean_bps == pytest.approx(statistics.fmean(values))


# -- the generic reader and small synthetic files ----------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_self_describing_csv_is_auto_detected(tmp_path: Path) -> None:
    p = write(tmp_path, "bw.csv", "time_s,bytes_per_second\n0,100\n2,300\n3,0\n4,50\n")
    assert detect_format(p) == "columns"
    tr = load_trace(p)
    assert list(tr.times_s) == [0, 2, 3, 4] and tr.duration_s == 5.0
    assert tr.loop_bytes == pytest.approx(100 * 2 + 300 + 0 + 50)


def test_columns_with_named_units_and_index_columns(tmp_path: Path) -> None:
    p = write(tmp_path, "x.txt", "# a comment\n0 8000\n500 16000\n500 0\n1500 8000\n")
    tr = load_trace(p, "columns", time_col=0, time_unit="ms", rate_col=1, rate_unit="kbps")
    # repeated 500 ms averaged to 8000 kbit/s; the last holds for the median interval (of 0.5 s and 1 s)
    assert list(tr.times_s) == [0.0, 0.5, 1.5]
    assert list(tr.rates_bps) == pytest.approx([1e6, 1e6, 1e6])
    assert tr.duration_s == pytest.approx(1.5 + 0.75)


def test_columns_without_time_hold_missing_samples(tmp_path: Path) -> None:
    p = write(tmp_path, "y.csv", "a,MBps_col\n1,-\n2,2\n3,\n4,4\n")
    tr = load_trace(p, "columns", rate_col="MBps_col", rate_unit="MB/s", interval_s=0.5)
    assert list(tr.rates_bps) == [2e6, 2e6, 2e6, 4e6]  # leading takes the first; gap holds the previous
    assert tr.duration_s == 2.0


def test_5gophers_carrier_columns(tmp_path: Path) -> None:
    text = "protocol,num_tcp_conn,seq_num,"
    text += "Sprint_throughput_mbps,TMobile_throughput_mbps,Verizon_throughput_mbps\n"
    text += "TCP,8,1,10,20,800\nTCP,8,2,30,40,1200\n"
    p = write(tmp_path, "car.csv", text)
    assert detect_format(p) == "5gophers"
    with pytest.raises(UserError, match=r"carriers Sprint, TMobile, Verizon.*\?carrier=sprint"):
        load_trace(p)
    assert load_trace(p, rate_col="Verizon").mean_bps == pytest.approx(1000 * MBIT)
    assert load_trace(p, rate_col="TMobile_throughput_mbps").mean_bps == pytest.approx(30 * MBIT)


@pytest.mark.parametrize(
    ("fmt", "text", "line", "expected"),
    [
        ("mahimahi", "0\n1\n1x\n5\n", 3, "millisecond timestamp"),
        ("mahimahi", "0\n7\n3\n", 3, "must not decrease"),
        ("pensieve", "0.0 1.0\n1.0 abc\n", 2, "expected a number"),
        ("pensieve", "0.0 1.0\n2.0 1.0\n1.0 1.0\n", 3, "backwards"),
        ("pensieve", "0.0 1.0\n1.0\n", 2, "at least 2 fields"),
        ("nyu-mets", "1.0,Mbits/sec\n2.0,Mbits/sec\n3,furlongs/sec\n", 3, "unknown unit"),
        ("nyu-mets", "1.0,Mbits/sec\n2.0;Mbits/sec\n", 2, "expected '<number>,"),
        ("gnettrack", "Timestamp,DL_bitrate\n2020.01.01_00.00.00,5\nyesterday,6\n", 3, "expected a time"),
        ("auto", "0.0 1.0\n1.0 2.0\n2.0 3.0\nhello\n", 4, "looks like pensieve"),
        ("auto", "1.0 2.0 3.0\n", 1, "cannot tell the format"),
        ("auto", "alpha,beta\n1,2\n", 1, "matches no known format"),
    ],
)
def test_malformed_input_names_file_and_line(tmp_path: Path, fmt: str, text: str, line: int, expected: str) -> None:
    p = write(tmp_path, "bad.trace", text)
    with pytest.raises(UserError, match=expected) as info:
        load_trace(p, fmt)
    assert f"{p}:{line}:" in str(info.value)


def test_missing_empty_and_misused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such trace file"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="empty file"):
        load_trace(write(tmp_path, "e.txt", "\n  \n"))
    with pytest.raises(UserError, match="only a header"):
        load_trace(write(tmp_path, "h.csv", "time_s,bytes_per_second\n"))
    good = write(tmp_path, "g.txt", "0 1\n1 2\n")
    with pytest.raises(UserError, match="do not apply"):
        load_trace(good, window_s=1.0)
    with pytest.raises(UserError, match="unknown trace format"):
        load_trace(good, "nonsense")
    with pytest.raises(UserError, match="needs rate_col and rate_unit"):
        load_trace(good, "columns", rate_col=1)
    with pytest.raises(UserError, match="unknown rate unit"):
        load_trace(good, "columns", rate_col=1, rate_unit="furlongs")
    with pytest.raises(UserError, match="no rate column 'speed'"):
        load_trace(write(tmp_path, "n.csv", "a,b\n1,2\n"), "columns", rate_col="speed", rate_unit="B/s")


# -- the CLI -------------------------------------------------------------------------------------------


def test_cli_traces_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = write(tmp_path, "bw.csv", "time_s,bytes_per_second\n0,125000\n1,375000\n")
    png = tmp_path / "p.png"
    assert main(["traces", "show", str(p), "const:8mbps", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "bw.csv" in out and "columns" in out and "const:8mbps" in out and "synthetic" in out
    assert "2.00" in out and "8.00" in out  # mean Mbit/s of each
    assert png.stat().st_size > 0
    assert main(["traces", "show", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err
