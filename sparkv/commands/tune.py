"""`sparkv tune`: tune a policy's config on training traces in the simulator; report it on held-out traces."""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sparkv.analysis.backends import BACKENDS, choose_backend, default_jobs, make_backend
from sparkv.analysis.sweep import provenance
from sparkv.analysis.tune import (
    STALL_PENALTY_S,
    Param,
    Tuner,
    parse_param,
    search_space,
)
from sparkv.commands.common import add_objective_arg, format_table, scenario_from_args
from sparkv.commands.values import fraction, nonneg_float, nonneg_int, pos_int
from sparkv.core.errors import UserError
from sparkv.policies.config_file import config_class, config_to_dict, load_policy_config
from sparkv.traces.expand import expand_traces


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="tune a policy's parameters on training traces (differential evolution)")
    p.add_argument("--policy", default="sparkv", help="policy whose config dataclass is tuned (default sparkv)")
    p.add_argument("--trace", action="append", required=True, help="training trace: file, folder, glob or spec; "
                   "repeatable (held-out traces are split off it unless --test-trace is given)")  # fmt: skip
    p.add_argument("--test-trace", action="append", help="held-out trace(s); repeatable")
    p.add_argument("--test-fraction", type=fraction, default=0.3, help="share of --trace held out (default 0.3)")
    p.add_argument("--bandwidth-scale", help="comma list: every trace at each scale (default 1)")
    p.add_argument("--budget", type=pos_int, default=400, help="config evaluations, about (default 400)")
    p.add_argument("--popsize", type=pos_int, default=3, help="population per tuned parameter (default 3)")
    p.add_argument("--energy-weight", type=nonneg_float, default=0.0, help="objective += this many s per J (default 0)")
    add_objective_arg(p, extra="; held fixed while the other fields are tuned, saved in the tuned config")
    p.add_argument("--stat", choices=("median", "mean"), default="median", help="over training runs (default median)")
    p.add_argument("--param", action="append", default=[], help="NAME=LOW:HIGH[:log] | NAME=a|b|c | NAME=bool; "
                   "replaces that field's range")  # fmt: skip
    p.add_argument("--fix", action="append", default=[], help="NAME=VALUE: hold a field (JSON value) fixed")
    p.add_argument("--start", type=Path, help="start from this policy config JSON instead of the defaults")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the split and the optimiser (default 0)")
    scenario_flags = [("--config", Path, "base scenario JSON"), ("--model", str, "model spec"),
                      ("--device", str, "device profile"), ("--codec", str, "KV codec"),
                      ("--context-tokens", int, "context length"), ("--query-tokens", int, "query length"),
                      ("--chunk-tokens", int, "tokens per chunk"), ("--rtt-ms", float, "round trip, ms")]  # fmt: skip
    for flag, kind, what in scenario_flags:
        p.add_argument(flag, type=kind, help=what)
    p.add_argument("--backend", choices=BACKENDS, help="local processes (default) or ray (--ray-address implies it)")
    p.add_argument("--jobs", "-j", type=pos_int, default=default_jobs(), help="parallel workers (default: CPU count)")
    p.add_argument("--ray-address", "--address", dest="ray_address", help="join the Ray cluster at this address "
                   "(host:port, or auto); implies --backend ray and is refused beside --backend local; "
                   "--backend ray without it starts a local Ray")  # fmt: skip
    p.add_argument("--out", type=Path, help="tuned config JSON (default tuned-POLICY.json)")
    p.set_defaults(func=run)


