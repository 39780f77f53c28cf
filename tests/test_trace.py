"""The Trace type: closed-form integrals, looping, the inverse query, transforms, stats and the benchmark."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkv.core.costs import BandwidthForecast
from sparkv.traces import Trace, TraceStats, concat, constant, integral_vs_stepping, plot_traces, steps

# 2 s at 10 B/s, 1 s at 0 B/s, 1 s at 5 B/s: 25 bytes per 4 s loop.
STEP = steps([(2.0, 10.0), (1.0, 0.0), (1.0, 5.0)])


def step_closed_form(t: float) -> float:
    """Bytes from 0 to t on STEP, by hand."""
    k, r = divmod(t, 4.0)
    within = 10.0 * min(r, 2.0) + 5.0 * max(0.0, r - 3.0)
    return 25.0 * k + within


@pytest.fixture
def step_trace() -> Trace:
    return STEP


def test_constant_integral_is_rate_times_time() -> None:
    tr = constant(1000.0, 7.0)
    assert tr.bytes_between(0.0, 7.0) == pytest.approx(7000.0)
    assert tr.bytes_between(3.5, 100.25) == pytest.approx(1000.0 * 96.75)
    assert tr.time_to_deliver(2.0, 12_345.0) == pytest.approx(2.0 + 12.345)
    assert tr.mean_bps == 1000.0 and tr.loop_bytes == pytest.approx(7000.0)


@pytest.mark.parametrize(
    ("t0", "t1"), [(0.0, 4.0), (0.5, 1.5), (1.0, 3.5), (2.0, 3.0), (3.9, 4.1), (1.0, 9.0), (0.0, 401.3)]
)
def test_step_integral_matches_closed_form(step_trace: Trace, t0: float, t1: float) -> None:
    expected = step_closed_form(t1) - step_closed_form(t0)
    assert step_trace.bytes_between(t0, t1) == pytest.approx(expected, abs=1e-9)


def test_rate_at_loops(step_trace: Trace) -> None:
    assert [step_trace.rate_at(t) for t in (0.0, 1.99, 2.0, 3.0, 3.99, 4.0, 6.5, 403.5)] == [
        10.0, 10.0, 0.0, 5.0, 5.0, 10.0, 0.0, 5.0,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("t0", "n", "expected"),
    [
        (0.0, 0.0, 0.0),
        (1.0, 10.0, 2.0),  # exactly the end of the first segment
        (1.0, 12.5, 3.5),  # across the zero-rate gap
        (1.0, 15.0, 4.0),  # exactly one loop boundary
        (3.5, 25.0, 7.5),  # one whole loop later
        (0.0, 250.0 + 5.0, 40.5),  # ten loops and a bit
        (2.5, 1.0, 3.2),  # starting inside the gap
    ],
)
def test_time_to_deliver_known_values(step_trace: Trace, t0: float, n: float, expected: float) -> None:
    assert step_trace.time_to_deliver(t0, n) == pytest.approx(expected)


def test_time_to_deliver_is_the_earliest_time() -> None:
    # The last segment has zero rate: all bytes of a loop arrive by 2 s, not 4 s.
    tr = steps([(2.0, 10.0), (2.0, 0.0)])
    assert tr.time_to_deliver(0.0, 20.0) == pytest.approx(2.0)
    assert tr.time_to_deliver(0.0, 40.0) == pytest.approx(6.0)
    # 200 loops of 0.005 B: rounding must not push the answer past the last loop's zero-rate tail.
    tiny = steps([(0.01, 0.5), (1.0, 0.0)])
    assert tiny.time_to_deliver(0.0, 1.0) == pytest.approx(199 * 1.01 + 0.01)


def test_zero_bandwidth_is_infinite_not_a_hang() -> None:
    tr = constant(0.0, 10.0)
    assert tr.time_to_deliver(3.0, 1.0) == math.inf
    assert tr.time_to_deliver(3.0, 0.0) == 3.0
    assert tr.bytes_between(0.0, 1e6) == 0.0


times_st = st.floats(min_value=0.0, max_value=500.0, allow_nan=False)
bytes_st = st.floats(min_value=1e-3, max_value=5000.0, allow_nan=False)
traces_st = st.lists(
    st.tuples(st.floats(0.01, 10.0), st.sampled_from([0.0, 0.5, 1.0, 7.0, 100.0])), min_size=1, max_size=8
).filter(lambda segs: any(r > 0 for _, r in segs))


@settings(max_examples=200, deadline=None)
@given(segs=traces_st, t0=times_st, n=bytes_st)
def test_time_to_deliver_inverts_bytes_between(segs: list[tuple[float, float]], t0: float, n: float) -> None:
    tr = steps(segs)
    t1 = tr.time_to_deliver(t0, n)
    assert t1 >= t0
    assert tr.bytes_between(t0, t1) == pytest.approx(n, rel=1e-7, abs=1e-6)
    # Earliest: a little before t1, fewer than n bytes have arrived (the link is busy just before t1).
    before = max(t0, t1 - 1e-6 * max(1.0, t1))
    assert tr.bytes_between(t0, before) < n


@settings(max_examples=200, deadline=None)
@given(segs=traces_st, a=times_st, b=times_st, c=times_st)
def test_bytes_between_is_additive_and_monotone(segs: list[tuple[float, float]], a: float, b: float, c: float) -> None:
    tr = steps(segs)
    t0, t1, t2 = sorted((a, b, c))
    whole = tr.bytes_between(t0, t2)
    assert whole == pytest.approx(tr.bytes_between(t0, t1) + tr.bytes_between(t1, t2), rel=1e-9, abs=1e-6)
    assert whole >= -1e-9


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"times_s": [0.0, 1.0], "rates_bps": [1.0], "duration_s": 2.0}, "shape"),
        ({"times_s": [0.5], "rates_bps": [1.0], "duration_s": 2.0}, "start at 0.0"),
        (
            {"times_s": [0.0, 1.0, 1.0], "rates_bps": [1.0, 1.0, 1.0], "duration_s": 2.0},
            "strictly increasing",
        ),
        ({"times_s": [0.0, 1.0], "rates_bps": [1.0, 1.0], "duration_s": 1.0}, "duration_s"),
        ({"times_s": [0.0], "rates_bps": [-1.0], "duration_s": 1.0}, "-1.0"),
        ({"times_s": [0.0], "rates_bps": [np.nan], "duration_s": 1.0}, "finite"),
        ({"times_s": [], "rates_bps": [], "duration_s": 1.0}, "non-empty"),
    ],
)
def test_validation_names_the_bad_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Trace(np.asarray(kwargs["times_s"], dtype=float), np.asarray(kwargs["rates_bps"]), kwargs["duration_s"])


def test_query_arguments_are_checked(step_trace: Trace) -> None:
    with pytest.raises(ValueError, match="t1_s"):
        step_trace.bytes_between(2.0, 1.0)
    with pytest.raises(ValueError, match="-1"):
        step_trace.time_to_deliver(0.0, -1.0)
    with pytest.raises(ValueError, match=r"-0\.5"):
        step_trace.rate_at(-0.5)


def test_arrays_are_read_only(step_trace: Trace) -> None:
    with pytest.raises(ValueError):
        step_trace.rates_bps[0] = 1.0


def test_scale_slice_concat_resample(step_trace: Trace) -> None:
    assert step_trace.scale(2.0).loop_bytes == pytest.approx(50.0)
    part = step_trace.slice(1.0, 9.5)  # spans two loop boundaries
    assert part.duration_s == pytest.approx(8.5)
    assert part.loop_bytes == pytest.approx(step_closed_form(9.5) - step_closed_form(1.0))
    for t in (0.0, 0.99, 1.0, 2.5, 3.0, 7.2, 8.4):
        assert part.rate_at(t) == step_trace.rate_at(t + 1.0)
    both = concat([step_trace, constant(1.0, 6.0)])
    assert both.duration_s == 10.0 and both.loop_bytes == pytest.approx(31.0)
    assert step_trace.concat(step_trace).bytes_between(0.0, 8.0) == pytest.approx(50.0)
    coarse = step_trace.resample(1.5)  # windows [0,1.5) [1.5,3) [3,4)
    assert coarse.loop_bytes == pytest.approx(step_trace.loop_bytes)
    assert list(coarse.rates_bps) == pytest.approx([10.0, 5.0 / 1.5, 5.0])
    assert step_trace.with_name("x").name == "x"


def test_trace_is_a_bandwidth_forecast(step_trace: Trace) -> None:
    forecast: BandwidthForecast = step_trace
    assert forecast.bytes_between(0.0, 4.0) == pytest.approx(25.0)


def test_stats_are_time_weighted() -> None:
    mbit = 1e6 / 8
    tr = steps([(9.0, 10 * mbit), (1.0, 0.0)])
    st_ = TraceStats.of(tr)
    assert st_.mean_mbit_s == pytest.approx(9.0)
    assert st_.p10_mbit_s == 0.0 and st_.p50_mbit_s == pytest.approx(10.0)
    assert st_.outage_s == pytest.approx(1.0) and st_.duration_s == 10.0


def test_plot_writes_png(tmp_path: Path, step_trace: Trace) -> None:
    out = plot_traces([step_trace, constant(3.0, 4.0)], tmp_path / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_agrees_with_stepping() -> None:
    tr = steps([(0.5, 2e6), (0.25, 0.0), (0.25, 1e6)])
    res = integral_vs_stepping(tr, n_transfers=5, transfer_bytes=300_000.0)
    assert res["end_integral_s"] == pytest.approx(res["end_stepping_s"], abs=5 * 0.001 + 1e-9)
    assert res["integral_s"] > 0 and res["stepping_s"] > 0
    with pytest.raises(ValueError, match="no bytes"):
        integral_vs_stepping(constant(0.0, 1.0), 1, 1.0)
