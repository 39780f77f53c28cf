"""`sparkv traces show TRACE...`: load traces (files with options, folders, globs, specs); print statistics."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparkv.commands.values import nonneg_float, pos_float
from sparkv.core.errors import UserError
from sparkv.traces import FORMATS, Trace, get_trace, is_spec, trace_stats
from sparkv.traces.expand import expand_traces
from sparkv.traces.loaders import accepted_options
from sparkv.traces.options import join_trace_arg, split_trace_arg
from sparkv.traces.plot import plot_trace_panels
from sparkv.traces.stats import BPS_PER_MBIT

_HEADER = ("trace", "format", "column", "duration s", "mean Mbit/s", "p10 Mbit/s", "p90 Mbit/s", "outage s",
           "gaps", "loop")  # fmt: skip
_FLAG_KEYS = ("format", "window_s", "rate_col", "carrier", "rate_unit", "time_col", "time_unit", "interval_s",
              "delimiter", "gaps", "loop")  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    """Add `traces` and its `show` sub-command to the CLI."""
    parser = sub.add_parser("traces", help="inspect bandwidth traces", description=__doc__)
    actions = parser.add_subparsers(dest="traces_command", required=True)
    show = actions.add_parser(
        "show",
        help="print duration, mean, p10/p90, outage time and gaps of traces",
        description="Print one row per trace that loads and one error line per trace that does not. A TRACE "
        "is a file with optional loader options (PATH?carrier=tmobile&gaps=outage; grammar in "
        "sparkv/traces/options.py), a folder, a glob, or a synthetic spec such as lte:seed=1, const:20mbps, "
        "steps:10s@20mbps,5s@1mbps. The flags below apply to every file; a file's own options win.",
    )
    show.add_argument("traces", nargs="+", metavar="TRACE", help="trace file[?options], folder, glob or spec")
    show.add_argument("--format", choices=("auto", *FORMATS), help="file format (default: auto)")
    show.add_argument("--plot", metavar="PNG", type=Path, help="also plot the traces to this PNG, one panel each")
    show.add_argument("--window-s", type=pos_float, help="mahimahi: bin width in seconds (default 0.1)")
    show.add_argument("--rate-col", help="columns/5gophers/gnettrack: rate column (name or 0-based index)")
    show.add_argument("--carrier", help="5gophers: the carrier column (sprint, tmobile, verizon)")
    show.add_argument("--rate-unit", help="columns: rate unit (bps, kbps, Mbps, Gbps, B/s, KB/s, MB/s)")
    show.add_argument("--time-col", help="columns: time column (name or index); omit for fixed intervals")
    show.add_argument("--time-unit", help="columns: time unit (s, ms) or a strptime pattern")
    show.add_argument("--interval-s", type=pos_float, help="columns: seconds per row without a time column")
    show.add_argument("--delimiter", help="columns: field separator (',', ';', tab)")
    show.add_argument("--gaps", choices=("fill", "outage", "error"), help="missing time: hold the rate before "
                      "(fill, default), 0 B/s (outage), or refuse the file (error)")  # fmt: skip
    show.add_argument("--loop", choices=("repeat", "error"), help="a request outliving the trace: replay it "
                      "(repeat, default) or count the run as an error")  # fmt: skip
    show.add_argument("--outage-mbit-s", type=nonneg_float, default=0.1,
                      help="rate below which the link counts as down (0.1)")
    show.set_defaults(func=run_show)


def _flag_options(args: argparse.Namespace) -> dict[str, str]:
    return {k: f"{getattr(args, k):g}" if isinstance(getattr(args, k), float) else str(getattr(args, k))
            for k in _FLAG_KEYS if getattr(args, k, None) is not None}  # fmt: skip


def with_defaults(arg: str, defaults: dict[str, str]) -> str:
    """A trace argument with the command's flag options under its own (a file's own options win). A flag
    applies to the files it means something for (`--carrier` to multi-carrier 5Gophers files, not to a
    mahimahi file beside them); a file's own options always apply."""
    if not defaults or is_spec(arg) or (Path(arg).exists() and "?" in arg):
        return arg
    path, own = split_trace_arg(arg)
    fmt = own.get("format") or defaults.get("format") or "auto"
    try:
        accepted = accepted_options(path, fmt)
    except UserError:
        accepted = set(defaults)  # loading will say what is wrong with the file
    column_given = bool({"rate_col", "carrier"} & set(own))  # the file's own column choice replaces the flag's
    kept = {k: v for k, v in defaults.items()
            if k in accepted and not (column_given and k in ("rate_col", "carrier"))}  # fmt: skip
    return join_trace_arg(path, {**kept, **own})


def format_table(rows: list[tuple[str, ...]]) -> str:
    """Left-aligned first three columns, right-aligned numbers, left-aligned notes."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(w) if i < 3 or i >= 8 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _row(arg: str, trace: Trace, outage_bps: float) -> tuple[str, ...]:
    st = trace_stats(trace, outage_bps)
    synthetic = is_spec(arg) and not Path(split_trace_arg(arg)[0]).exists()
    info = trace.info
    return (trace.name, "synthetic" if synthetic else info.get("format", "?"), info.get("column", "-"),
            f"{st.duration_s:.1f}", f"{st.mean_mbit_s:.2f}", f"{st.p10_mbit_s:.2f}", f"{st.p90_mbit_s:.2f}",
            f"{st.outage_s:.1f}", info.get("gaps", "-"), info.get("loop", "repeat"))  # fmt: skip


def run_show(args: argparse.Namespace) -> int:
    """Print the statistics table (and optionally a plot); 0 if every trace loaded, 1 if some did not, 2 if none."""
    if not args.outage_mbit_s >= 0:
        raise UserError(f"--outage-mbit-s must be >= 0, got {args.outage_mbit_s}")
    defaults = _flag_options(args)
    loaded: list[Trace] = []
    rows: list[tuple[str, ...]] = [_HEADER]
    errors: list[str] = []
    for given in args.traces:
        try:
            expanded = expand_traces([given])
        except UserError as exc:
            errors.append(str(exc))
            continue
        for arg in expanded:
            try:
                trace = get_trace(with_defaults(arg, defaults))
            except UserError as exc:
                errors.append(str(exc))
                continue
            loaded.append(trace)
            rows.append(_row(arg, trace, args.outage_mbit_s * BPS_PER_MBIT))
    if loaded:
        print(format_table(rows))
    for line in errors:
        print(f"sparkv traces show: error: {line}", file=sys.stderr)
    if args.plot is not None and loaded:
        try:
            out = plot_trace_panels(loaded, args.plot)
        except OSError as exc:
            raise UserError(f"{args.plot}: cannot write plot ({exc.strerror})") from None
        print(f"plot: {out}")
    if not loaded:
        return 2
    return 1 if errors else 0
