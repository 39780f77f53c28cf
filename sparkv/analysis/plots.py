"""The standard figures of a sweep or an evaluation, from result rows (see `tables`), as PNG files.

- TTFT vs bandwidth (scale of the trace, or the trace's mean Mbit/s) per policy, median and IQR band;
- CDF of TTFT over all runs per policy (runs that stalled count as never finishing);
- energy per policy by component (mean over finished runs);
- the best policy (lowest median TTFT) over bandwidth x context length.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.colors
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from sparkv.analysis.tables import distinct, group_by, numbers, ok_rows

Row = dict[str, Any]
KNOWN = ("local", "stream", "cake", "static", "sparkv", "oracle")
PALETTE = ("#7f7f7f", "#1f77b4", "#ff7f0e", "#8c564b", "#2ca02c", "#000000", "#9467bd", "#e377c2", "#17becf",
           "#bcbd22", "#d62728")  # fmt: skip
ENERGY_COLOURS = {"radio": "#1f77b4", "compute": "#2ca02c", "idle": "#c7c7c7"}
DPI = 130


def policy_colours(policies: Sequence[str]) -> dict[str, str]:
    """One fixed colour per policy: the known ones always get the same colour."""
    out = {p: PALETTE[KNOWN.index(p)] for p in policies if p in KNOWN}
    spare = [c for c in PALETTE[len(KNOWN) :]] + list(PALETTE[: len(KNOWN)])
    for p in policies:
        if p not in out:
            out[p] = spare[len(out) % len(spare)]
    return out


def ttft_values(rows: Sequence[Row]) -> list[float]:
    """TTFT of each run, +inf for runs that did not finish (stalled or failed)."""
    out = []
    for r in rows:
        v = r.get("ttft_s")
        finished = r.get("status") in (None, "", "ok") and isinstance(v, int | float) and math.isfinite(v)
        out.append(float(v) if finished else math.inf)  # type: ignore[arg-type]
    return out


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile that keeps +inf (a stalled run) meaningful."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def bandwidth_axis(rows: Sequence[Row]) -> tuple[str, str]:
    """(column, label): the bandwidth scale when it takes a few values, an evaluation's target ratio of
    stream-only to local-only TTFT, else the trace's mean rate."""
    if 1 < len(distinct(rows, "bandwidth_scale")) <= 12:
        return "bandwidth_scale", "bandwidth scale (x trace rate)"
    if 1 < len(distinct(rows, "scale_target")) <= 12 and "ratio" in distinct(rows, "scale_kind"):
        return "scale_target", "bandwidth set so that stream-only / local-only TTFT = x"
    return "trace_mean_mbps", "trace mean bandwidth (Mbit/s)"


def _lighten(colour: str, keep: float = 0.4) -> tuple[float, float, float]:
    """`colour` mixed with white (keep = share of the colour)."""
    r, g, b = matplotlib.colors.to_rgb(colour)
    return (1 - keep + keep * r, 1 - keep + keep * g, 1 - keep + keep * b)


def _plain(axis: Any) -> None:
    """Log-axis tick labels as plain numbers (10, 30, 100), not 3 x 10^1."""
    axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(matplotlib.ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))  # fmt: skip


