"""`sparkv bench ...`: speed measured side by side in one run, printed as rates and ratios."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from sparkv.commands.common import deprecated_alias, format_table
from sparkv.commands.values import fraction, nonneg_float, nonneg_int, pos_float, pos_int
from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.core.paths import shared_path
from sparkv.policies import BASELINES, POLICIES, make_policy
from sparkv.sim import World, build_world, simulate
from sparkv.traces import integral_vs_stepping

DEFAULT_TRACE = ("traces", "mahimahi_lte_us", "Verizon-LTE-short.down")
REFERENCE_N = 200_000  # integers summed by the machine reference (10 to 20 ms of pure Python on this VM)


def reference_rate() -> float:
    """The machine's speed right now: runs per second of a fixed pure-Python loop (best of three).

    Printed beside the rates, so that a repeat timed while a shared machine ran slow shows as such.
    """
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(REFERENCE_N):
            total += i * i
        best = min(best, time.perf_counter() - t0)
    return 1.0 / best


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (rates and ratios from one run)")
    bench_sub = p.add_subparsers(dest="bench", required=True)
    s = bench_sub.add_parser("sim", help="simulated requests per second, and the trace integral vs 1 ms stepping")
    s.add_argument("--trace", help="trace file or spec (default: the Verizon LTE trace in ../shared, if present)")
    s.add_argument("--device", default="cpu-smollm2", help="device profile (default cpu-smollm2)")
    s.add_argument("--requests", type=pos_int, default=200, help="requests per policy per repeat (default 200)")
    s.add_argument("--repeats", type=pos_int, default=5, help="repeats; the median rate is printed (default 5)")
    s.add_argument("--max-wall-s", dest="max_seconds", type=pos_float, default=10.0,
                   help="a repeat stops after this many wall-clock seconds even if fewer requests ran (default 10; "
                        "a policy that plans at run time can take seconds per request)")
    s.add_argument("--max-seconds", dest="max_seconds", type=pos_float, action=deprecated_alias("--max-wall-s"),
                   help=argparse.SUPPRESS)
    s.add_argument("--policy", action="append", help="policies (default: the baselines and any registered)")
    s.add_argument("--context", action="append", type=pos_int, dest="contexts",
                   help="context tokens, repeatable (default 8192); each gets its own table")
    s.set_defaults(func=bench_sim)
    v = bench_sub.add_parser("server", help="soak the KV server: clients x requests with kills, corrupt frames and "
                             "stalls; exit 0 only when every request got the reference KV")
    v.add_argument("--clients", type=pos_int, default=100, help="concurrent clients (default 100)")
    v.add_argument("--requests", type=pos_int, default=20, help="requests per client (default 20)")
    v.add_argument("--corrupt-rate", type=fraction, default=0.02, help="per cell frame: a flipped byte (0.02)")
    v.add_argument("--stall-rate", type=fraction, default=0.05, help="per request: a stall mid-stream (0.05)")
    v.add_argument("--stall-s", type=pos_float, default=1.0, help="length of a stall, s (default 1)")
    v.add_argument("--kill-every-s", type=nonneg_float, default=10.0,
                   help="SIGKILL and restart the server this often, s (default 10; 0: never)")
    v.add_argument("--seed", type=nonneg_int, default=0)
    v.add_argument("--out", type=Path, help="also write the report as JSON here")
    v.set_defaults(func=bench_server)


def bench_server(args: argparse.Namespace) -> int:
    from sparkv.executor.net.soak import SoakConfig, run_soak

    cfg = SoakConfig(clients=args.clients, requests=args.requests, corrupt_rate=args.corrupt_rate,
                     stall_rate=args.stall_rate, stall_s=args.stall_s, kill_every_s=args.kill_every_s, seed=args.seed)
    print(f"bench server: {cfg.clients} clients x {cfg.requests} requests over loopback; faults: corrupt-rate "
          f"{cfg.corrupt_rate} per frame, stall-rate {cfg.stall_rate} per request ({cfg.stall_s} s), SIGKILL every "
          f"{cfg.kill_every_s} s")
    rep = run_soak(cfg)
    print(f"requests correct (KV equal to the store's, compared as tensors): {rep.correct} / {rep.requests}; "
          f"wrong {rep.wrong}, hangs {rep.hangs}")
    print(f"faults met: {rep.faulted_requests} requests ({100 * rep.faulted_requests / max(1, rep.requests):.1f} %), "
          f"{rep.retries} failed attempts retried; server killed {rep.kills} times, unexpected exits "
          f"{rep.unexpected_exits}")
    print(f"server max RSS {rep.max_rss_kb / 1024:.1f} MiB, max threads {rep.max_threads}; {rep.wall_s:.1f} s wall")
    if args.out:
        args.out.write_text(json.dumps(rep.to_dict(), indent=1) + "\n")
    return 0 if rep.ok() else 1


def _bench_context(args: argparse.Namespace, scenario: Scenario, world: World, names: list[str]) -> None:
    """One table: every policy's simulated requests per second on one world, policies taking turns."""
    print(
        f"bench sim: {scenario.model}, {scenario.context_tokens} tokens in {world.request.num_chunks} chunks, "
        f"trace {world.trace.name}, {args.requests} requests x {args.repeats} repeats per policy (policies take "
        "turns), one process"
    )
    for name in names:
        simulate(world, make_policy(name), record=False)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in names}
    counts = dict.fromkeys(names, 0)
    searches: dict[str, str] = dict.fromkeys(names, "-")  # a planning policy's searches per request (its stats)
    reference: list[float] = []
    for _ in range(args.repeats):  # policies take turns, so a slow minute of the machine hits them all alike
        reference.append(reference_rate())
        for name in names:
            t0 = time.perf_counter()
            deadline = t0 + args.max_seconds
            n = 0
            while n < args.requests and (n == 0 or time.perf_counter() < deadline):
                result = simulate(world, make_policy(name), record=False)
                n += 1
            plans = result.extra.get("policy_stats", {}).get("plans")
            if plans is not None:
                searches[name] = str(plans)
            rates[name].append(n / (time.perf_counter() - t0))
            counts[name] += n
    first = statistics.median(rates[names[0]])
    rows = [{"policy": name, "rate": statistics.median(r), "min": min(r), "max": max(r), "requests": counts[name],
             "ms": 1e3 / statistics.median(r), "ratio": statistics.median(r) / first, "searches": searches[name]}
            for name, r in rates.items()]  # fmt: skip
    print(format_table(rows, [("policy", "policy", ""), ("rate", "median req/s", ".0f"),
                              ("min", "min req/s", ".0f"), ("max", "max req/s", ".0f"),
                              ("ms", "ms/request", ".2f"), ("ratio", f"rate / {names[0]}'s", ".3g"),
                              ("searches", "plan searches/request", ""),
                              ("requests", "requests timed", "d")]))  # fmt: skip
    print(
        f"machine reference (a fixed pure-Python loop of {REFERENCE_N} additions, before each repeat): "
        f"median {statistics.median(reference):.0f} loops/s, min {min(reference):.0f}, max {max(reference):.0f}; "
        "a slow repeat of the machine shows here too"
    )


