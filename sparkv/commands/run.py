"""`sparkv run`: run policies for real (model, KV server, shaped link) on one document and question."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sparkv.analysis.overhead import overhead
from sparkv.commands.common import (
    add_policy_config_arg,
    add_scenario_args,
    format_table,
    policy_maker,
    scenario_from_args,
)
from sparkv.commands.simulate import write_outputs
from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.core.result import Result
from sparkv.policies import BASELINES, POLICIES

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
    ("answer", "answer", ""),
]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run policies for real: model, KV server, link replaying a trace")
    add_scenario_args(p, RUN_DEFAULTS)
    add_policy_config_arg(p)
    p.add_argument("--policy", action="append", help="policy to run, repeatable (default: baselines and sparkv)")
    p.add_argument("--link", choices=["auto", "netns", "pacing"], default="auto",
                   help="tc token bucket in a network namespace, or sender-side pacing (default auto)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="greedy tokens to generate (default 16)")
    p.add_argument("--device-torch", dest="torch_device", default="cpu", help="torch device: cpu or cuda")
    p.add_argument("--document", default="builtin",
                   help="'builtin' (a generated logbook) or FILE.jsonl[:INDEX] in the LEval format")
    p.add_argument("--out", type=Path, help="folder for result JSONs, timelines and a Gantt PNG")
    p.set_defaults(func=run)


def load_document(spec: str, context_tokens: int) -> tuple[str, str, str]:
    """(context, question, reference answer) of the built-in document or one LEval record."""
    if spec == "builtin":
        from sparkv.executor.model.document import TOKENS_PER_ENTRY, station_logbook

        doc = station_logbook(entries=max(8, int(context_tokens / TOKENS_PER_ENTRY)))
        return doc.text, doc.question, doc.answer
    path_text, _, index_text = spec.partition(":")
    path = Path(path_text)
    if not path.is_file():
        raise UserError(f"document file {path} not found")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    index = int(index_text or 0)
    if not 0 <= index < len(lines):
        raise UserError(f"{path} holds {len(lines)} documents; index {index} is out of range")
    try:
        record = json.loads(lines[index])
        return record["input"], record["instructions"][0], str(record["outputs"][0])
    except (json.JSONDecodeError, KeyError, IndexError) as exc:
        raise UserError(f"{path}:{index + 1}: not an LEval record ({exc})") from exc


def auto_scale(scenario: Scenario) -> float:
    """Bandwidth scale at which streaming everything takes as long as computing everything (predicted)."""
    from sparkv.engine.world import build_world

    world = build_world(scenario)
    compute_s = float(world.costs.compute_cell_s.sum())
    wire = float(world.costs.cell_bytes.sum()) / scenario.link.efficiency
    return wire / compute_s / world.trace.mean_bps


def run(args: argparse.Namespace) -> int:
    scenario = scenario_from_args(args, RUN_DEFAULTS)
    names = args.policy or [*BASELINES, *(n for n in ("sparkv",) if n in POLICIES)]
    make = policy_maker(args)
    for name in names:
        make(name)
    if name_oracle := [n for n in names if n == "oracle"]:
        raise UserError(f"{name_oracle[0]} needs the future trace; it runs in the simulator only")
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    from sparkv.executor.session import RealSession

    document = load_document(args.document, scenario.context_tokens)
    session = RealSession(scenario, document, link_kind=args.link, device=args.torch_device)
    if args.bandwidth_scale is None:
        scale = auto_scale(session.scenario)
        session = RealSession(session.scenario.with_(bandwidth_scale=scale), document, link_kind=args.link,
                              loaded=session.loaded)
    sc = session.scenario
    print(
        f"real run: {session.loaded.model_id} on {session.loaded.device}, {sc.context_tokens} context tokens "
        f"in {session.world.request.num_chunks} chunks of {sc.chunk_tokens}, {sc.query_tokens} query tokens; "
        f"trace {session.world.trace.name} x{sc.link.bandwidth_scale:.2f} "
        f"(mean {session.world.trace.mean_bps * 8 / 1e6:.1f} Mbit/s), codec {sc.codec}"
    )
    results: list[Result] = []
    with session:
        lc = session.scenario.link
        print(f"link: {session.link_description()}; constants {session.link_constants}: rtt {lc.rtt_s * 1e3:.2f} ms, "
              f"per-transfer {lc.per_transfer_s * 1e3:.2f} ms, efficiency {lc.efficiency:.3f}")
        for name in names:
            results.append(session.run(make(name), max_new_tokens=args.max_new_tokens))
    rows = []
    for r in results:
        row = r.summary()
        row["idle_pct"] = overhead(r).idle_pct  # no lane busy: the executor's own overhead
        row["answer"] = repr(str(r.extra.get("text", "")).strip()[:40])
        rows.append(row)
    print(format_table(rows, COLUMNS))
    print(f"question: {session.prompt.question}  (reference: {session.prompt.reference_answer!r})")
    for r in results:
        for fault in r.faults:
            print(f"fault [{r.policy}]: {fault}")
    if args.out:
        write_outputs(results, args.out)
        print(f"wrote {args.out}/")
    return 0
