"""`sparkv sweep`: what-if studies in the simulator over traces, link, context, model, device, codec and policy."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sparkv.analysis.backends import BACKENDS, choose_backend, default_jobs
from sparkv.analysis.sweep import SweepInterrupted, SweepSpec, expand, load_spec
from sparkv.analysis.tables import SUMMARY_COLUMNS, summarise
from sparkv.commands.common import add_objective_arg, format_table, read_scenario_file
from sparkv.commands.values import nonneg_float, nonneg_int, pos_int
from sparkv.core.errors import UserError
from sparkv.policies import POLICIES


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
    add_objective_arg(p, repeatable=True, extra=" (each sparkv entry of the policy axis once per objective)")
    p.add_argument("--mode", choices=("grid", "list"), help="grid: cartesian product (default); list: zip the axes")
    p.add_argument("--backend", choices=BACKENDS, help="local processes (default) or ray (--ray-address implies it)")
    p.add_argument("--jobs", "-j", type=pos_int, default=default_jobs(), help="parallel workers (default: CPU count)")
    p.add_argument("--ray-address", "--address", dest="ray_address", help="join the Ray cluster at this address "
                   "(host:port, or auto); implies --backend ray and is refused beside --backend local; "
                   "--backend ray without it starts a local Ray")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("sweep-out"), help="output folder (default sweep-out): "
                   "results.csv, sweep.json, and OUT/runs/KEY/ per run")  # fmt: skip
    p.add_argument("--keep-results", action="store_true", help="also save every run's Result JSON in its folder "
                   "OUT/runs/KEY/ (result.json, or stalled.json)")  # fmt: skip
    p.add_argument("--fresh", action="store_true", help="compute every run again. By default a sweep resumes: each "
                   "run's row is stored in OUT/runs/KEY/ as it finishes (KEY hashes the run's full configuration "
                   "and input files), and a run already stored there by the same sparkv code is reused, not "
                   "recomputed, so an interrupted sweep run again with the same --out finishes only the rest")
    p.add_argument("--dry-run", action="store_true", help="print the number of runs (traces as expanded), the "
                   "axes and how many are already done in --out; run nothing")  # fmt: skip
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
    if getattr(args, "objective", None):
        axes["policy"] = with_objectives(list(axes.get("policy") or POLICIES), args.objective)
    return SweepSpec(axes, args.mode or spec.mode, base)


def with_objectives(policies: list[str], objectives: list[str]) -> list[str]:
    """The policy axis with each sparkv entry (a name or a sparkv config file) once per objective."""
    from sparkv.analysis.sweep import policy_factory
    from sparkv.policies.objective import objective_name

    out: list[str] = []
    for name in policies:
        if policy_factory(str(name))[0] == "sparkv":
            out.extend(objective_name(str(name), o) for o in objectives)
        else:
            out.append(str(name))
    return list(dict.fromkeys(out))


def backend_from_args(args: argparse.Namespace) -> str:
    """--backend, with --ray-address implying ray (and refused beside an explicit --backend local)."""
    return choose_backend(args.backend, args.ray_address)


INCOMPLETE = "INCOMPLETE"  # a file in --out while a sweep runs, kept (saying why) if it did not finish
RUNS = "runs"  # OUT/runs/KEY/: one folder per run (row.json; result.json or stalled.json with --keep-results)


def mark_running(out: Path, spec: SweepSpec, runs: int) -> None:
    """Mark --out as a sweep in progress. An earlier sweep's tables there are moved aside, not left to look like
    this one's, unless they are this same sweep's (a resume); OUT/runs is kept either way (its rows are
    reused by job key, whichever grid computed them)."""
    out.mkdir(parents=True, exist_ok=True)
    old = [p for p in (out / "results.csv", out / "results.parquet", out / "sweep.json") if p.exists()]
    if old and _earlier_spec(out) != spec.to_dict():
        aside = out / "previous"
        aside.mkdir(exist_ok=True)
        for p in old:
            p.replace(aside / p.name)
        print(f"sweep: {out} held an earlier sweep's results: moved to {aside}/")
    (out / INCOMPLETE).write_text(f"running: {runs} runs planned; results.csv is written at the end\n")


def _earlier_spec(out: Path) -> Any:
    try:
        return json.loads((out / "sweep.json").read_text()).get("spec")
    except (OSError, ValueError, AttributeError):
        return None


def save_partial(stop: SweepInterrupted, spec: SweepSpec, out: Path, reused: int) -> int:
    """After Ctrl-C: the finished rows as results.csv, marked partial (INCOMPLETE, sweep.json); one line."""
    from sparkv.analysis.sweep import provenance
    from sparkv.analysis.tables import write_csv

    csv_path = write_csv(stop.rows, out / "results.csv")
    meta = {"kind": "sweep", "spec": spec.to_dict(), "runs": len(stop.rows), "planned_runs": stop.total,
            "reused": reused, "complete": False, "argv": sys.argv[1:], **provenance()}  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(meta, indent=1, default=str))
    (out / INCOMPLETE).write_text(f"interrupted (Ctrl-C) after {len(stop.rows)} of {stop.total} runs: "
                                  "results.csv holds only those; the same command resumes from the rest\n")
    print(f"sparkv sweep: interrupted: {len(stop.rows)} of {stop.total} runs saved to {csv_path} (marked partial; "
          "run the same command again to resume)", file=sys.stderr)  # fmt: skip
    return 130


def run(args: argparse.Namespace) -> int:
    from sparkv import api
    from sparkv.analysis.sweep_store import RunStore

    spec = spec_from_args(args)
    backend = backend_from_args(args)
    points = expand(spec)
    sizes = ", ".join(f"{k} x{n}" for k, n in axis_sizes(spec, points).items())
    runs_dir = args.out / RUNS
    done = 0 if args.fresh else RunStore(runs_dir, keep_results=args.keep_results).count(p["key"] for p in points)
    where = f", backend ray at {args.ray_address}" if args.ray_address else ", backend ray" if backend == "ray" else ""
    print(f"sweep: {len(points)} runs ({spec.mode}: {sizes or 'defaults'}){where}"
          + (f"; {done} already done in {runs_dir} (reused; --fresh recomputes them)" if done else ""))  # fmt: skip
    if args.dry_run:
        return 0
    mark_running(args.out, spec, len(points))
    try:
        outcome = api.sweep(spec=spec, jobs=args.jobs, backend=backend, ray_address=args.ray_address,
                            runs=runs_dir, resume=not args.fresh, keep_results=args.keep_results,
                            progress=not args.no_progress and sys.stderr.isatty())  # fmt: skip
    except SweepInterrupted as stop:
        return save_partial(stop, spec, args.out, done)
    written = api.save_sweep(outcome, args.out, sys.argv[1:])
    (args.out / INCOMPLETE).unlink(missing_ok=True)
    counts = outcome.counts()
    print(format_table(summarise(outcome.rows), SUMMARY_COLUMNS))
    wall_s = outcome.wall_s
    rate = f"{outcome.computed / wall_s:.0f} runs/s" if wall_s > 0 else "- runs/s"
    print(f"{len(outcome.rows)} runs: {outcome.computed} computed in {wall_s:.1f} s ({rate}, {outcome.backend} "
          f"x{outcome.workers}), {outcome.reused} reused from {runs_dir}; ok {counts['ok']}, "
          f"stalled {counts['stalled']}, error {counts['error']}")  # fmt: skip
    for note in outcome.notes:
        print(f"note: {note}")
    errors = sorted({r["error"] for r in outcome.rows if r["status"] == "error"})
    for line in errors[:5]:
        print(f"error: {line}")
    print("wrote " + ", ".join(str(p) for p in written.values()) + f", {runs_dir}/")
    return 1 if errors else 0


def axis_sizes(spec: SweepSpec, points: list[dict[str, Any]]) -> dict[str, int]:
    """Distinct values per axis as run (a trace folder or glob counts as the files it expands to)."""
    sizes = {k: len(v) for k, v in spec.axes.items()}
    if "trace" in sizes:
        sizes["trace"] = len({p["scenario"]["trace"] for p in points})
    return sizes
