"""`sparkv validate`: the same requests in the real executor and the simulator; prediction error."""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

from sparkv.commands.common import (
    add_local_args,
    add_policy_config_arg,
    add_scenario_args,
    deprecated_alias,
    format_table,
    policy_maker,
    scenario_from_args,
)
from sparkv.commands.run import RUN_DEFAULTS, auto_scale, load_document
from sparkv.commands.values import nonneg_float, pos_int
from sparkv.core.errors import UserError
from sparkv.core.paths import shared_path
from sparkv.policies import POLICIES
from sparkv.traces.expand import expand_traces

DEFAULT_TRACES = (
    "mahimahi_lte_us/Verizon-LTE-short.down",
    "mahimahi_lte_us/ATT-LTE-driving-2016.down",
    "norway_hsdpa_3g/norway_bus_1",
    "norway_hsdpa_3g/norway_car_2",
    "norway_hsdpa_3g/norway_ferry_2",
    "norway_hsdpa_3g/norway_train_1",
    "norway_hsdpa_3g/norway_tram_10",
    "nyu_mets_lte/7Train1.csv",
    "nyu_mets_lte/bus57.csv",
    "ucc_5g_ireland/driving_B_2019.12.16_14.23.32.csv",
)
STAT_COLUMNS = [("group", "policy", ""), ("runs", "runs", "d"), ("median_abs_err_pct", "median |err| %", ".1f"),
                ("p90_abs_err_pct", "p90 |err| %", ".1f"), ("bias_pct", "bias %", "+.1f"),
                ("replay_mismatches", "replay mismatches", "d")]  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="real executor vs simulator on the same requests")
    add_scenario_args(p, RUN_DEFAULTS, trace=False)
    add_policy_config_arg(p)
    add_local_args(p)
    p.add_argument("--trace", action="append", dest="traces",
                   help="trace file[?options], folder, glob or spec; repeatable (default: 10 real traces from "
                        "../shared/traces)")  # fmt: skip
    p.add_argument("--traces", action=deprecated_alias("--trace", argparse._AppendAction), dest="traces",
                   help=argparse.SUPPRESS)
    p.add_argument("--policy", action="append", help="policies (default: local, stream, cake, sparkv)")
    p.add_argument("--link", choices=["auto", "netns", "pacing"], default="pacing", help="real link (default pacing)")
    p.add_argument("--document", default="builtin", help="'builtin' or FILE.jsonl[:INDEX] (LEval format)")
    p.add_argument("--repeats", type=pos_int, default=1,
                   help="real runs per (trace, policy); the one with the median TTFT is compared (default 1)")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="predict at the profile's compute speed only (default: also probe the device's speed "
                        "before and after each real run and predict at that speed)")
    p.add_argument("--speed-tolerance", type=nonneg_float, default=0.08,
                   help="probes before and after a run further apart than this (relative) mean the machine "
                        "changed speed during it: the run is measured again (default 0.08)")
    p.add_argument("--max-foreign-cpu", type=float, default=0.25, metavar="CORES",
                   help="a run during which other processes used more than this many cores of CPU was "
                        "disturbed: it is measured again like a run whose speed changed (default 0.25)")
    p.add_argument("--background-load", type=int, default=0, metavar="CORES",
                   help="run this many CPU-bound processes through every real run (a loaded device; the speed "
                        "probes measure it and the simulator predicts at the probed speed; default 0)")
    p.add_argument("--attempts", type=pos_int, default=3,
                   help="real runs at most per (trace, policy, repeat) while the speed keeps changing (default 3)")
    p.add_argument("--out", type=Path, default=Path("results/validation"), help="output folder")
    p.set_defaults(func=run)


def default_traces() -> list[str]:
    found = [shared_path("traces", *t.split("/")) for t in DEFAULT_TRACES]
    traces = [str(p) for p in found if p is not None]
    if not traces:
        raise UserError("no traces given and ../shared/traces not found; pass --trace FILE or a spec")
    return traces