def _finite(values: Sequence[float]) -> list[float]:
    """Non-finite values (runs that did not finish) become gaps in a line or band."""
    return [v if math.isfinite(v) else math.nan for v in values]


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_ttft_vs_bandwidth(rows: Sequence[Row], path: Path) -> Path:
    """Median TTFT (IQR band) against bandwidth, one line per policy, one panel per context length."""
    col, label = bandwidth_axis(rows)
    contexts = distinct(rows, "context_tokens")[:4] or [None]
    policies = distinct(rows, "policy")
    colours = policy_colours(policies)
    # a scale means little across traces whose rates differ: place each scale at its median Mbit/s
    mbps: dict[Any, float] = {}
    if col == "bandwidth_scale" and numbers(rows, "trace_mean_mbps"):
        mbps = {x: float(np.median(numbers(g, "trace_mean_mbps"))) for (x,), g in group_by(rows, col).items()}
        label = "mean bandwidth, Mbit/s (bandwidth scale)"
    # lines that coincide stay visible: each policy its own marker, the baselines dashed
    shapes = "osD^vP*X"
    markers = {p: shapes[i % len(shapes)] for i, p in enumerate(policies)}
    styles = {p: "-" if p in ("sparkv", "oracle") else "--" for p in policies}
    fig, axes = plt.subplots(1, len(contexts), figsize=(4.6 * len(contexts) + 1.2, 4.4), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, ctx in zip(axes[0], contexts, strict=False):
        panel = [r for r in rows if ctx is None or r.get("context_tokens") == ctx]
        for policy in policies:
            mine = [r for r in panel if r.get("policy") == policy]
            xs = distinct(mine, col)
            if col == "trace_mean_mbps" and len(xs) > 12:  # one point per trace: scatter, not a line
                ax.scatter(numbers(mine, col), [min(t, 1e9) for t in ttft_values(mine)], s=12, alpha=0.6,
                           color=colours[policy], label=policy)  # fmt: skip
                continue
            groups = group_by(mine, col)
            med = [quantile(ttft_values(groups[(x,)]), 0.5) for x in xs]
            lo = [quantile(ttft_values(groups[(x,)]), 0.25) for x in xs]
            hi = [quantile(ttft_values(groups[(x,)]), 0.75) for x in xs]
            at = [mbps.get(x, x) for x in xs]
            ax.plot(at, _finite(med), marker=markers[policy], ms=5, color=colours[policy], label=policy,
                    linestyle=styles[policy], alpha=0.9)  # fmt: skip
            ax.fill_between(at, _finite(lo), _finite(hi), color=colours[policy], alpha=0.12, linewidth=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _plain(ax.yaxis)
        _plain(ax.xaxis)
        if col != "trace_mean_mbps":
            ticks = distinct(panel, col)
            if mbps:  # Mbit/s on the axis, the scale under it
                ax.set_xticks([mbps[t] for t in ticks], [f"{mbps[t]:.3g}\n(x{t:g})" for t in ticks])
            else:
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.25)
        if ctx is not None:
            ax.set_title(f"context {int(ctx):,} tokens", fontsize=10)
    axes[0][0].set_ylabel("time to first token (s)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", title="policy")
    where = "; each scale at the median over traces of their mean Mbit/s" if mbps else ""
    fig.suptitle(f"TTFT vs bandwidth: median over traces, band = 25-75 % (gaps: most runs did not finish){where}",
                 fontsize=10)  # fmt: skip
    return _save(fig, path)


def plot_ttft_cdf(rows: Sequence[Row], path: Path) -> Path:
    """Empirical CDF of TTFT over every run of each policy, one panel per context length (pooled lengths
    make a staircase of the lengths, not a distribution); a curve short of 1 means runs that stalled."""
    policies = distinct(rows, "policy")
    colours = policy_colours(policies)
    contexts = distinct(rows, "context_tokens")[:4] or [None]
    fig, axes = plt.subplots(1, len(contexts), figsize=(4.8 * len(contexts) + 0.8, 4.4), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, ctx in zip(axes[0], contexts, strict=False):
        panel = [r for r in rows if ctx is None or r.get("context_tokens") == ctx]
        for policy in policies:
            values = sorted(ttft_values([r for r in panel if r.get("policy") == policy]))
            n = len(values)
            finite = [v for v in values if math.isfinite(v)]
            if not finite:
                continue
            ys = np.arange(1, len(finite) + 1) / n
            stalled = n - len(finite)
            label = f"{policy} (n={n}" + (f", {stalled} did not finish)" if stalled else ")")
            ax.step(finite, ys, where="post", color=colours[policy], label=label)
        ax.set_xscale("log")
        _plain(ax.xaxis)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("time to first token (s)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(loc="lower right", fontsize=7)
        if ctx is not None:
            ax.set_title(f"context {int(ctx):,} tokens", fontsize=10)
    axes[0][0].set_ylabel("fraction of runs")
    fig.suptitle("CDF of TTFT over all runs (traces x settings)", fontsize=11)
    return _save(fig, path)


def energy_components(rows: Sequence[Row]) -> list[str]:
    keys = {k for r in rows for k in r if k.startswith("energy_") and k.endswith("_j") and k != "energy_j"}
    names = sorted(k[len("energy_") : -len("_j")] for k in keys)
    return sorted(names, key=lambda n: (n not in ENERGY_COLOURS, list(ENERGY_COLOURS).index(n)
                                        if n in ENERGY_COLOURS else 0, n))  # fmt: skip


def _settings_all_finished(rows: Sequence[Row]) -> tuple[list[Row], int]:
    """The finished runs of the settings (all but policy) in which every policy finished, and how many
    settings were left out: averaging each policy over its own finished runs drops the slow policy's
    worst settings and biases its mean low."""
    policies = set(distinct(rows, "policy"))
    key_cols = [c for c in ("trace", "trace_name", "context_tokens", "bandwidth_scale", "chunk_tokens", "codec",
                            "model", "device", "rtt_s", "seed", "scale_target") if distinct(rows, c)]  # fmt: skip
    by_setting: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        by_setting.setdefault(tuple(r.get(c) for c in key_cols), []).append(r)
    done = {id(r) for r in ok_rows(rows)}
    kept: list[Row] = []
    dropped = 0
    for group in by_setting.values():
        finished = [r for r in group if id(r) in done]
        if {r.get("policy") for r in finished} == policies:
            kept += finished
        else:
            dropped += 1
    return kept, dropped


def plot_energy(rows: Sequence[Row], path: Path) -> Path:
    """Mean energy per run, stacked by component, one bar per policy (sorted by total), over the settings
    in which every policy finished (the same settings for every bar)."""
    done, dropped = _settings_all_finished(rows)
    if not done:
        done, dropped = ok_rows(rows), -1
    comps = energy_components(done)
    groups = group_by(done, "policy")
    policies = sorted((p for (p,) in groups), key=lambda p: np.mean(numbers(groups[(p,)], "energy_j") or [0]))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(policies) + 2.5), 4.2), layout="constrained")
    bottom = np.zeros(len(policies))
    for comp in comps or ["total"]:
        key = "energy_j" if comp == "total" else f"energy_{comp}_j"
        vals = np.array([np.mean(numbers(groups[(p,)], key) or [0.0]) for p in policies])
        ax.bar(policies, vals, bottom=bottom, label=comp, color=ENERGY_COLOURS.get(comp))
        bottom += vals
    for i, total in enumerate(bottom):
        ax.annotate(f"{total:,.0f} J", (i, total), ha="center", va="bottom", fontsize=8)
    if dropped == -1:
        basis = "mean over each policy's finished runs (no setting where all finished)"
    else:
        basis = "mean over the settings every policy finished" + (f" ({dropped} settings left out)" if dropped else "")
    ax.set_ylabel("energy per request (J)")
    ax.set_xlabel(f"policy; {basis}")
    ax.set_ylim(0, max(bottom.max(initial=0) * 1.12, 1.0))
    ax.legend(title="component", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("energy to first token by component", fontsize=11)
    return _save(fig, path)


TIE = 1.01  # medians within 1 % of the best are a tie, not a win (run-to-run noise is larger than 0.1 %)
Cell = tuple[str, float, float]  # best policy (ties joined by " = "), its median TTFT s, runner-up / best


def best_policy_grid(rows: Sequence[Row], x_col: str) -> tuple[list[Any], list[Any], list[list[Cell]]]:
    """(xs, contexts, cells): per cell the policy with lowest median TTFT, its median, and runner-up / best."""
    xs, ys = distinct(rows, x_col), distinct(rows, "context_tokens")
    cells = []
    for y in ys:
        line = []
        for x in xs:
            here = [r for r in rows if r.get(x_col) == x and r.get("context_tokens") == y]
            meds = sorted((quantile(ttft_values(g), 0.5), p) for (p,), g in group_by(here, "policy").items())
            if not meds:
                line.append(("", math.nan, math.nan))
                continue
            best = meds[0][0]
            tied = [p for m, p in meds if m <= best * TIE]
            rest = [m for m, _ in meds if m > best * TIE]
            ratio = rest[0] / best if rest and best > 0 else math.nan
            line.append((" = ".join(tied), best, ratio))
        cells.append(line)
    return xs, ys, cells


def plot_best_policy(rows: Sequence[Row], path: Path) -> Path:
    """Heatmap: which policy has the lowest median TTFT for each (bandwidth, context length)."""
    deployable = [r for r in rows if r.get("policy") != "oracle"]
    bound = len(deployable) < len(rows) and bool(deployable)
    rows = deployable or rows
    col, label = bandwidth_axis(rows)
    if col == "trace_mean_mbps":
        col, label = ("trace_name" if distinct(rows, "trace_name") else "trace"), "trace"
    xs, ys, cells = best_policy_grid(rows, col)
    policies = distinct(rows, "policy")
    colours = policy_colours(policies)
    index = {p: i for i, p in enumerate(policies)}
    grid = np.array([[index.get(c[0].split(" = ")[0], -1) for c in line] for line in cells], dtype=float)
    grid[grid < 0] = np.nan
    fig, ax = plt.subplots(figsize=(max(5.5, 1.0 * len(xs) + 3), max(3.0, 0.7 * len(ys) + 1.8)),
                           layout="constrained")
    light = [_lighten(colours[p]) for p in policies]  # pale cells keep black text readable
    ax.imshow(grid, cmap=ListedColormap(light), vmin=-0.5, vmax=len(policies) - 0.5, aspect="auto", origin="lower")
    for i, line in enumerate(cells):
        for j, (best, med, ratio) in enumerate(line):
            if best:
                gain = f"\n{ratio:.2f}x faster" if math.isfinite(ratio) else ""
                name = best.replace(" = ", " =\n") if len(best) > 12 else best
                ax.text(j, i, f"{name}\n{med:.3g} s{gain}", ha="center", va="center", fontsize=7.5)
    named = col in ("trace_name", "trace")
    xt = [Path(str(x)).name[:18] if named else f"{x:g}" for x in xs]
    ax.set_xticks(range(len(xs)), xt, rotation=30 if named else 0, ha="right" if named else "center")
    ax.set_yticks(range(len(ys)), [f"{int(y):,}" for y in ys])
    ax.set_xlabel(label)
    ax.set_ylabel("context length (tokens)")
    note = "\nthe oracle (a bound, not a policy) left out" if bound else ""
    ax.set_title(f"best policy by median TTFT\n(its median TTFT; how much faster than the runner-up){note}",
                 fontsize=9.5)
    return _save(fig, path)


def standard_figures(rows: Sequence[Row], out: Path, prefix: str = "") -> list[Path]:
    """Every standard figure the rows support, written to `out`; returns their paths."""
    rows = [r for r in rows if r.get("policy") not in (None, "")]
    if not rows or not numbers(rows, "ttft_s"):
        return []
    paths = [plot_ttft_vs_bandwidth(rows, out / f"{prefix}ttft_vs_bandwidth.png"),
             plot_ttft_cdf(rows, out / f"{prefix}ttft_cdf.png")]  # fmt: skip
    if numbers(rows, "energy_j"):
        paths.append(plot_energy(rows, out / f"{prefix}energy.png"))
    if distinct(rows, "context_tokens"):
        paths.append(plot_best_policy(rows, out / f"{prefix}best_policy.png"))
    return paths


def plot_predicted_vs_measured(rows: Sequence[Row], quantity: str, pred: str, meas: str, path: Path) -> Path:
    """Scatter of simulated (predicted) against measured values per policy, with the y = x line."""
    policies = distinct(rows, "policy") or [None]
    colours = policy_colours([p for p in policies if p is not None])
    fig, ax = plt.subplots(figsize=(5.6, 5.0), layout="constrained")
    everything: list[float] = []
    for policy in policies:
        mine = [r for r in rows if policy is None or r.get("policy") == policy]
        pairs = [(r[meas], r[pred]) for r in mine if numbers([r], meas) and numbers([r], pred)]
        if pairs:
            xs, ys = zip(*pairs, strict=True)
            ax.scatter(xs, ys, s=18, alpha=0.75, color=colours.get(policy, "#1f77b4") if policy else "#1f77b4",
                       label=policy or "runs")  # fmt: skip
            everything += [*xs, *ys]
    unit = {"s": "s", "j": "J", "mb": "MB", "w": "W"}.get(quantity.rsplit("_", 1)[-1], "") if "_" in quantity else ""
    if everything:
        lo, hi = min(everything), max(everything)
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8, linestyle="--", label="predicted = measured")
    ax.set_xlabel(f"measured {quantity} ({unit})" if unit else f"measured {quantity}")
    ax.set_ylabel(f"simulated {quantity} ({unit})" if unit else f"simulated {quantity}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"simulator vs real executor: {quantity}", fontsize=11)
    return _save(fig, path)
