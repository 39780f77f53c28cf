"""`sparkv decode`: decode policies over one decode scenario, in the simulator (default) or for real (`--real`).

Prints per policy the step time (median, p90, max), tokens/s, bytes read, reuse hit rate and the memory
high-water mark; `--out DIR` writes one Result JSON per policy, each with its configuration.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path
from typing import Any

from sparkv.commands.bench import reference_rate
from sparkv.commands.common import format_table
from sparkv.commands.decode_hillinfer import add_hill_args, build_policy, print_hill_stats, sim_options
from sparkv.commands.decode_kelle import add_kelle_args, is_head_run, run_kelle
from sparkv.commands.decode_quality import add_quality_args, run_quality
from sparkv.commands.decode_real import add_real_args, print_validation, run_hill_study, run_real, validate
from sparkv.commands.decode_studies import load_compute, sweep_g, what_if
from sparkv.commands.decode_whatif import add_whatif_args, run_whatif_table
from sparkv.core.decode import DecodeScenario, DecodeSummary
from sparkv.core.errors import UserError
from sparkv.core.result import Result
from sparkv.policies.decode import DECODE_POLICIES, make_decode_policy
from sparkv.sim.decode import build_decode_world, simulate_decode

COLUMNS = [
    ("policy", "policy", ""),
    ("world", "world", ""),
    ("step_median_ms", "step median ms", ".2f"),
    ("step_p90_ms", "p90 ms", ".2f"),
    ("step_max_ms", "max ms", ".2f"),
    ("tokens_per_s", "tokens/s", ".2f"),
    ("mb_read", "read MB", ".2f"),
    ("hit_rate", "hit rate", ".3f"),
    ("hidden", "read hidden", ".2f"),
    ("memory_mb", "KV memory hwm MB", ".2f"),
]
_SIZE = re.compile(r"^\s*([0-9.]+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_UNITS = {None: 1, "b": 1, "kb": 1e3, "kib": 1024, "mb": 1e6, "mib": 1 << 20, "gb": 1e9, "gib": 1 << 30}


def parse_budget(text: str) -> dict[str, Any]:
    """'1/8' or '0.125' (a fraction of the KV) or '24MB' / '3000000' (bytes) -> scenario fields."""
    if "/" in text:
        num, _, den = text.partition("/")
        try:
            frac = float(num) / float(den)
        except (ValueError, ZeroDivisionError) as exc:
            raise UserError(f"bad --budget {text!r}: use a fraction such as 1/8, or bytes such as 24MB") from exc
        return {"budget_fraction": frac, "budget_bytes": 0}
    m = _SIZE.match(text)
    if not m:
        raise UserError(f"bad --budget {text!r}: use a fraction such as 1/8, or bytes such as 24MB")
    value = float(m.group(1))
    if m.group(2) is None and value <= 1.0:
        return {"budget_fraction": value, "budget_bytes": 0}
    return {"budget_bytes": int(value * _UNITS[m.group(2).lower() if m.group(2) else None])}


def add_decode_args(p: argparse.ArgumentParser) -> None:
    d = DecodeScenario()
    p.add_argument("--model", help=f"built-in model spec or HF model directory (default {d.model})")
    p.add_argument("--context-tokens", type=int, help=f"cached tokens at the start (default {d.context_tokens})")
    p.add_argument("--group-tokens", "-G", type=int, help=f"tokens per group, one read (default {d.group_tokens})")
    p.add_argument("--steps", type=int, help=f"tokens to decode (default {d.steps})")
    p.add_argument("--budget", help="KV memory budget: a fraction of the KV (1/8, the default) or bytes (24MB)")
    p.add_argument("--sink-tokens", type=int, help=f"attention sinks (default {d.sink_tokens})")
    p.add_argument("--select-tokens", type=int, help=f"M, tokens selected per layer (default {d.select_tokens})")
    p.add_argument("--rank", type=int, help=f"rank r of the key metadata (default {d.rank})")
    p.add_argument("--storage", help=f"storage profile name or JSON path (default {d.storage})")
    p.add_argument("--device", help=f"device profile for compute (default {d.device})")
    p.add_argument("--queue-depth", type=int, help=f"reads in flight (default {d.queue_depth})")
    p.add_argument("--scores", help="score trace: synthetic:seed=N,... or a recorded .npz (default synthetic)")
    p.add_argument("--seed", type=int, help="seed (default 0)")  # fmt: skip


def decode_scenario_from_args(args: argparse.Namespace) -> DecodeScenario:
    changes: dict[str, Any] = {}
    for name in ("model", "context_tokens", "group_tokens", "steps", "sink_tokens", "select_tokens", "rank",
                 "storage", "device", "queue_depth", "scores", "seed"):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if getattr(args, "budget", None):
        changes.update(parse_budget(args.budget))
    try:
        return DecodeScenario().with_(**changes)
    except ValueError as exc:
        raise UserError(str(exc)) from exc


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decode", help="decode policies under a memory budget, KV cache on disk (sim or --real)")
    add_decode_args(p)
    p.add_argument("--policy", action="append",
                   help=f"decode policy, repeatable (default all: {', '.join(DECODE_POLICIES)})")
    p.add_argument("--out", type=Path, help="folder for one Result JSON per policy and a summary")
    p.add_argument("--bench", action="store_true", help="time the simulator: layer-steps per second per policy")
    p.add_argument("--sweep-g", help="group sizes to sweep (e.g. 1,2,4,8,16) on a per-token --scores trace")
    p.add_argument("--what-if", action="store_true",
                   help="modelled: Llama-3.1-8B at 32k on a Jetson Orin, NVMe vs eMMC, tokens/s per policy")
    p.add_argument("--decode-compute", type=Path, help="a fitted decode compute JSON (as --validate writes)")
    add_real_args(p)
    add_quality_args(p)
    add_kelle_args(p)
    add_hill_args(p)
    add_whatif_args(p)
    p.set_defaults(func=run)  # fmt: skip


def summary_row(result: Result) -> dict[str, Any]:
    """One table row of a decode Result (ms, MB, fractions)."""
    if result.decode is None:
        raise UserError(f"result of {result.policy} has no decode phase")
    t = DecodeSummary.from_dict(result.decode).totals()
    read_s = t["read_s"]
    return {
        "policy": result.policy, "world": result.world,
        "step_median_ms": t["step_median_s"] * 1e3, "step_p90_ms": t["step_p90_s"] * 1e3,
        "step_max_ms": t["step_max_s"] * 1e3, "tokens_per_s": t["tokens_per_s"], "mb_read": t["bytes_read"] / 1e6,
        "hit_rate": t["hit_rate"], "hidden": 1.0 - t["stall_s"] / read_s if read_s > 0 else 1.0,
        "memory_mb": t["memory_hwm_bytes"] / 1e6,
    }  # fmt: skip


def run(args: argparse.Namespace) -> int:
    scenario = decode_scenario_from_args(args)
    if args.whatif_table:
        return run_whatif_table(args, scenario)
    if isinstance(args.quality, str):
        raise UserError(f"--quality {args.quality}: a results file goes with --whatif-table; --quality alone runs "
                        "the tasks")
    names = args.policy or list(DECODE_POLICIES)
    for name in names:
        make_decode_policy(name)  # an unknown name fails before any work
    if is_head_run(names):  # aerp, h2o: per-head eviction in the Kelle worlds
        return run_kelle(args, scenario, names)
    if args.quality:
        return run_quality(args, scenario, names)
    if args.what_if:
        return what_if(args, args.out)
    if args.hill_study:
        return run_hill_study(args, scenario)
    compute = load_compute(args.decode_compute)
    if args.sweep_g:
        try:
            sizes = [int(v) for v in args.sweep_g.split(",")]
        except ValueError as exc:
            raise UserError(f"bad --sweep-g {args.sweep_g!r}: use group sizes such as 1,2,4,8,16") from exc
        return sweep_g(scenario, sizes, compute, None, args.out)
    if args.validate or args.real:
        return run_real_world(args, scenario, names)
    world = build_decode_world(scenario, compute=compute)
    if args.bench:
        return bench(world, names)
    results = [simulate_decode(world, build_policy(name, sim_options(world, args.hill_bits))) for name in names]
    print(describe(scenario, world.geometry.kv_bytes, world.geometry.budget_bytes, world.storage.name,
                   f"{world.compute.kind} decode compute ({world.compute.source})"))  # fmt: skip
    print(format_table([summary_row(r) for r in results], COLUMNS))
    print("read hidden: 1 - (compute waiting for reads) / (storage busy); sim times are modelled")
    print_hill_stats(results)
    if args.out:
        write_results(results, args.out)
    return 0


def run_real_world(args: argparse.Namespace, scenario: DecodeScenario, names: list[str]) -> int:
    if args.validate:
        results, rows = validate(args, scenario, names)
        print(format_table([summary_row(r) for r in results], COLUMNS))
        print_validation(rows)
        print_hill_stats(results)
        if args.out:
            write_results(results, args.out)
            (args.out / "decode-validation.json").write_text(json.dumps(rows, indent=1))
            compute = results[len(results) // 2].config["decode_compute"]
            (args.out / "decode-compute.json").write_text(json.dumps(compute, indent=1))
        return 0
    results = run_real(args, scenario, names)
    print(format_table([summary_row(r) for r in results], COLUMNS))
    reader = results[0].config.get("reader", "threads") if results else "threads"
    print(f"real: every time measured (O_DIRECT reads through the {reader} reader, compute on this CPU)")
    print_hill_stats(results)
    if args.out:
        write_results(results, args.out)
    return 0


def describe(scenario: DecodeScenario, kv_bytes: int, budget_bytes: int, storage: str, compute: str) -> str:
    return (
        f"decode: {scenario.model}, {scenario.context_tokens} context tokens, G={scenario.group_tokens}, "
        f"M={scenario.select_tokens}, {scenario.steps} steps, KV {kv_bytes / 1e6:.1f} MB, budget "
        f"{budget_bytes / 1e6:.2f} MB, storage {storage}, queue depth {scenario.queue_depth}, {compute}, "
        f"scores {scenario.scores}"
    )


def write_results(results: list[Result], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.save(out / f"decode-{r.world}-{r.policy}.json")
    (out / "decode-summary.json").write_text(json.dumps([summary_row(r) for r in results], indent=1))
    print(f"wrote {out}/")


def bench(world: Any, names: list[str], repeats: int = 5, max_seconds: float = 5.0) -> int:
    """Layer-steps simulated per second of wall time, per policy (median of `repeats`, one process)."""
    per_run = world.scenario.steps * world.geometry.num_layers
    rates: dict[str, list[float]] = {n: [] for n in names}
    refs = []
    for _ in range(repeats):
        refs.append(reference_rate())
        for name in names:
            t0 = time.perf_counter()
            runs = 0
            while runs < 3 and (runs == 0 or time.perf_counter() - t0 < max_seconds):
                simulate_decode(world, make_decode_policy(name), record=False)
                runs += 1
            rates[name].append(runs * per_run / (time.perf_counter() - t0))
    rows = [{"policy": n, "median": statistics.median(r), "min": min(r), "max": max(r)} for n, r in rates.items()]
    print(f"bench decode sim: {world.spec.name}, {world.scenario.context_tokens} tokens, "
          f"{world.geometry.num_layers} layers x {world.scenario.steps} steps per run, {repeats} repeats, "
          "one process")  # fmt: skip
    print(format_table(rows, [("policy", "policy", ""), ("median", "median layer-steps/s", ".0f"),
                              ("min", "min", ".0f"), ("max", "max", ".0f")]))  # fmt: skip
    print(f"machine reference: median {statistics.median(refs):.0f} loops/s of a fixed pure-Python loop "
          f"(min {min(refs):.0f}, max {max(refs):.0f})")  # fmt: skip
    return 0
