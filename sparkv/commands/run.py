"""`sparkv run`: run policies for real (model, KV server, shaped link) on one document and question."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sparkv.analysis import documents
from sparkv.commands.common import (
    add_local_args,
    add_policy_config_arg,
    add_scenario_args,
    deprecated_alias,
    format_table,
    policy_options,
    scenario_from_args,
)
from sparkv.commands.machine import profile_note
from sparkv.commands.simulate import write_outputs
from sparkv.commands.values import pos_int
from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.policies import BASELINES, DISK_POLICIES, POLICIES

RUN_DEFAULTS = Scenario(context_tokens=2048, chunk_tokens=256)
COLUMNS = [
    ("policy", "policy", ""),
    ("ttft_s", "TTFT s", ".3f"),
    ("energy_j", "energy J (model)", ".1f"),
    ("mb_streamed", "streamed MB", ".2f"),
    ("cells_computed", "cells computed", "d"),
    ("cells_streamed", "cells streamed", "d"),
    ("faults", "faults", "d"),
    ("idle_pct", "idle % of TTFT", ".2f"),
    ("match", "answer matches", ""),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run policies for real: model, KV server, link replaying a trace")
    add_scenario_args(p, RUN_DEFAULTS)
    add_policy_config_arg(p)
    add_local_args(p)
    p.add_argument("--policy", action="append", help="policy to run, repeatable (default: baselines and sparkv)")
    p.add_argument("--link", choices=["auto", "netns", "pacing"], default="auto",
                   help="tc token bucket in a network namespace, or sender-side pacing (default auto)")
    p.add_argument("--max-new-tokens", type=pos_int, default=16, help="greedy tokens to generate (default 16)")
    p.add_argument("--torch-device", dest="torch_device", default="cpu",
                   help="torch device: cpu or cuda[:n] (--device names the device profile)")
    p.add_argument("--device-torch", dest="torch_device", action=deprecated_alias("--torch-device"),
                   help=argparse.SUPPRESS)
    p.add_argument("--document", default="builtin",
                   help="'builtin' (a generated logbook), FILE.jsonl[:INDEX] in the LEval format, or "
                        "FILE.jsonl[:INDEX]?context=F&question=F&answer=F[&metric=exam|f1|rouge|contains] for "
                        "other field names")  # fmt: skip
    p.add_argument("--out", type=Path, help="folder for result JSONs, timelines and a Gantt PNG")
    p.add_argument("--no-probe", dest="probe", action="store_false",
                   help="plan with the profile's compute speed (default: probe the device's speed before each "
                        "policy's run, about a second, and plan with that)")
    p.add_argument("--keep-partial", action="store_true",
                   help="a transfer that fails part-way keeps the cells that arrived whole (off by default: the "
                        "simulator does not model partial delivery)")
    p.add_argument("--background-load", type=int, default=0, metavar="CORES",
                   help="run this many CPU-bound processes through the runs (a loaded device; default 0)")
    p.set_defaults(func=run)


def load_document(spec: str, context_tokens: int) -> tuple[str, str, str]:
    """(context, question, reference answer) of a document argument (`sparkv.analysis.documents`)."""
    context, question, answer, _ = documents.load_document(spec, context_tokens)
    return context, question, answer


def auto_scale(scenario: Scenario) -> float:
    """Bandwidth scale at which streaming everything takes as long as computing everything (predicted)."""
    from sparkv.api import auto_bandwidth_scale

    return auto_bandwidth_scale(scenario)


def run(args: argparse.Namespace) -> int:
    from sparkv import api

    if not 0 <= args.background_load <= 64:
        raise UserError(f"--background-load must be 0-64 cores, got {args.background_load}")
    scenario = scenario_from_args(args, RUN_DEFAULTS)
    names = args.policy or [*BASELINES, *(n for n in ("sparkv",) if n in POLICIES),
                            *(DISK_POLICIES if scenario.local is not None else ())]  # fmt: skip
    options = policy_options(args)
    if args.policy_config:  # a tuned config replaces its policy's name by the file that holds it
        configured = next(iter(options))
        names = [str(args.policy_config) if n == configured else n for n in names]
    if args.objective is not None:  # the sparkv policy's rows become sparkv[OBJECTIVE] (plain sparkv for ttft)
        from sparkv.api.basics import resolve_policy
        from sparkv.policies.objective import objective_name

        names = [objective_name(n, args.objective) if resolve_policy(n)[0] == "sparkv" else n for n in names]

    def started(session: Any) -> None:
        sc = session.scenario
        print(
            f"real run: {session.loaded.model_id} on {session.loaded.device}, {sc.context_tokens} context tokens "
            f"in {session.world.request.num_chunks} chunks of {sc.chunk_tokens}, {sc.query_tokens} query tokens; "
            f"trace {session.world.trace.name} x{sc.link.bandwidth_scale:.2f} "
            f"(mean {session.world.trace.mean_bps * 8 / 1e6:.1f} Mbit/s), codec {sc.codec}"
        )
        lc = sc.link
        print(f"link: {session.link_description()}; constants {session.link_constants}: rtt {lc.rtt_s * 1e3:.2f} ms, "
              f"per-transfer {lc.per_transfer_s * 1e3:.2f} ms, efficiency {lc.efficiency:.3f}")
        machine = profile_note(session.world.profile)
        if machine is not None:
            print(f"note: {machine}")
        local = session.world.costs.local
        if local is not None:
            how = "written now (untimed)" if session.local_written else "kept from an earlier session"
            print(f"local KV: chunks {list(local.chunks)} on local disk, fp16, {how}: {session.local_dir}; read with "
                  f"O_DIRECT at queue depth {local.queue_depth}; simulated with storage profile {local.curve.name}")

    outcome = api.run_real(scenario, names, document=args.document, link=args.link, torch_device=args.torch_device,
                           max_new_tokens=args.max_new_tokens,
                           bandwidth_scale="auto" if args.bandwidth_scale is None else None, on_start=started,
                           probe=args.probe, background_cores=args.background_load,
                           keep_partial=args.keep_partial)
    for r in outcome.results:
        probed = r.extra.get("device_speed_probe")
        if probed is not None:
            print(f"speed probe before {r.policy}: compute x{probed['factor']:.3f} of the profile's time")
    table = outcome.table
    rows = [{**r.summary(), "idle_pct": idle, "match": "yes" if ok else "no"}
            for r, idle, ok in zip(outcome.results, table["idle_pct"], table["answer_matches"], strict=True)]
    print(format_table(rows, COLUMNS))
    print(f"question: {outcome.question}")
    print(f"reference: {outcome.reference!r} (scored by {outcome.metric})")
    for policy, answer, score in zip(table["policy"], table["answer"], table["answer_score"], strict=True):
        print(f"answer [{policy}] (score {score:.2f}): {answer!r}")
    for r in outcome.results:
        for fault in r.faults:
            print(f"fault [{r.policy}]: {fault}")
    trace = api.load_trace(outcome.scenario.trace)
    note = api.loop_note(trace, outcome.scenario.link.trace_offset_s, {r.policy: r.ttft_s for r in outcome.results})
    if note is not None:
        print(f"note: {note}")
    last = outcome.results[-1] if outcome.results else None
    if last is not None and (len(last.extra.get("tokens", [])) >= args.max_new_tokens):
        print(f"(answers stop at --max-new-tokens {args.max_new_tokens})")
    if args.out:
        write_outputs(outcome.results, args.out)
        print(f"wrote {args.out}/")
    return 0