def run(args: argparse.Namespace) -> int:
    from sparkv.analysis.validate import run_validation, write_validation

    if args.repeats < 1:
        raise UserError(f"--repeats must be >= 1, got {args.repeats}")
    if args.attempts < 1:
        raise UserError(f"--attempts must be >= 1, got {args.attempts}")
    if not 0 <= args.background_load <= 64:
        raise UserError(f"--background-load must be 0-64 cores, got {args.background_load}")
    if args.background_load and not args.probe:
        raise UserError("--background-load needs the speed probes (drop --no-probe): they measure the load")
    if not args.max_foreign_cpu > 0:
        raise UserError(f"--max-foreign-cpu must be > 0 cores, got {args.max_foreign_cpu}")
    if not args.speed_tolerance > 0:
        raise UserError(f"--speed-tolerance must be > 0, got {args.speed_tolerance}")
    scenario = scenario_from_args(args, RUN_DEFAULTS)
    traces = expand_traces(args.traces) if args.traces else default_traces()
    policies = args.policy or [p for p in ("local", "stream", "cake", "sparkv") if p in POLICIES]
    make = policy_maker(args)
    for name in policies:
        make(name)
    if "oracle" in policies:
        raise UserError("oracle needs the future trace; it runs in the simulator only")
    document = load_document(args.document, scenario.context_tokens)
    print(f"validate: {len(traces)} traces x {len(policies)} policies, link {args.link}, device {scenario.device}, "
          f"{scenario.context_tokens} context tokens, chunks of {scenario.chunk_tokens}")  # fmt: skip
    scale = None if args.bandwidth_scale is not None else auto_scale
    pairs = run_validation(traces, policies, scenario, document, args.link, scale, make=make, repeats=args.repeats,
                           probe=args.probe, speed_tolerance=args.speed_tolerance, attempts=args.attempts,
                           max_foreign_cores=args.max_foreign_cpu, background_cores=args.background_load)
    config = {"scenario": scenario.to_dict(), "traces": traces, "policies": policies, "link": args.link,
              "document": args.document, "bandwidth_scale": "auto" if scale else args.bandwidth_scale,
              "repeats": args.repeats, "probe": args.probe, "speed_tolerance": args.speed_tolerance,
              "attempts": args.attempts, "max_foreign_cpu_cores": args.max_foreign_cpu,
              "background_load_cores": args.background_load}  # fmt: skip
    meta = write_validation(pairs, args.out, config)
    stats, at_profile = meta["stats"], meta["stats_at_profiled_speed"]
    if args.probe:
        print("TTFT error, predicted with the device at the compute speed probed around each run:")
    print(format_table([{"group": k, **v} for k, v in stats.items()], STAT_COLUMNS))
    if at_profile:
        print("TTFT error, predicted at the profile's compute speed:")
        print(format_table([{"group": k, **v} for k, v in at_profile.items()], STAT_COLUMNS))
        speeds = sorted(p.device_speed for p in pairs if p.device_speed is not None)
        probed = [p.real.extra["device_speed"] for p in pairs if "device_speed" in p.real.extra]
        again = sum(d["attempts"] > 1 for d in probed)
        changed = sum(not d["steady"] for d in probed)
        print(f"probed compute time / profiled: median x{statistics.median(speeds):.3f}, "
              f"range x{speeds[0]:.3f} to x{speeds[-1]:.3f}; {again} runs measured again because the speed "
              f"changed during them (probes > {100 * args.speed_tolerance:.0f}% apart) or other processes "
              f"used > {args.max_foreign_cpu:g} cores, {changed} kept although they still did")  # fmt: skip
        if meta["unsteady_runs"]:
            print(f"TTFT error over the {len(pairs) - meta['unsteady_runs']} steady runs only (the "
                  f"{meta['unsteady_runs']} others measured the machine's other load, not the model):")
            print(format_table([{"group": k, **v} for k, v in meta["stats_steady"].items()], STAT_COLUMNS))
    charged = meta["stats_decisions_charged"]
    if charged:
        print("TTFT error, predicted with each real run's measured decision time and hand-over charged:")
        print(format_table([{"group": k, **v} for k, v in charged.items()], STAT_COLUMNS))
        for name, d in meta["decision_ms"].items():
            print(f"{name:7s} decision time per request: real {d.get('real_decision_ms', math.nan):.1f} ms, "
                  f"simulator {d.get('sim_decision_ms', math.nan):.1f} ms; compute lane hand-overs: work "
                  f"{d.get('handover_median_ms', math.nan):.3f} ms, report {d.get('report_median_ms', math.nan):.3f} "
                  f"ms (medians over runs)")  # fmt: skip
    for key, lane in meta["lanes"].items():
        print(f"{key:20s} measured / predicted seconds: median {lane['median']:.3f}, p10 {lane['p10']:.3f}, "
              f"p90 {lane['p90']:.3f} ({lane['spans']} spans)")  # fmt: skip
    from sparkv import api

    for name in dict.fromkeys(p.real.config["scenario"]["trace"] for p in pairs):
        runs = {f"{p.real.policy}": p.real.ttft_s for p in pairs if p.real.config["scenario"]["trace"] == name}
        note = api.loop_note(api.load_trace(name), scenario.link.trace_offset_s, runs)
        if note is not None:
            print(f"note: {note}")
    print(f"wrote {args.out}/ (validation.csv, validation.json, figures)")
    return 0
