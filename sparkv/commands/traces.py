"""`sparkv traces show FILE...`: load traces (files or synthetic specs) and print their statistics."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sparkv.core.errors import UserError
from sparkv.traces import FORMATS, Trace, detect_format, get_trace, is_spec, plot_traces, trace_stats
from sparkv.traces.stats import BPS_PER_MBIT

_HEADER = ("trace", "format", "duration s", "mean Mbit/s", "p10 Mbit/s", "p90 Mbit/s", "outage s")


def register(sub: argparse._SubParsersAction) -> None:
    """Add `traces` and its `show` sub-command to the CLI."""
    parser = sub.add_parser("traces", help="inspect bandwidth traces", description=__doc__)
    actions = parser.add_subparsers(dest="traces_command", required=True)
    show = actions.add_parser(
        "show",
        help="print duration, mean, p10/p90 and outage time of traces",
        description="Print one row per trace. A TRACE is a file (any supported format) or a synthetic "
        "spec such as lte:seed=1, const:20mbps, steps:10s@20mbps,5s@1mbps, ge:good=20mbps,bad=1mbps.",
    )
    show.add_argument("traces", nargs="+", metavar="TRACE", help="trace file or synthetic spec")
    show.add_argument("--format", default="auto", choices=("auto", *FORMATS), help="file format (default: auto)")
    show.add_argument("--plot", metavar="PNG", type=Path, help="also plot the traces to this PNG")
    show.add_argument("--window-s", type=float, help="mahimahi: bin width in seconds (default 0.1)")
    show.add_argument("--rate-col", help="columns/5gophers/gnettrack: rate column (name or 0-based index)")
    show.add_argument("--rate-unit", help="columns: rate unit (bps, kbps, Mbps, Gbps, B/s, KB/s, MB/s)")
    show.add_argument("--time-col", help="columns: time column (name or index); omit for fixed intervals")
    show.add_argument("--time-unit", help="columns: time unit (s, ms) or a strptime pattern")
    show.add_argument("--interval-s", type=float, help="columns: seconds per row without a time column")
    show.add_argument("--outage-mbit-s", type=float, default=0.1, help="rate below which the link counts as down (0.1)")
    show.set_defaults(func=run_show)


def _loader_options(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("window_s", "rate_col", "rate_unit", "time_col", "time_unit", "interval_s")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def _load(name: str, fmt: str, opts: dict[str, Any]) -> tuple[Trace, str]:
    """The trace and the format it was read as ('synthetic' for specs)."""
    if not Path(name).exists() and is_spec(name):
        return get_trace(name), "synthetic"
    trace = get_trace(name, fmt, **opts)
    return trace, detect_format(name) if fmt == "auto" else fmt


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned first two columns, right-aligned numbers."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def run_show(args: argparse.Namespace) -> int:
    """Print the statistics table (and optionally a plot); returns the exit code."""
    if not args.outage_mbit_s >= 0:
        raise UserError(f"--outage-mbit-s must be >= 0, got {args.outage_mbit_s}")
    opts = _loader_options(args)
    loaded = [_load(name, args.format, opts) for name in args.traces]
    rows: list[tuple[str, ...]] = [_HEADER]
    for (trace, fmt), name in zip(loaded, args.traces, strict=True):
        st = trace_stats(trace, args.outage_mbit_s * BPS_PER_MBIT)
        label = trace.name if fmt == "synthetic" else Path(name).name
        rows.append(
            (label, fmt, f"{st.duration_s:.1f}", f"{st.mean_mbit_s:.2f}", f"{st.p10_mbit_s:.2f}",
             f"{st.p90_mbit_s:.2f}", f"{st.outage_s:.1f}")
        )  # fmt: skip
    print(format_table(rows))
    if args.plot is not None:
        try:
            out = plot_traces([t for t, _ in loaded], args.plot)
        except OSError as exc:
            raise UserError(f"{args.plot}: cannot write plot ({exc.strerror})") from None
        print(f"plot: {out}")
    return 0
