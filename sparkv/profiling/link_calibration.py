"""Timing transfers over a real link for the link model's fit (`sparkv.cost_models.link_calibration`).

`calibrate_link` calls a `fetch(n_bytes) -> seconds` (e.g. `link_real.real_fetcher`'s) for several sizes,
takes the median of each and fits the line with `fit_link`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from sparkv.cost_models.link_calibration import LinkCalibration, fit_link

DEFAULT_SIZES = (4_096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304)


def calibrate_link(
    fetch: Callable[[int], float],
    rate_bps: float,
    rtt_s: float = 0.0,
    sizes: Sequence[int] = DEFAULT_SIZES,
    repeats: int = 5,
    warmup: int = 1,
    tick: Callable[[int], None] | None = None,
) -> LinkCalibration:
    """Time `fetch(n)` for every size (`repeats` times each, after `warmup` untimed calls), fit the line.

    `fetch` must transfer n payload bytes over the link under test at the steady rate `rate_bps` and
    return the elapsed seconds from request to last byte (e.g. a `KVClient` fetch against a server
    behind the pacing or netns link). Sizes are interleaved so drift affects all sizes alike.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fetch(int(sizes[0]))
    times: dict[int, list[float]] = {int(n): [] for n in sizes}
    for _ in range(repeats):
        for n in sizes:
            times[int(n)].append(float(fetch(int(n))))
            if tick:
                tick(int(n))
    medians = [(n, float(np.median(v))) for n, v in times.items()]
    return fit_link(medians, rate_bps, rtt_s)
