"""`sparkv simulate`: run policies over one scenario in the SimPy model and print a table.

Exit status: 0 when every policy's request finished, EXIT_STALLED (3) when one did not (within
--max-sim-s, or at all), 2 for a usage error (a bad flag or value, an unreadable file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparkv.analysis.gantt import plot_gantt
from sparkv.commands.common import (
    add_local_args,
    add_policy_config_arg,
    add_scenario_args,
    format_table,
    policy_options,
    scenario_from_args,
)
from sparkv.commands.machine import profile_note
from sparkv.commands.values import pos_float
from sparkv.core.errors import UserError
from sparkv.core.result import Result
from sparkv.policies import DISK_POLICIES, NO_DISK_LANE, POLICIES
from sparkv.sim import DEFAULT_MAX_TIME_S

COLUMNS = [
    ("policy", "policy", ""),
    ("ttft_s", "TTFT s", ".3f"),
    ("energy_j", "energy J", ".1f"),
    ("mb_streamed", "streamed MB", ".2f"),
    ("mb_wasted", "wasted MB", ".2f"),
    ("cells_computed", "cells computed", "d"),
    ("cells_streamed", "cells streamed", "d"),
]

EXIT_STALLED = 3  # a policy's request did not finish: not a usage error (2)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate policies on one scenario (SimPy model)")
    add_scenario_args(p)
    add_policy_config_arg(p)
    add_local_args(p)
    p.add_argument("--policy", action="append", help=f"policy to run, repeatable (default: all of {sorted(POLICIES)}; "
                   f"with --local-chunks also {', '.join(DISK_POLICIES)}, and not {', '.join(NO_DISK_LANE)})")
    p.add_argument("--out", type=Path, help="folder for result JSON, timeline CSV and a Gantt PNG")
    p.add_argument("--max-sim-s", type=pos_float, default=DEFAULT_MAX_TIME_S,
                   help=f"simulated seconds a request may take before it counts as not finished "
                        f"(default {DEFAULT_MAX_TIME_S:g})")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparkv import api

    if not args.max_sim_s > 0:
        raise UserError(f"--max-sim-s must be > 0, got {args.max_sim_s}")
    scenario = scenario_from_args(args)
    names = args.policy or None
    outcome = api.simulate(scenario, names, max_sim_s=args.max_sim_s, policy_options=policy_options(args),
                           warn=False)  # fmt: skip
    world, req = outcome.world, outcome.world.request
    print(
        f"simulated: {world.spec.name}, {req.context_tokens} context tokens in {req.num_chunks} chunks of "
        f"{req.chunk_tokens}, trace {world.trace.name} ({world.trace.duration_s:.1f} s, looping; mean "
        f"{world.trace.mean_bps * 8 / 1e6:.2f} Mbit/s), device {world.profile.name}, codec {scenario.codec}"
    )
    local = world.costs.local
    if local is not None:
        print(f"local KV: chunks {list(local.chunks)} of {req.num_chunks} on local disk (fp16), storage profile "
              f"{local.curve.name}, queue depth {local.queue_depth}")
    if outcome.results:
        rows = [{**r.summary(), "mb_read": r.extra.get("disk", {}).get("bytes_read", 0) / 1e6} for r in outcome.results]
        columns = [*COLUMNS, ("mb_read", "read from disk MB", ".2f")] if local is not None else COLUMNS
        print(format_table(rows, columns))
    for name, why in outcome.stalled.items():
        print(f"did not finish [{name}]: {why}")
    if outcome.needs_longer:
        print(f"(--max-sim-s raises the limit of {args.max_sim_s:g} s simulated per request)")
    for note in outcome.notes:
        print(f"note: {note}")
    machine = profile_note(world.profile)
    if machine is not None:
        print(f"note: {machine}")
    if args.out:
        write_outputs(outcome.results, args.out)
        print(f"wrote {args.out}/")
    return EXIT_STALLED if outcome.stalled else 0


def write_outputs(results: list[Result], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.save(out / f"{r.world}-{r.policy}.json")
        r.write_timeline_csv(out / f"{r.world}-{r.policy}-timeline.csv")
    (out / "summary.json").write_text(json.dumps([r.summary() for r in results], indent=1))
    if results:
        plot_gantt(results, out / "gantt.png")