def bench_sim(args: argparse.Namespace) -> int:
    if args.requests < 1 or args.repeats < 1 or not args.max_seconds > 0:
        raise UserError("--requests and --repeats must be >= 1 and --max-wall-s > 0")
    trace = args.trace
    if trace is None:
        found = shared_path(*DEFAULT_TRACE)
        trace = str(found) if found else "lte:seed=0"
    names = args.policy or [*BASELINES, *(n for n in POLICIES if n not in BASELINES and n != "oracle")]
    scenario = world = None
    for context in args.contexts or [8192]:
        scenario = Scenario(context_tokens=context, chunk_tokens=512, model="smollm2-135m", trace=trace,
                            device=args.device)  # fmt: skip
        world = build_world(scenario)
        _bench_context(args, scenario, world, names)
    assert scenario is not None and world is not None
    # the link alone: a stream-only request's transfers (one per layer) by integral vs 1 ms stepping
    layer_bytes = float(world.costs.cell_bytes[:, 0].sum() / scenario.link.efficiency)
    link = integral_vs_stepping(world.trace, world.spec.num_layers, layer_bytes, step_s=0.001)
    print(
        f"link: {world.spec.num_layers} transfers of {layer_bytes / 1e6:.2f} MB: "
        f"integral {link['integral_s'] * 1e6:.0f} us, "
        f"1 ms stepping {link['stepping_s'] * 1e3:.1f} ms, ratio {link['ratio']:.0f}x "
        f"(ends {link['end_integral_s']:.3f} s vs {link['end_stepping_s']:.3f} s)"
    )
    return 0
