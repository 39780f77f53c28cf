"""Synthetic traces: generators are deterministic per seed and have the intended means; spec strings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sparkv.core.errors import UserError
from sparkv.traces import (
    Trace,
    by_name,
    constant,
    fitted,
    get_trace,
    gilbert_elliott,
    load_trace,
    lte_like,
    parse_duration,
    parse_rate,
    steps,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
MBIT = 1e6 / 8  # bytes/s per Mbit/s


def same(a: Trace, b: Trace) -> bool:
    return (
        a.duration_s == b.duration_s
        and np.array_equal(a.times_s, b.times_s)
        and np.array_equal(a.rates_bps, b.rates_bps)
    )


def test_constant_and_steps() -> None:
    assert constant(5.0, 3.0).loop_bytes == 15.0
    tr = steps([(1.0, 4.0), (3.0, 0.0)])
    assert list(tr.times_s) == [0.0, 1.0] and tr.duration_s == 4.0 and tr.mean_bps == 1.0
    with pytest.raises(ValueError, match="-2"):
        steps([(1.0, -2.0)])
    with pytest.raises(ValueError, match=r"0\.0"):
        steps([(0.0, 1.0)])


def test_gilbert_elliott_deterministic_with_stationary_mean() -> None:
    args = (20 * MBIT, 1 * MBIT, 10.0, 2.0, 20_000.0)
    a, b = gilbert_elliott(*args, seed=4), gilbert_elliott(*args, seed=4)
    assert same(a, b)
    assert not same(a, gilbert_elliott(*args, seed=5))
    expected = (20 * 10 + 1 * 2) / 12 * MBIT
    assert a.mean_bps == pytest.approx(expected, rel=0.05)
    assert set(np.unique(a.rates_bps)) == {20 * MBIT, 1 * MBIT}
    jittered = gilbert_elliott(*args, seed=4, jitter=0.3)
    assert jittered.mean_bps == pytest.approx(expected, rel=0.05)
    assert np.unique(jittered.rates_bps).size > 100


def test_lte_like_default() -> None:
    a = lte_like(seed=3)
    assert same(a, lte_like(seed=3)) and not same(a, lte_like(seed=4))
    assert a.mean_bps == pytest.approx(15 * MBIT)
    assert a.duration_s == 300.0
    per_s = a.resample(1.0).rates_bps
    assert per_s.min() < 0.5 * a.mean_bps < a.mean_bps * 1.5 < per_s.max()  # it fades and peaks
    assert lte_like(seed=0, duration_s=50.0, mean_bps=2 * MBIT).mean_bps == pytest.approx(2 * MBIT)


def test_fitted_matches_source_statistics() -> None:
    src = steps([(5.0, 1 * MBIT), (20.0, 10 * MBIT), (3.0, 0.0), (12.0, 4 * MBIT)])
    raw = fitted(src, 4000.0, seed=1, match_mean=False)
    assert raw.mean_bps == pytest.approx(src.mean_bps, rel=0.10)
    assert set(np.unique(raw.rates_bps)) <= set(src.rates_bps)  # rates come from the source
    exact = fitted(src, 300.0, seed=1)
    assert exact.mean_bps == pytest.approx(src.mean_bps)
    assert same(exact, fitted(src, 300.0, seed=1))


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared traces not found")
@pytest.mark.parametrize("rel", ["mahimahi_lte_us/Verizon-LTE-short.down", "nyu_mets_lte/bus57.csv"])
def test_fitted_on_real_traces(rel: str) -> None:
    src = load_trace(SHARED / rel)
    q_src = np.quantile(src.resample(1.0).rates_bps, [0.1, 0.5, 0.9])
    for seed in range(3):
        out = fitted(src, 5000.0, seed=seed, match_mean=False)  # long enough for the chain to mix
        assert out.mean_bps == pytest.approx(src.mean_bps, rel=0.10)
        assert np.quantile(out.resample(1.0).rates_bps, [0.1, 0.5, 0.9]) == pytest.approx(q_src, rel=0.15)
    assert fitted(src, 300.0, seed=0).mean_bps == pytest.approx(src.mean_bps)  # default: rescaled


@pytest.mark.parametrize(
    ("text", "bps"),
    [("20mbps", 2.5e6), ("20 Mbit/s", 2.5e6), ("800kbps", 1e5), ("1Gbps", 1.25e8), ("2.5MB/s", 2.5e6),
     ("3KB/s", 3e3), ("8bps", 1.0), ("1e3B/s", 1e3), ("10Mb/s", 1.25e6)],
)  # fmt: skip
def test_parse_rate_units(text: str, bps: float) -> None:
    assert parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("text", ["20", "20MBps", "fast", "-1mbps", "20furlongs"])
def test_parse_rate_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


def test_parse_duration() -> None:
    assert [parse_duration(s) for s in ("60s", "500ms", "2min", "30")] == [60.0, 0.5, 120.0, 30.0]


def test_by_name_grammar() -> None:
    c = by_name("const:20mbps")
    assert c.mean_bps == 2.5e6 and c.duration_s == 60.0 and c.name == "const:20mbps"
    assert by_name("const:2.5MB/s,10s").loop_bytes == pytest.approx(2.5e7)
    s = by_name("steps:10s@20mbps,5s@1mbps")
    assert s.duration_s == 15.0 and s.loop_bytes == pytest.approx((10 * 20 + 5 * 1) * MBIT)
    g = by_name("ge:good=10mbps,bad=0mbps,good_s=5,bad_s=5,dur=2000,seed=2")
    assert same(g, gilbert_elliott(10 * MBIT, 0.0, 5.0, 5.0, 2000.0, seed=2))
    assert by_name("ge").duration_s == 300.0
    assert same(by_name("lte:seed=3"), lte_like(3))
    assert same(by_name("lte"), lte_like(0))
    assert by_name("lte:seed=1,dur=60,mean=12mbps").mean_bps == pytest.approx(12 * MBIT)


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared traces not found")
def test_by_name_fit() -> None:
    path = SHARED / "nyu_mets_lte" / "bus57.csv"
    tr = by_name(f"fit:{path},seed=2,dur=600")
    assert tr.duration_s == 600.0
    assert tr.mean_bps == pytest.approx(load_trace(path).mean_bps)


@pytest.mark.parametrize(
    ("spec", "match"),
    [("const:", "const:RATE"), ("const:20", "unit"), ("steps:10s", "DURATION@RATE"), ("ge:speed=3", "KEY=VALUE"),
     ("lte:seed=x", "integer"), ("fit:", "fit:PATH"), ("wave:1", "unknown kind")],
)  # fmt: skip
def test_by_name_errors_are_user_errors(spec: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        by_name(spec)


def test_get_trace_files_and_specs(tmp_path: Path) -> None:
    p = tmp_path / "t.txt"
    p.write_text("0 8\n1 16\n")
    assert get_trace(p).mean_bps == pytest.approx(12 * MBIT)
    assert get_trace("lte:seed=2").name == "lte:seed=2"
    with pytest.raises(UserError, match="no such trace file, and not a synthetic"):
        get_trace(tmp_path / "absent.txt")
