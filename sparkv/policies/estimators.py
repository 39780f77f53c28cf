"""Run-time estimates a controller plans with: link goodput from samples, device speed from timings.

Goodput samples are (bytes, seconds) windows of payload (the driver's `BandwidthSample`s), so the
fixed per-transfer costs never pollute them. Kinds:

- "ewma": exponentially weighted, `alpha` being the weight of one second of samples;
- "harmonic": duration-weighted harmonic mean over the last `window_s` seconds (robust-MPC style:
  a few slow windows pull it down hard);
- "mean": bytes / seconds over the window;
- "quantile": the duration-weighted `quantile` of window rates.
"""

from __future__ import annotations

from collections import deque

ESTIMATORS = ("ewma", "harmonic", "mean", "quantile")
_FLOOR_BPS = 1.0  # an estimate never reaches zero: a stalled link is just very slow


class BandwidthEstimator:
    """Goodput estimate in bytes/s; starts at `prior_bps`."""

    def __init__(
        self, kind: str, prior_bps: float, window_s: float, alpha: float, quantile: float,
        prior_weight_s: float = float("inf"),
    ) -> None:  # fmt: skip
        if kind not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {kind!r}")
        if prior_bps <= 0 or window_s <= 0 or not 0 < alpha <= 1 or not 0 <= quantile <= 1:
            raise ValueError(
                f"bad estimator settings: prior_bps={prior_bps}, window_s={window_s}, alpha={alpha}, "
                f"quantile={quantile}"
            )
        self.kind, self.window_s, self.alpha, self.quantile = kind, window_s, alpha, quantile
        self.prior_weight_s = prior_weight_s  # "ewma": the prior weighs as this many seconds of samples
        self.seen_s = 0.0  # seconds of samples so far
        self.value = prior_bps
        self.samples: deque[tuple[float, float, float]] = deque()  # (end time, bytes, seconds)
        self.last_bytes_s = -1.0  # end of the last window that carried bytes
        self.zero_since: float | None = None  # start of the current run of empty windows
        self.count = 0

    def add(self, t_s: float, n_bytes: float, duration_s: float) -> None:
        if duration_s <= 1e-6:
            return
        self.count += 1
        rate = n_bytes / duration_s
        if n_bytes > 0:
            self.last_bytes_s = t_s
            self.zero_since = None
        elif self.zero_since is None:
            self.zero_since = t_s - duration_s
        self.seen_s += duration_s
        if self.kind == "ewma":
            # a running mean over the prior (as `prior_weight_s` seconds) and the samples while that weighs
            # more than the EWMA's own weight, so an unrepresentative prior fades within a second or two
            w = max(1.0 - (1.0 - self.alpha) ** duration_s, duration_s / (self.seen_s + self.prior_weight_s))
            self.value = max(_FLOOR_BPS, w * rate + (1.0 - w) * self.value)
            return
        self.samples.append((t_s, n_bytes, duration_s))
        while self.samples and self.samples[0][0] < t_s - self.window_s and len(self.samples) > 1:
            self.samples.popleft()
        self.value = max(_FLOOR_BPS, self._window_value())

    def _window_value(self) -> float:
        total_s = sum(d for _, _, d in self.samples)
        if self.kind == "mean":
            return sum(b for _, b, _ in self.samples) / total_s
        if self.kind == "harmonic":
            inv = 0.0
            for _, b, d in self.samples:
                if b <= 0:
                    return 0.0
                inv += d * d / b  # d / rate
            return total_s / inv
        rates = sorted((b / d, d) for _, b, d in self.samples)
        goal, acc = self.quantile * total_s, 0.0
        for rate, d in rates:
            acc += d
            if acc >= goal:
                return rate
        return rates[-1][0]

    def estimate(self) -> float:
        return self.value

    def silent_s(self, now_s: float, since_s: float) -> float:
        """Seconds up to `now_s` since the latest samples began carrying nothing (not before `since_s`)."""
        if self.zero_since is None:
            return 0.0
        return max(0.0, now_s - max(self.zero_since, since_s))

    def dead_for_s(self, now_s: float) -> float:
        """Seconds since the last window that carried bytes."""
        return max(0.0, now_s - max(self.last_bytes_s, 0.0))


class SpeedEstimator:
    """Measured / predicted compute time, EWMA over commands (weight `alpha` each); starts at `start` (1: as
    profiled; a probe's factor when the session measured one)."""

    def __init__(self, alpha: float, start: float = 1.0) -> None:
        if not 0 <= alpha <= 1:
            raise ValueError(f"compute alpha must be in [0, 1], got {alpha}")
        if not 0 < start < float("inf"):
            raise ValueError(f"speed estimate must start finite and > 0, got {start}")
        self.alpha = alpha
        self.scale = start

    def add(self, measured_s: float, predicted_s: float) -> None:
        if predicted_s <= 0 or measured_s < 0:
            return
        self.scale = (1.0 - self.alpha) * self.scale + self.alpha * measured_s / predicted_s
