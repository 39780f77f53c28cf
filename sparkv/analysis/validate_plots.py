"""Figures of a validation: sim and real timelines overlaid lane by lane, and TTFT error by policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sparkv.analysis.gantt import COLOURS
from sparkv.core.result import Result


def plot_overlay(sim: Result, real: Result, path: Path, title: str = "") -> Path:
    """Two rows (link, compute); real spans as filled bars, simulated spans as outlines on top."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(11, 2.6), layout="constrained")
    for row, lane in enumerate(("link", "compute")):
        for span in real.spans:
            if span.lane == lane:
                ax.barh(row + 0.18, span.end_s - span.start_s, left=span.start_s, height=0.36,
                        color=COLOURS.get(span.kind, "grey"), alpha=0.85)  # fmt: skip
        for span in sim.spans:
            if span.lane == lane:
                ax.barh(row - 0.18, span.end_s - span.start_s, left=span.start_s, height=0.36,
                        color=COLOURS.get(span.kind, "grey"), alpha=0.35, edgecolor="black", linewidth=0.3)  # fmt: skip
    ax.axvline(real.ttft_s, color="black", linewidth=1.0, label=f"real TTFT {real.ttft_s:.2f} s")
    ax.axvline(sim.ttft_s, color="black", linewidth=1.0, linestyle="--", label=f"sim TTFT {sim.ttft_s:.2f} s")
    ax.set_yticks([-0.18, 0.18, 0.82, 1.18], ["link (sim)", "link (real)", "compute (sim)", "compute (real)"])
    ax.invert_yaxis()
    ax.set_xlabel("time since request start (s)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"{real.policy}: simulated vs real timeline {title}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_error_by_policy(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Signed TTFT error (sim - real, % of real) of every run, one column per policy."""
    policies = sorted({r["policy"] for r in rows})
    fig, ax = plt.subplots(figsize=(6, 3.6), layout="constrained")
    for i, policy in enumerate(policies):
        errs = [r["ttft_err_pct"] for r in rows if r["policy"] == policy]
        ax.scatter([i] * len(errs), errs, s=16, alpha=0.7)
        if errs:
            ax.hlines(sorted(errs)[len(errs) // 2], i - 0.25, i + 0.25, color="black", linewidth=1.2)
    ax.axhline(0, color="grey", linewidth=0.8)
    for bound in (-5, 5):
        ax.axhline(bound, color="grey", linewidth=0.6, linestyle=":")
    ax.set_xticks(range(len(policies)), policies)
    ax.set_ylabel("TTFT error, sim - real (% of real)")
    ax.set_title("prediction error by policy (bar: median; dotted: +-5%)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
