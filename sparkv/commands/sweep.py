"""`sparkv sweep`: what-if studies in the simulator over traces, link, context, model, device, codec and policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sparkv.analysis.backends import BACKENDS, default_jobs
from sparkv.analysis.sweep import SweepInterrupted, SweepSpec, expand, load_spec
from sparkv.analysis.tables import SUMMARY_COLUMNS, summarise
from sparkv.commands.common import format_table, read_scenario_file
from sparkv.commands.values import nonneg_float, nonneg_int, pos_int
from sparkv.core.errors import UserError


def _checked(convert: Any) -> Any:
    """An argparse value type as an axis converter: its refusal becomes the ValueError the caller reports."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(str(exc)) from None

    return parse


# flag -> (axis, converter); every flag takes comma lists and may be repeated.
AXIS_FLAGS: dict[str, tuple[str, Any]] = {
    "bandwidth_scale": ("bandwidth_scale", _checked(nonneg_float)),
    "rtt_ms": ("rtt_ms", _checked(nonneg_float)),
    "chunk_tokens": ("chunk_tokens", _checked(pos_int)),
    "context_tokens": ("context_tokens", _checked(pos_int)),
    "query_tokens": ("query_tokens", _checked(pos_int)),
    "model": ("model", str),
    "device": ("device", str),
    "codec": ("codec", str),
    "policy": ("policy", str),
    "radio": ("radio", str),
    "seed": ("seed", _checked(nonneg_int)),
    "trace_offset_s": ("trace_offset_s", _checked(nonneg_float)),
}
HELP = {
    "bandwidth_scale": "multiply the trace's bandwidth, e.g. 0.5,1,2",
    "rtt_ms": "round trip per transfer, ms",
    "trace_offset_s": "start time in the trace, s",
    "chunk_tokens": "tokens per chunk",
    "context_tokens": "context length, tokens",
    "query_tokens": "query length, tokens",
    "model": "built-in model spec or Hugging Face model directory",
    "device": "device profile name or JSON path",
    "radio": "radio power model (lte, wifi, 5g, 3g)",
    "seed": "random seed",
    "codec": "KV codec on the wire (a per-layer codec such as int8:0-3,int4 is taken whole)",
    "policy": "registered policy name or a tuned policy config JSON (default: every registered policy)",
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="what-if sweep in the simulator (grid or list), in parallel, to one table")
    p.add_argument("--spec", type=Path, help="sweep file (JSON or TOML: mode, base, axes); flags replace its axes")
    p.add_argument("--config", type=Path, help="base scenario, TOML or JSON (a result's config works too)")
    p.add_argument("--trace", action="append", help="trace file, folder, glob or synthetic spec; repeatable "
                   "(not comma-split: specs contain commas)")  # fmt: skip
    for name in AXIS_FLAGS:
        flag = "--" + name.removesuffix("_s").replace("_", "-")
        p.add_argument(flag, dest=name, action="append", help=HELP.get(name, name.replace("_", " ")) + "; comma list")
    p.add_argument("--mode", choices=("grid", "list"), help="grid: cartesian product (default); list: zip the axes")
    p.add_argument("--backend", choices=BACKENDS, help="local processes (default) or ray (--ray-address implies it)")
    p.add_argument("--jobs", "-j", type=pos_int, default=default_jobs(), help="parallel workers (default: CPU count)")
    p.add_argument("--ray-address", help="join this Ray cluster with --backend ray (default: start a local one)")
    p.add_argument("--out", type=Path, default=Path("sweep-out"), help="output folder (default sweep-out)")
    p.add_argument("--keep-results", action="store_true", help="also save every Result JSON under OUT/results/")
    p.add_argument("--dry-run", action="store_true", help="print the number of runs and the axes, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _split(values: list[str], axis: str) -> list[str]:
    out: list[str] = []
    for value in values:
        if axis == "codec" and ":" in value:
            out.append(value.strip())
        else:
            out.extend(v.strip() for v in value.split(",") if v.strip())
    return out


def spec_from_args(args: argparse.Namespace) -> SweepSpec:
    spec = load_spec(args.spec) if args.spec else SweepSpec({})
    axes = dict(spec.axes)
    base = dict(spec.base)
    if args.config:
        base = {**read_scenario_file(args.config), **base}
    if args.trace:
        axes["trace"] = list(args.trace)
    for name, (axis, convert) in AXIS_FLAGS.items():
        values = getattr(args, name)
        if values:
            try:
                axes[axis] = [convert(v) for v in _split(values, axis)]
            except ValueError as exc:
                raise UserError(f"--{name.replace('_', '-')}: {exc}") from exc
    return SweepSpec(axes, args.mode or spec.mode, base)


def backend_from_args(args: argparse.Namespace) -> str:
    """--backend, with --ray-address implying ray (and refused beside an explicit --backend local)."""
    if args.ray_address is not None:
        if args.backend not in (None, "ray"):
            raise UserError(f"--ray-address joins a Ray cluster: it needs --backend ray, not --backend {args.backend}")
        return "ray"
    return str(args.backend or "local")


INCOMPLETE = "INCOMPLETE"  # a file in --out while a sweep runs, kept (saying why) if it did not finish


def mark_running(out: Path, runs: int) -> None:
    """Mark --out as a sweep in progress; an earlier sweep's results there are moved aside, not left to look
    like this one's."""
    out.mkdir(parents=True, exist_ok=True)
    old = [p for p in (out / "results.csv", out / "results.parquet", out / "sweep.json") if p.exists()]
    if old:
        aside = out / "previous"
        aside.mkdir(exist_ok=True)
        for p in old:
            p.replace(aside / p.name)
        print(f"sweep: {out} held an earlier sweep's results: moved to {aside}/")
    (out / INCOMPLETE).write_text(f"running: {runs} runs planned; results.csv is written at the end\n")


def save_partial(stop: SweepInterrupted, spec: SweepSpec, out: Path) -> int:
    """After Ctrl-C: the finished rows as results.csv, marked partial (INCOMPLETE, sweep.json); one line."""
    from sparkv.analysis.sweep import provenance
    from sparkv.analysis.tables import write_csv

    csv_path = write_csv(stop.rows, out / "results.csv")
    meta = {"kind": "sweep", "spec": spec.to_dict(), "runs": len(stop.rows), "planned_runs": stop.total,
            "complete": False, "argv": sys.argv[1:], **provenance()}
    (out / "sweep.json").write_text(json.dumps(meta, indent=1, default=str))
    (out / INCOMPLETE).write_text(f"interrupted (Ctrl-C) after {len(stop.rows)} of {stop.total} runs: "
                                  "results.csv holds only those\n")
    print(f"sparkv sweep: interrupted: {len(stop.rows)} of {stop.total} runs saved to {csv_path} (marked partial)",
          file=sys.stderr)
    return 130


def run(args: argparse.Namespace) -> int:
    from sparkv import api

    spec = spec_from_args(args)
    backend = backend_from_args(args)
    points = expand(spec)
    sizes = ", ".join(f"{k} x{n}" for k, n in axis_sizes(spec, points).items())
    print(f"sweep: {len(points)} runs ({spec.mode}: {sizes or 'defaults'})"
          + (f", backend ray at {args.ray_address}" if args.ray_address else ""))  # fmt: skip
    if args.dry_run:
        return 0
    mark_running(args.out, len(points))
    try:
        outcome = api.sweep(spec=spec, jobs=args.jobs, backend=backend, ray_address=args.ray_address,
                            keep_results=args.out / "results" if args.keep_results else None,
                            progress=not args.no_progress and sys.stderr.isatty())  # fmt: skip
    except SweepInterrupted as stop:
        return save_partial(stop, spec, args.out)
    written = api.save_sweep(outcome, args.out, sys.argv[1:])
    (args.out / INCOMPLETE).unlink(missing_ok=True)
    counts = outcome.counts()
    print(format_table(summarise(outcome.rows), SUMMARY_COLUMNS))
    wall_s = outcome.wall_s
    print(f"{len(outcome.rows)} runs in {wall_s:.1f} s ({len(outcome.rows) / wall_s:.0f} runs/s, {outcome.backend} "
          f"x{outcome.workers}); ok {counts['ok']}, stalled {counts['stalled']}, error {counts['error']}")  # fmt: skip
    for note in outcome.notes:
        print(f"note: {note}")
    errors = sorted({r["error"] for r in outcome.rows if r["status"] == "error"})
    for line in errors[:5]:
        print(f"error: {line}")
    print("wrote " + ", ".join(str(p) for p in written.values()))
    return 1 if errors else 0


def axis_sizes(spec: SweepSpec, points: list[dict[str, Any]]) -> dict[str, int]:
    """Distinct values per axis as run (a trace folder or glob counts as the files it expands to)."""
    sizes = {k: len(v) for k, v in spec.axes.items()}
    if "trace" in sizes:
        sizes["trace"] = len({p["scenario"]["trace"] for p in points})
    return sizes
