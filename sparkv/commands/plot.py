"""`sparkv plot`: the standard figures (PNG) of a sweep or evaluation table, or a folder of Result JSONs."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparkv.analysis.plots import standard_figures
from sparkv.analysis.tables import load_rows
from sparkv.core.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="draw TTFT-vs-bandwidth, TTFT CDF, energy and best-policy figures (PNG)")
    p.add_argument("results", type=Path, help="results CSV (sweep/evaluate), a folder holding one, or Result JSONs")
    p.add_argument("--out", type=Path, help="folder for the PNGs (default: RESULTS folder/figures)")
    p.add_argument("--policy", action="append", help="only these policies (comma list, repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows = load_rows(args.results)
    if args.policy:
        wanted = {p.strip() for value in args.policy for p in value.split(",") if p.strip()}
        rows = [r for r in rows if r.get("policy") in wanted]
    out = args.out or (args.results if args.results.is_dir() else args.results.parent) / "figures"
    paths = standard_figures(rows, out)
    if not paths:
        raise UserError(f"{args.results}: no rows with a policy and a TTFT to plot")
    for path in paths:
        print(f"wrote {path}")
    return 0
