"""Trace figures readable whatever the traces' lengths and rates: one panel per trace, each on its own axes.

Each panel spans its own trace's length and its own rate range, so a 60 s trace beside a 3600 s one, or a
1 Mbit/s trace beside a 1 Gbit/s one, are both legible. A fast, spiky trace keeps its shape: the raw rate
is drawn thin, a moving mean over about 1/200 of the trace (at least 1 s) drawn bold on top, and the axis
stops at the 99.5th percentile of the rate (the panel says so when higher peaks are cut off).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sparkv.traces.stats import BPS_PER_MBIT, time_weighted_percentiles
from sparkv.traces.trace import Trace

MAX_PANELS = 24  # traces per figure; more would make panels too thin to read


def _smoothed(trace: Trace) -> Trace:
    """The trace averaged over windows of duration/200 (at least 1 s, at most the trace)."""
    window = min(trace.duration_s, max(1.0, trace.duration_s / 200))
    return trace.resample(window)


def plot_trace_panels(traces: Sequence[Trace], png_path: str | Path, title: str | None = None) -> Path:
    """One panel per trace (rate in Mbit/s against time in s, one loop), stacked, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not traces:
        raise ValueError("plot_trace_panels needs at least one trace")
    if len(traces) > MAX_PANELS:
        raise ValueError(f"at most {MAX_PANELS} traces per figure, got {len(traces)}")
    n = len(traces)
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.9 * n + 0.9), squeeze=False)
    for ax, tr in zip(axes[:, 0], traces, strict=True):
        t = np.append(tr.times_s, tr.duration_s)
        r = np.append(tr.rates_bps, tr.rates_bps[-1]) / BPS_PER_MBIT
        smooth = _smoothed(tr)
        coarse = smooth.times_s.size >= tr.times_s.size  # already no finer than the mean would be
        ax.step(t, r, where="post", lw=1.3 if coarse else 0.5, color="tab:blue", alpha=1.0 if coarse else 0.45,
                label="rate")  # fmt: skip
        if not coarse:
            st = np.append(smooth.times_s, smooth.duration_s)
            sr = np.append(smooth.rates_bps, smooth.rates_bps[-1]) / BPS_PER_MBIT
            window = smooth.times_s[1] if smooth.times_s.size > 1 else smooth.duration_s
            ax.step(st, sr, where="post", lw=1.3, color="tab:blue", label=f"mean over {window:.3g} s")
        top = time_weighted_percentiles(tr, (99.5,))[0] / BPS_PER_MBIT
        peak = float(tr.rates_bps.max()) / BPS_PER_MBIT
        top = max(top * 1.15, tr.mean_bps / BPS_PER_MBIT * 1.5, 1e-3)
        if peak > top:
            ax.text(0.995, 0.95, f"peaks to {peak:.3g} Mbit/s cut off", transform=ax.transAxes, ha="right",
                    va="top", fontsize="x-small", color="0.35")  # fmt: skip
        ax.set_ylim(0, top)
        ax.set_xlim(0, tr.duration_s)
        ax.axhline(tr.mean_bps / BPS_PER_MBIT, color="tab:orange", lw=0.8, ls="--",
                   label=f"mean {tr.mean_bps / BPS_PER_MBIT:.3g} Mbit/s")  # fmt: skip
        ax.set_title(f"{tr.name}: {tr.duration_s:.1f} s, mean {tr.mean_bps / BPS_PER_MBIT:.3g} Mbit/s",
                     fontsize="small", loc="left")  # fmt: skip
        ax.set_ylabel("Mbit/s")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper left", ncols=3)
    axes[-1, 0].set_xlabel("time in the trace (s)")
    fig.suptitle(title or f"Bandwidth of {n} trace{'s' if n > 1 else ''} (one loop each, own axes per panel)",
                 fontsize="medium")  # fmt: skip
    fig.tight_layout()
    out = Path(png_path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_traces(traces: Sequence[Trace], png_path: str | Path, title: str | None = None) -> Path:
    """The same as `plot_trace_panels`."""
    return plot_trace_panels(traces, png_path, title)
