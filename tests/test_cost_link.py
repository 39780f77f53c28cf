"""Link calibration: a synthetic link's overhead and efficiency come back; a real pacing link fits its rate."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from sparkv.cost_models.link_calibration import apply_calibration, fit_link
from sparkv.cost_models.profiles import load_profile
from sparkv.profiling.link_calibration import calibrate_link

RATE = 2_000_000.0  # bytes/s
RTT, OVERHEAD, EFF = 0.03, 0.004, 0.9


def synthetic_fetch(noise: float = 0.0, seed: int = 0):
    rng = np.random.default_rng(seed)

    def fetch(n: int) -> float:
        return (RTT + OVERHEAD + n / (RATE * EFF)) * (1 + noise * rng.standard_normal())

    return fetch


def test_calibration_recovers_overhead_and_efficiency() -> None:
    cal = calibrate_link(synthetic_fetch(), RATE, rtt_s=RTT)
    assert cal.per_transfer_s == pytest.approx(OVERHEAD, rel=1e-6)
    assert cal.efficiency == pytest.approx(EFF, rel=1e-9)
    noisy = calibrate_link(synthetic_fetch(0.02), RATE, rtt_s=RTT, repeats=9)
    assert noisy.per_transfer_s == pytest.approx(OVERHEAD, abs=0.002)
    assert noisy.efficiency == pytest.approx(EFF, rel=0.03)
    assert noisy.rel_error["median"] < 0.03


def test_calibration_into_a_profile() -> None:
    cal = calibrate_link(synthetic_fetch(), RATE, rtt_s=RTT, sizes=(10_000, 100_000, 1_000_000), repeats=1)
    profile = apply_calibration(load_profile("h100-sxm"), cal, kind="synthetic")
    assert profile.link["per_transfer_s"] == pytest.approx(OVERHEAD, rel=1e-6)
    assert profile.link["efficiency"] == pytest.approx(EFF)
    assert profile.measurements["link_samples"] == cal.samples


def test_bad_calibration_input() -> None:
    with pytest.raises(ValueError):
        fit_link([(1000, 0.1), (1000, 0.2)], RATE)  # one size only
    with pytest.raises(ValueError):
        fit_link([(1000, 0.2), (100_000, 0.1)], RATE)  # time falls with size
    with pytest.raises(ValueError):
        fit_link([(1000, 0.1), (2000, 0.2)], 0.0)


@pytest.mark.skipif(importlib.util.find_spec("sparkv.executor.net.link") is None, reason="executor link not built")
def test_real_pacing_link_fits_its_rate() -> None:
    from sparkv.profiling.link_real import real_fetcher

    # 40 Mbit/s, about a second in all: slow enough that the loopback's CPU time is not what sets the
    # rate, even on a busy 2-core machine (at 320 Mbit/s a loaded machine delivered 0.7x)
    rate = 5e6
    with real_fetcher("pacing", rate, pings=3) as (fetch, rtt_s):
        cal = calibrate_link(fetch, rate, rtt_s, sizes=(16_384, 131_072, 524_288, 1_048_576), repeats=2)
    assert 0.0 <= rtt_s < 0.05
    assert 0.7 < cal.goodput_bps / rate < 1.1
    assert cal.per_transfer_s < 0.05


def test_shaper_burst_is_found_and_does_not_bias_the_rate() -> None:
    burst = 50_000  # a token bucket lets the first 50 kB through at once

    def fetch(n: int) -> float:
        return RTT + OVERHEAD + max(0, n - burst) / (RATE * EFF)

    cal = calibrate_link(fetch, RATE, rtt_s=RTT, sizes=(4096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304))
    assert cal.efficiency == pytest.approx(EFF, rel=0.01)  # the rate is not biased by the burst
    assert 16_384 <= cal.burst_bytes <= 65_536  # found, to the resolution of the sizes measured
    assert 0 < cal.per_transfer_s < OVERHEAD + 0.01
