"""Figures of an evaluation: TTFT and energy CDFs per policy, speed-ups of SparKV, gaps to the bounds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

COLORS = {"local": "#7f7f7f", "stream": "#1f77b4", "cake": "#ff7f0e", "static": "#9467bd", "sparkv": "#d62728",
          "oracle": "#2ca02c", "fluid bound": "#000000"}  # fmt: skip


def _cdf(ax: Any, values: list[float], label: str) -> None:
    vals = np.sort([v for v in values if math.isfinite(v)])
    if vals.size == 0:
        return
    y = np.arange(1, vals.size + 1) / vals.size
    ax.step(vals, y, where="post", label=f"{label} (n={vals.size})", color=COLORS.get(label))


def _by_policy(rows: list[dict[str, Any]], key: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for r in rows:
        if r["status"] == "ok":
            out.setdefault(r["policy"], []).append(float(r[key]))
    return out


def plot_evaluation(rows: list[dict[str, Any]], out: Path, title: str = "") -> list[Path]:
    """Write the evaluation's figures into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    band = [r for r in rows if r.get("in_band")]
    rows = band or rows
    paths = []

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, vals in _by_policy(rows, "ttft_s").items():
        _cdf(axes[0], vals, name)
    bounds = {(r["trace_path"], r["context_tokens"], r["scale_target"]): r["fluid_bound_s"] for r in rows}
    _cdf(axes[0], list(bounds.values()), "fluid bound")
    for name, vals in _by_policy(rows, "energy_j").items():
        _cdf(axes[1], vals, name)
    for ax, label in zip(axes, ("TTFT (s)", "energy per request (J)"), strict=True):
        _cdf_axes(ax, label)
    fig.suptitle(title or "TTFT and energy over traces x contexts x bandwidth scales")
    paths.append(_save(fig, out / "cdf_ttft_energy.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sparkv = {_key(r): r["ttft_s"] for r in rows if r["policy"] == "sparkv" and r["status"] == "ok"}
    for base in ("local", "stream", "cake", "static"):
        ratios = [r["ttft_s"] / sparkv[_key(r)] for r in rows if r["policy"] == base and _key(r) in sparkv]
        _cdf(ax, ratios, base)
    best = [min(r["local_ttft_s"], r["stream_ttft_s"]) / r["ttft_s"] for r in rows if r["policy"] == "sparkv"]
    _cdf(ax, best, "best of local/stream")
    _cdf_axes(ax, "speed-up of SparKV (baseline TTFT / SparKV TTFT)", unit_line=True)
    paths.append(_save(fig, out / "speedup_sparkv.png"))

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, vals in _by_policy(rows, "ttft_over_oracle").items():
        _cdf(axes[0], vals, name)
    for name, vals in _by_policy(rows, "ttft_over_bound").items():
        _cdf(axes[1], vals, name)
    for ax, label in zip(axes, ("TTFT / oracle TTFT", "TTFT / fluid lower bound"), strict=True):
        _cdf_axes(ax, label, unit_line=True)
    paths.append(_save(fig, out / "gap_oracle_bound.png"))
    return paths


def _key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["trace_path"], r["context_tokens"], r["scale_kind"], r["scale_target"])


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cdf_axes(ax: Any, xlabel: str, unit_line: bool = False) -> None:
    """Log x axis, fraction of scenarios up the y axis, grid and legend; a line at x = 1 for ratios."""
    if unit_line:
        ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction of scenarios")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def plot_pareto(points: list[dict[str, Any]], path: Path) -> Path:
    """One panel per regime: each policy's median TTFT and energy relative to local-only; the front joined."""
    regimes = sorted({p["regime"] for p in points})
    fig, axes = plt.subplots(1, max(1, len(regimes)), figsize=(4.5 * max(1, len(regimes)), 4.2), squeeze=False)
    for ax, regime in zip(axes[0], regimes, strict=False):
        sel = [p for p in points if p["regime"] == regime]
        for p in sel:
            color = COLORS.get(p["policy"], COLORS["sparkv"] if p["policy"].startswith("sparkv") else None)
            ax.scatter(p["ttft_over_local_med"], p["energy_over_local_med"], color=color,
                       marker="o" if p["on_front"] else "x")
            ax.annotate(p["policy"], (p["ttft_over_local_med"], p["energy_over_local_med"]), fontsize=7)
        front = sorted((p["ttft_over_local_med"], p["energy_over_local_med"]) for p in sel if p["on_front"])
        if front:
            ax.plot(*zip(*front, strict=True), color="k", lw=0.8)
        ax.set_title(regime)
        ax.set_xlabel("TTFT / local-only (median)")
        ax.set_ylabel("energy / local-only (median, modelled)")
        ax.grid(alpha=0.3)
    fig.suptitle("TTFT-energy Pareto front per regime (o: on the front)")
    return _save(fig, path)
