"""Synthetic bandwidth traces, so the project runs and tests without outside data.

- `constant`, `steps`: exact closed forms for tests and sanity runs.
- `gilbert_elliott`: a two-state (good/bad) Markov link in discrete steps of `dt_s`; sojourn times are
  geometric with the given means; optional lognormal jitter (mean 1) on every step.
- `fitted`: a Markov chain over equal-probability rate bins of a real trace at 1 s resolution; within a
  state the rate is drawn from the source's own samples in that bin (see its docstring).
- `lte_like`: the built-in default link: log-normal AR(1) fluctuation (time constant 2 s) with deep fades
  (a Gilbert-Elliott overlay), scaled to a mean of 15 Mbit/s. Same seed, same trace.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from sparkv.traces.trace import Trace

MBIT_BPS = 1e6 / 8.0  # bytes per second in one Mbit/s


def _grid(duration_s: float, dt_s: float) -> np.ndarray:
    """Step start times 0, dt, 2dt, ... strictly below duration_s."""
    if not (duration_s > 0 and math.isfinite(duration_s)):
        raise ValueError(f"duration_s must be finite and > 0, got {duration_s!r}")
    if not (dt_s > 0 and math.isfinite(dt_s)):
        raise ValueError(f"dt_s must be finite and > 0, got {dt_s!r}")
    n = max(1, math.ceil(duration_s / dt_s - 1e-9))
    return np.arange(n, dtype=np.float64) * dt_s


def _merged(times: np.ndarray, rates: np.ndarray, duration_s: float, name: str, source: str) -> Trace:
    """A trace with runs of equal consecutive rates collapsed to one breakpoint."""
    keep = np.concatenate(([True], rates[1:] != rates[:-1]))
    return Trace(times[keep], rates[keep], duration_s, name, source)


def constant(rate_bps: float, duration_s: float = 60.0, name: str | None = None) -> Trace:
    """A link that always delivers `rate_bps`."""
    if not (rate_bps >= 0 and math.isfinite(rate_bps)):
        raise ValueError(f"rate_bps must be finite and >= 0, got {rate_bps!r}")
    src = f"constant({rate_bps:g} B/s, {duration_s:g} s)"
    return Trace(np.zeros(1), np.array([float(rate_bps)]), duration_s, name or src, src)


def steps(segments: Sequence[tuple[float, float]], name: str | None = None) -> Trace:
    """Back-to-back segments of (duration_s, rate_bps)."""
    if not segments:
        raise ValueError("steps needs at least one (duration_s, rate_bps) segment")
    for d, r in segments:
        if not (d > 0 and math.isfinite(d)):
            raise ValueError(f"segment duration must be finite and > 0, got {d!r}")
        if not (r >= 0 and math.isfinite(r)):
            raise ValueError(f"segment rate must be finite and >= 0, got {r!r}")
    durations = np.array([d for d, _ in segments], dtype=np.float64)
    times = np.concatenate(([0.0], np.cumsum(durations)[:-1]))
    src = "steps(" + ", ".join(f"{d:g}s@{r:g}B/s" for d, r in segments) + ")"
    return Trace(times, np.array([r for _, r in segments], dtype=np.float64), float(durations.sum()), name or src, src)


def _two_state(
    rng: np.random.Generator, n: int, p_leave_good: float, p_leave_bad: float, p_start_good: float
) -> np.ndarray:
    """(n,) bool, True = good: alternating runs with geometric lengths."""
    good = np.empty(n, dtype=bool)
    state = bool(rng.random() < p_start_good)
    i = 0
    while i < n:
        run = int(rng.geometric(p_leave_good if state else p_leave_bad))
        good[i : i + run] = state
        i += run
        state = not state
    return good


def gilbert_elliott(
    good_bps: float,
    bad_bps: float,
    mean_good_s: float,
    mean_bad_s: float,
    duration_s: float,
    seed: int = 0,
    dt_s: float = 0.1,
    jitter: float = 0.0,
    name: str | None = None,
) -> Trace:
    """Two-state Markov link; starts in its stationary distribution; `jitter` is the lognormal sigma."""
    for label, v in (("good_bps", good_bps), ("bad_bps", bad_bps), ("jitter", jitter)):
        if not (v >= 0 and math.isfinite(v)):
            raise ValueError(f"{label} must be finite and >= 0, got {v!r}")
    for label, v in (("mean_good_s", mean_good_s), ("mean_bad_s", mean_bad_s)):
        if not (v > 0 and math.isfinite(v)):
            raise ValueError(f"{label} must be finite and > 0, got {v!r}")
    times = _grid(duration_s, dt_s)
    rng = np.random.default_rng(seed)
    p_gb = -math.expm1(-dt_s / mean_good_s)
    p_bg = -math.expm1(-dt_s / mean_bad_s)
    good = _two_state(rng, times.size, p_gb, p_bg, mean_good_s / (mean_good_s + mean_bad_s))
    rates = np.where(good, float(good_bps), float(bad_bps))
    if jitter > 0:
        rates = rates * rng.lognormal(-0.5 * jitter**2, jitter, times.size)
    src = (
        f"gilbert_elliott(good={good_bps:g}B/s, bad={bad_bps:g}B/s, good_s={mean_good_s:g}, "
        f"bad_s={mean_bad_s:g}, dur={duration_s:g}s, seed={seed}, dt={dt_s:g}s, jitter={jitter:g})"
    )
    return _merged(times, rates, duration_s, name or f"ge:seed={seed}", src)


def fitted(
    trace: Trace,
    duration_s: float,
    seed: int = 0,
    n_bins: int = 8,
    dt_s: float = 1.0,
    match_mean: bool = True,
    name: str | None = None,
) -> Trace:
    """A new trace with `trace`'s statistics: a Markov chain over rate-quantile bins.

    The source is resampled to `dt_s` (1 s); each sample falls in one of `n_bins` equal-probability
    rate bins (fewer if quantiles tie, e.g. many zero seconds). Bin-to-bin transitions are counted from
    consecutive samples, cyclically since traces loop, so the chain's stationary distribution is the
    source's bin occupancy. In a state the rate is one of the source's samples in that bin, drawn
    uniformly. Long outputs therefore match the source's mean and quantiles; short ones wander around it
    (raw chain on Verizon-LTE-short, 140 s: a 420 s output is within 15% of the mean for 90% of seeds,
    a 4200 s one within 3%). `match_mean` (default) rescales the output so its mean is exactly the source's.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins!r}")
    times = _grid(duration_s, dt_s)
    x = trace.resample(dt_s).rates_bps
    edges = np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1)[1:-1])
    _, state = np.unique(np.searchsorted(edges, x, side="right"), return_inverse=True)
    k = int(state.max()) + 1
    counts = np.zeros((k, k))
    np.add.at(counts, (state, np.roll(state, -1)), 1.0)
    cdf = [np.cumsum(row / row.sum()).tolist() for row in counts]
    members = [x[state == b] for b in range(k)]
    rng = np.random.default_rng(seed)
    u = rng.random(times.size).tolist()
    pick = rng.random(times.size)
    s = int(state[rng.integers(state.size)])
    rates = np.empty(times.size)
    for i in range(times.size):
        m = members[s]
        rates[i] = m[min(int(pick[i] * m.size), m.size - 1)]
        s = min(bisect_right(cdf[s], u[i]), k - 1)
    src = f"fitted({trace.source or trace.name}, dur={duration_s:g}s, seed={seed}, bins={n_bins}, dt={dt_s:g}s)"
    out = _merged(times, rates, duration_s, name or f"fitted({trace.name})", src)
    if match_mean and out.mean_bps > 0:
        out = replace(out, rates_bps=out.rates_bps * (trace.mean_bps / out.mean_bps))
    return out


