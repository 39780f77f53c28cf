"""`sparkv report`: a self-contained HTML (or Markdown) report of a sweep, evaluation or validation;
with `--perfetto OUT.json`, a Chrome/Perfetto trace of Result JSON files instead."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparkv.analysis.perfetto import write_chrome_trace
from sparkv.analysis.report import write_report
from sparkv.analysis.tables import load_results
from sparkv.core.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="HTML/Markdown report of results; or --perfetto: a trace of Result JSONs")
    p.add_argument("results", type=Path, nargs="+", help="results CSV or folder (report); Result JSONs or "
                   "folders of them (--perfetto)")  # fmt: skip
    p.add_argument("--format", choices=("html", "md"), default="html", help="html (one file, default) or md + PNGs")
    p.add_argument("--out", type=Path, help="report file (default: RESULTS folder/report.html or report.md)")
    p.add_argument("--perfetto", type=Path, metavar="OUT.json", help="write a Chrome/Perfetto trace of the Result "
                   "JSONs (open at ui.perfetto.dev) instead of a report")  # fmt: skip
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.perfetto:
        results = load_results(args.results)
        path = write_chrome_trace(results, args.perfetto)
        spans = sum(len(r.spans) for r in results)
        print(f"wrote {path}: {len(results)} results, {spans} spans (open it at ui.perfetto.dev)")
        return 0
    if len(args.results) != 1:
        raise UserError("a report takes one RESULTS path (a CSV, or a folder of results)")
    src = args.results[0]
    folder = src if src.is_dir() else src.parent
    out = args.out or folder / f"report.{args.format}"
    path = write_report(src, out, args.format)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
    return 0
