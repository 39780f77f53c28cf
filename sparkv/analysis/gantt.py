"""Gantt chart of one or more Results: link and compute lanes, colour by kind of work."""

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


def plot_gantt(results: list[Result], path: Path | str, title: str = "") -> Path:
    """One pair of lanes (link, compute) per result, stacked; time in seconds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(11, 0.9 * len(results) + 1.5))
    labels: list[str] = []
    for i, result in enumerate(results):
        for j, lane in enumerate(("link", "compute")):
            y = 2 * i + j
            labels.append(f"{result.world}:{result.policy} {lane}")
            for span in result.spans:
                if span.lane != lane:
                    continue
                ax.barh(
                    y, span.end_s - span.start_s, left=span.start_s, height=0.8,
                    color=COLOURS.get(span.kind, "grey"), edgecolor="white", linewidth=0.2,
                )
        ax.axvline(result.ttft_s, ymin=0, ymax=1, color="grey", linewidth=0.5, linestyle=":")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time since request start (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    ax.legend(handles, list(COLOURS), loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    ax.set_title(title or "timeline by lane (dotted: first token)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