def split_traces(traces: list[str], test: list[str] | None, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    if test:
        return traces, test
    if not 0 <= fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {fraction}")
    shuffled = list(traces)
    random.Random(seed).shuffle(shuffled)
    n_test = min(len(shuffled) - 1, round(fraction * len(shuffled)))
    return sorted(shuffled[n_test:]), sorted(shuffled[:n_test])


def _space(policy: str, args: argparse.Namespace, base: dict[str, Any]) -> list[Param]:
    overrides = [parse_param(text, config_class(policy)) for text in args.param]
    fixed = {}
    for text in args.fix:
        name, eq, value = text.partition("=")
        if not eq:
            raise UserError(f"--fix expects NAME=VALUE, got {text!r}")
        try:
            fixed[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            fixed[name.strip()] = value
    unknown = set(fixed) - set(base)
    if unknown:
        raise UserError(f"{policy} config has no field(s) {sorted(unknown)}; fields: {', '.join(base)}")
    base.update(fixed)
    return [p for p in search_space(policy, overrides) if p.name not in fixed]


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    backend_name = choose_backend(args.backend, args.ray_address)  # before any work: a bad pair fails at once
    cls = config_class(args.policy)
    start = load_policy_config(args.start, args.policy).options["config"] if args.start else cls()
    base_config = config_to_dict(start)
    base_config.pop("name", None)
    if args.objective is not None:
        if "objective" not in base_config:
            raise UserError(f"--objective: the {args.policy} policy plans by no objective (only sparkv does)")
        base_config["objective"] = args.objective
    space = _space(args.policy, args, base_config)
    # traces and bandwidth scales are lists here, expanded below: not the single values of a scenario
    scenario = scenario_from_args(argparse.Namespace(**{**vars(args), "trace": None, "bandwidth_scale": None}))
    train, test = split_traces(expand_traces(args.trace), expand_traces(args.test_trace) if args.test_trace else None,
                               args.test_fraction, args.seed)  # fmt: skip
    try:
        scales = [float(s) for s in args.bandwidth_scale.split(",")] if args.bandwidth_scale else [1.0]
    except ValueError:
        raise UserError(f"--bandwidth-scale takes comma-separated numbers, got {args.bandwidth_scale!r}") from None
    if any(k <= 0 for k in scales):
        raise UserError(f"--bandwidth-scale values must be positive, got {args.bandwidth_scale!r}")
    train_sc = [scenario.with_(trace=t, bandwidth_scale=k) for t in train for k in scales]
    test_sc = [scenario.with_(trace=t, bandwidth_scale=k) for t in test for k in scales]
    print(f"training traces ({len(train)}): {', '.join(train)}")
    print(f"held-out traces ({len(test)}): {', '.join(test) or 'none'}")
    print("tuned parameters: " + ", ".join(_describe(p) for p in space))
    backend = make_backend(backend_name, args.jobs, args.ray_address, preload=["sparkv.analysis.tune"])
    total = args.budget * len(train_sc)
    with tqdm(total=total, unit="run", disable=not sys.stderr.isatty(), dynamic_ncols=True) as bar:
        tuner = Tuner(args.policy, space, train_sc, base_config, args.energy_weight, args.stat, backend,
                      progress=bar.update, log=None if bar.disable else bar.write)  # fmt: skip
        if bar.disable:
            tuner.log = lambda line: print(line, flush=True)
        try:
            best, info = tuner.optimise(args.budget, args.seed, args.popsize)
            train_obj = tuner.evaluate([base_config, best])
            held = tuner.run_values([base_config, best], test_sc) if test_sc else None
        finally:
            backend.close()
    rows = [_row("train", len(train_sc), train_obj, None)]
    if held is not None:
        rows.append(_row("held-out", len(test_sc), tuner.objective_of(held).tolist(), held))
    columns = [("set", "set", ""), ("runs", "runs", "d"), ("default", f"default {args.stat} obj s", ".3f"),
               ("tuned", f"tuned {args.stat} obj s", ".3f"), ("gain", "default/tuned x", ".2f"),
               ("better", "tuned better on", "")]  # fmt: skip
    print(format_table(rows, columns))
    out = args.out or Path(f"tuned-{args.policy}.json")
    doc = {
        "kind": "tuned_policy_config", "policy": {"name": args.policy, **best},
        "default_policy": {"name": args.policy, **base_config},
        "space": [p.to_dict() for p in space],
        "objective": {"stat": args.stat, "per_run": "ttft_s + energy_weight_s_per_j * energy_j",
                      "energy_weight_s_per_j": args.energy_weight, "stall_penalty_s": STALL_PENALTY_S},
        "training": {"scenario": {**scenario.to_dict(), "trace": None}, "train_traces": train, "test_traces": test,
                     "bandwidth_scales": scales, "seed": args.seed, "optimizer": info},
        "results": rows, **provenance(),
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"{info['evaluations']} config evaluations ({info['distinct_configs']} distinct) in {info['wall_s']:.1f} s")
    print(f"wrote {out} (load with --policy-config {out})")
    return 0


def _row(name: str, runs: int, objective: list[float], values: np.ndarray | None) -> dict[str, Any]:
    row = {"set": name, "runs": runs, "default": objective[0], "tuned": objective[1],
           "gain": objective[0] / objective[1] if objective[1] > 0 else float("nan"), "better": "-"}  # fmt: skip
    if values is not None:
        ttft = np.where(np.isfinite(values[..., 0]), values[..., 0], STALL_PENALTY_S)
        row["better"] = f"{int(np.sum(ttft[1] < ttft[0]))}/{ttft.shape[1]} runs"
        row["ttft_median_s"] = {"default": float(np.median(ttft[0])), "tuned": float(np.median(ttft[1]))}
    return row


def _describe(p: Param) -> str:
    if p.kind == "enum":
        return f"{p.name} in {list(p.choices)}"
    if p.kind == "bool":
        return f"{p.name} (bool)"
    return f"{p.name} in [{p.low:g}, {p.high:g}]" + (" log" if p.log else "")
