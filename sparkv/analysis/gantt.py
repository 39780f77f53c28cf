"""Gantt chart of one or more Results: link and compute lanes (and the disk's, where a run read local KV),
colour by kind of work."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from sparkv.core.result import Result

COLOURS = {
    "fetch": "#1f77b4",
    "cancelled": "#d62728",
    "failed": "#ff7f0e",
    "compute": "#2ca02c",
    "query": "#9467bd",
    "first_token": "#000000",
}
READ_COLOUR = "#8c564b"  # reads from local disk (in the legend only where a run has some)


def _x_limit(ttfts: list[float]) -> float:
    """The time axis' end: every first token, unless one run is far longer than the rest (a stream-only
    run over a slow trace): then 2.5x the next longest, and the long run is cut and labelled."""
    ordered = sorted(ttfts)
    if len(ordered) >= 2 and ordered[-2] > 0 and ordered[-1] > 2.5 * ordered[-2]:
        return 2.5 * ordered[-2]
    return 1.02 * ordered[-1] if ordered and ordered[-1] > 0 else 1.0


def plot_gantt(results: list[Result], path: Path | str, title: str = "") -> Path:
    """One pair of lanes (link, compute) per result, stacked, and a third (disk) for a result that read local
    KV; time in seconds. Each result's first token is a black tick across its own lanes, labelled with its
    policy and TTFT."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lanes_of = [("link", "compute", "disk") if any(s.lane == "disk" for s in r.spans) else ("link", "compute")
                for r in results]  # fmt: skip
    fig, ax = plt.subplots(figsize=(11, 0.45 * sum(map(len, lanes_of)) + 1.5))
    labels: list[str] = []
    x_end = _x_limit([r.ttft_s for r in results])
    first = 0  # the result's first lane
    colours = {**COLOURS, "read": READ_COLOUR}
    for result, lanes in zip(results, lanes_of, strict=True):
        for j, lane in enumerate(lanes):
            y = first + j
            labels.append(f"{result.world}:{result.policy} {lane}")
            for span in result.spans:
                if span.lane != lane:
                    continue
                ax.barh(
                    y, span.end_s - span.start_s, left=span.start_s, height=0.8,
                    color=colours.get(span.kind, "grey"), edgecolor="white", linewidth=0.2,
                )
        top, bottom = first - 0.45, first + len(lanes) - 0.55
        first += len(lanes)
        text = f"{result.policy} first token {result.ttft_s:.2f} s"
        if result.ttft_s <= x_end:
            ax.plot([result.ttft_s] * 2, [top, bottom], color=COLOURS["first_token"], linewidth=1.2)
            ax.annotate(text, (result.ttft_s, top), xytext=(3, 0), textcoords="offset points", fontsize=7,
                        va="top")  # fmt: skip
        else:  # cut at the axis' end: say where it goes
            ax.annotate(f"{text} \u2192", (x_end, top), xytext=(-3, 0), textcoords="offset points", fontsize=7,
                        va="top", ha="right")  # fmt: skip
    ax.set_xlim(0.0, x_end)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time since request start (s)")
    shown = colours if any(len(lanes) > 2 for lanes in lanes_of) else COLOURS
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in shown.values()]
    ax.legend(handles, list(shown), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    ax.set_title(title or "timeline by lane (black tick: each run's first token)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