def lte_like(seed: int = 0, duration_s: float = 300.0, mean_bps: float = 15.0 * MBIT_BPS) -> Trace:
    """The built-in LTE-like link: mean `mean_bps` (15 Mbit/s), lognormal wander, fades of ~1.5 s.

    Log-rate follows AR(1) at 0.1 s steps with a 2 s time constant and stationary sigma 0.5; on top, a
    Gilbert-Elliott overlay (good 20 s, fade 1.5 s mean) cuts the rate to 5% in a fade. The result is
    scaled so its mean is exactly `mean_bps`.
    """
    if not (mean_bps > 0 and math.isfinite(mean_bps)):
        raise ValueError(f"mean_bps must be finite and > 0, got {mean_bps!r}")
    dt, tau, sigma = 0.1, 2.0, 0.5
    times = _grid(duration_s, dt)
    rng = np.random.default_rng(seed)
    a = math.exp(-dt / tau)
    eps = rng.standard_normal(times.size) * sigma * math.sqrt(1.0 - a * a)
    logr = np.empty(times.size)
    prev = float(rng.standard_normal()) * sigma
    for i, e in enumerate(eps.tolist()):
        prev = a * prev + e
        logr[i] = prev
    good = _two_state(rng, times.size, -math.expm1(-dt / 20.0), -math.expm1(-dt / 1.5), 20.0 / 21.5)
    rates = np.exp(logr) * np.where(good, 1.0, 0.05)
    t = Trace(times, rates, duration_s)
    src = f"lte_like(seed={seed}, dur={duration_s:g}s, mean={mean_bps * 8 / 1e6:g}Mbit/s)"
    return Trace(times, rates * (mean_bps / t.mean_bps), duration_s, f"lte:seed={seed}", src)
