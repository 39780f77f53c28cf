"""`sparkv evaluate`: every policy over traces x context lengths x bandwidth scales, against the oracle."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from sparkv.analysis.evaluate import (
    POLICY_ORDER,
    EvalConfig,
    bench_planning,
    default_traces,
    oracle_beaten,
    run_evaluation,
    summarise,
)
from sparkv.commands.common import add_objective_arg, format_table, write_csv
from sparkv.commands.common import floats as _floats
from sparkv.commands.evaluate_paper import run_paper
from sparkv.commands.values import nonneg_float, nonneg_int, pos_int
from sparkv.core.attention import parse_attention
from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.cost_models.profiles import builtin_profile_names
from sparkv.policies import check_policy
from sparkv.policies.config_file import load_policy_config
from sparkv.policies.controller import SparKVConfig
from sparkv.traces.expand import expand_traces

SUMMARY = [
    ("policy", "policy", ""), ("n", "scenarios", "d"), ("ttft_med_s", "TTFT med s", ".2f"),
    ("ttft_p90_s", "TTFT p90 s", ".2f"), ("energy_med_j", "energy med J", ".0f"),
    ("speedup_best_single", "x best(local,stream)", ".2f"), ("speedup_cake", "x cake", ".3f"),
    ("over_oracle", "/oracle med", ".3f"), ("over_oracle_p90", "/oracle p90", ".3f"),
    ("over_bound", "/bound med", ".3f"),
]  # fmt: skip


def default_device() -> str:
    return "cpu-smollm2" if "cpu-smollm2" in builtin_profile_names() else "analytic-cpu-2core"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="all policies over traces, contexts and bandwidth scales vs the oracle")
    p.add_argument("--trace", action="append", help="trace file, folder, glob or synthetic spec; repeatable "
                   "(default: ../shared/traces if present, else synthetic lte/ge/steps families)")  # fmt: skip
    p.add_argument("--context-tokens", help="context lengths (default 4096,8192,16384; --paper: 8192,16384,32768)")
    p.add_argument("--ratios",
                   help="bandwidth scales set so stream-only TTFT / local-only TTFT hits each ratio (default 0.5,1,2)")
    p.add_argument("--paper", action="store_true",
                   help="the seed paper's comparison: sparkv vs local (dense), CacheGen (stream-only, int4 codec) "
                   "and cake (same codec and sparse attention) on roofline RTX-laptop and Jetson AGX profiles, "
                   "7-8B and 1B models, 1024-token chunks")
    p.add_argument("--scales", default="", help="absolute bandwidth scales, in addition (e.g. 1)")
    p.add_argument("--policy", action="append", help=f"policies (default: {', '.join(POLICY_ORDER)})")
    p.add_argument("--device", help="device profile (default: cpu-smollm2 if built in, else analytic-cpu-2core)")
    p.add_argument("--model", default="smollm2-135m", help="model spec (default smollm2-135m)")
    p.add_argument("--codec", default="fp16", help="KV codec on the wire, the same for every policy (default fp16)")
    p.add_argument("--attention", default="dense",
                   help="attention of locally computed chunks, the same for every policy: dense or "
                   "block-sparse:tau=0.9,block=64 (default dense)")
    p.add_argument("--chunk-tokens", type=pos_int, default=512, help="tokens per chunk (default 512)")
    p.add_argument("--rtt-ms", type=nonneg_float, help="round trip per transfer, ms (default 30)")
    p.add_argument("--policy-config", "--sparkv-config", dest="policy_config", type=Path,
                   help="the sparkv policy's config file, as `sparkv tune` writes it (--sparkv-config: old name)")
    add_objective_arg(p, repeatable=True, extra=" (default: ttft only, rows sparkv)")
    p.add_argument("--jobs", type=pos_int, default=os.cpu_count() or 1, help="worker processes (default: all cores)")
    p.add_argument("--out", type=Path, default=Path("results/evaluate"), help="output folder")
    p.add_argument("--planner-check", type=nonneg_int, default=0, metavar="N",
                   help="also compare the planner with exhaustive search on N random small instances")
    p.add_argument("--oracle-check", type=nonneg_int, default=0, metavar="N",
                   help="also compare the oracle with the exact optimum (every decision searched) on N random tiny "
                        "requests per shape (3x2, 4x2, 2x3, 3x3 chunks x layers)")
    p.add_argument("--bench-repeats", type=pos_int, default=30, help="timed first plans for the planning benchmark")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    traces = expand_traces(args.trace) if args.trace else default_traces()
    names = args.policy or list(POLICY_ORDER)
    for name in names:
        check_policy(name)  # fail early on an unknown name
    base = Scenario(model=args.model, device=args.device or default_device(), codec=args.codec,
                    chunk_tokens=args.chunk_tokens, attention=parse_attention(args.attention).name)  # fmt: skip
    if args.rtt_ms is not None:
        base = base.with_(rtt_s=args.rtt_ms / 1e3)
    sparkv: dict[str, Any] = {}
    if args.policy_config:
        loaded = load_policy_config(args.policy_config, "sparkv")
        sparkv = loaded.options["config"].to_dict()
    contexts = [int(x) for x in _floats(args.context_tokens or "4096,8192,16384")]
    if any(c <= 0 for c in contexts):
        raise UserError(f"--context-tokens must be positive, got {args.context_tokens}")
    ratios = _floats(args.ratios or "0.5,1,2")
    objectives = list(dict.fromkeys(args.objective or ["ttft"]))
    return EvalConfig(traces, contexts, ratios, _floats(args.scales), names, base.to_dict(), sparkv, objectives)


def run(args: argparse.Namespace) -> int:
    if args.paper:
        return run_paper(args)
    cfg = config_from_args(args)
    n_jobs = len(cfg.traces) * len(cfg.context_tokens) * (len(cfg.ratios) + len(cfg.scales))
    print(f"evaluate: {len(cfg.traces)} traces x {len(cfg.context_tokens)} contexts x "
          f"{len(cfg.ratios) + len(cfg.scales)} scales = {n_jobs} scenarios, {len(cfg.policies)} policies, "
          f"device {cfg.base['device']}, codec {cfg.base['codec']}, attention {cfg.base['attention']}, "
          f"{args.jobs} jobs")  # fmt: skip
    from tqdm import tqdm

    bar = tqdm(total=n_jobs, unit="scenario")

    def progress(done: int, total: int) -> None:
        bar.update(done - bar.n)

    rows = run_evaluation(cfg, jobs=max(1, args.jobs), progress=progress)
    bar.close()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "rows.csv")
    summary = summarise(rows)
    targets = check_targets(summary, rows)
    planning = bench_planning(max(1, args.bench_repeats), device=cfg.base["device"])
    planner_check = None
    if args.planner_check:
        from sparkv.analysis.planner_exact import study

        planner_check = [study(args.planner_check, seed=1, chunks=5, groups=6, monotone=False),
                         study(args.planner_check, seed=2, chunks=8, groups=8, monotone=True)]  # fmt: skip
    oracle_check = None
    if args.oracle_check:
        from sparkv.analysis.oracle_exact import oracle_gap_study

        oracle_check = oracle_gap_study(args.oracle_check, seed=3)
    beaten = oracle_beaten(rows)
    energy = energy_report(rows, cfg)
    report = {"energy": energy, "config": cfg.to_dict(), "sparkv_config": cfg.sparkv or SparKVConfig().to_dict(),
              "summary_in_band": summary, "summary_all": summarise(rows, band_only=False), "targets": targets,
              "planning": planning, "planner_check": planner_check, "oracle_beaten": beaten,
              "oracle_check": oracle_check,
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}  # fmt: skip
    (out / "evaluation.json").write_text(json.dumps(report, indent=1, default=str))
    print_report(summary, targets, planning, planner_check, rows)
    print_oracle_checks(beaten, oracle_check)
    print_energy(energy)
    if not args.no_plots:
        from sparkv.analysis.evaluate_plots import plot_evaluation, plot_pareto

        plot_evaluation(rows, out)
        plot_pareto(energy["pareto"], out / "pareto_ttft_energy.png")
    print(f"wrote {out}/ (rows.csv, evaluation.json{'' if args.no_plots else ', *.png'})")
    return 0


def check_targets(summary: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets on the in-band scenarios (stream-only within 4x of local-only)."""
    by = {s["policy"]: s for s in summary}
    if "sparkv" not in by:
        return {}
    s = by["sparkv"]
    base_energy = [by[b]["energy_med_j"] for b in ("local", "stream", "cake", "static") if b in by]
    energy: dict[tuple[Any, ...], dict[str, float]] = {}
    for r in rows:
        if r.get("in_band") and r["status"] == "ok":
            key = (r["trace_path"], r["context_tokens"], r["scale_kind"], r["scale_target"])
            energy.setdefault(key, {})[r["policy"]] = r["energy_j"]
    wins = [e["sparkv"] <= min(v for k, v in e.items() if k in ("local", "stream", "cake", "static"))
            for e in energy.values() if "sparkv" in e and len(e) > 1]  # fmt: skip
    return {
        "ttft_over_oracle_med": {"value": s["over_oracle"], "target": "<= 1.10", "met": s["over_oracle"] <= 1.10},
        "speedup_best_single_med": {"value": s["speedup_best_single"], "target": ">= 1.8",
                                    "met": s["speedup_best_single"] >= 1.8},
        "speedup_cake_med": {"value": s["speedup_cake"], "target": ">= 1.1", "met": s["speedup_cake"] >= 1.1},
        "energy_med_vs_best_baseline": {"value": s["energy_med_j"], "best_baseline": min(base_energy, default=math.nan),
                                        "met": s["energy_med_j"] <= min(base_energy, default=math.inf),
                                        "scenarios_no_worse": sum(wins) / max(len(wins), 1)},
    }  # fmt: skip


def print_report(summary: list[dict[str, Any]], targets: dict[str, Any], planning: dict[str, Any],
                 planner_check: list[dict[str, Any]] | None, rows: list[dict[str, Any]]) -> None:  # fmt: skip
    n_band = len({(r["trace_path"], r["context_tokens"], r["scale_target"]) for r in rows if r.get("in_band")})
    n_all = len({(r["trace_path"], r["context_tokens"], r["scale_target"]) for r in rows})
    print(f"\nscenarios with stream-only within 4x of local-only: {n_band} of {n_all} (medians over them)")
    print(format_table(summary, SUMMARY))
    for name, t in targets.items():
        extra = {k: v for k, v in t.items() if k not in ("value", "target", "met")}
        print(f"  target {name}: {t['value']:.3f} ({t.get('target', '')}) {'MET' if t['met'] else 'NOT MET'} {extra}")
    print(f"SparKV first plan, 8k tokens x 30 layers ({planning['device']}): median {planning['median_ms']:.1f} ms, "
          f"max {planning['max_ms']:.1f} ms wall; median {planning['median_cpu_ms']:.1f} ms CPU")  # fmt: skip
    for check in planner_check or []:
        print(f"planner vs exact ({check['kind']}, {check['chunks']}x{check['groups']}, {check['exact']} k): "
              f"{check['within_2pct']:.1%} within 2 %, worst {check['worst_ratio']:.4f}, "
              f"{check['instances']} instances")  # fmt: skip


ORACLE_CHECK = [
    ("shape", "chunks x layers", ""), ("complete", "searched", "d"), ("median_ratio", "oracle/exact med", ".4f"),
    ("p90_ratio", "p90", ".4f"), ("worst_ratio", "max", ".4f"), ("within_0_1pct", "within 0.1 %", ".0%"),
    ("gap_with_contention", "gaps, contention", "d"), ("gap_without_contention", "gaps, none", "d"),
    ("oracle_ms_median", "oracle ms med", ".1f"), ("exact_s_median", "exact s med", ".2f"),
]  # fmt: skip


def print_oracle_checks(beaten: dict[str, Any], oracle_check: list[dict[str, Any]] | None) -> None:
    print(f"oracle as a bound: {beaten['beat_0_1pct']} (scenario, policy) pairs below the oracle's TTFT by more than "
          f"0.1 %, {beaten['beat_1pct']} by more than 1 %, of {beaten['scenarios']} scenarios "
          f"(least TTFT / oracle {beaten['least_ratio']:.4f}; by policy {beaten['by_policy_0_1pct']}); fluid bound "
          f"above the oracle in {beaten['bound_above_oracle']}")  # fmt: skip
    if oracle_check:
        print("oracle vs the exact optimum (every decision of a policy without ticks searched, the simulator's "
              "arithmetic), tiny random requests:")  # fmt: skip
        print(format_table(oracle_check, ORACLE_CHECK))


def energy_report(rows: list[dict[str, Any]], cfg: EvalConfig) -> dict[str, Any]:
    """TTFT and energy together: dominance of each sparkv row by a baseline, the energy objective's target,
    and the Pareto front per regime (points with the policy's configuration)."""
    from sparkv.analysis.evaluate import objective_label
    from sparkv.analysis.pareto import dominance, energy_target, pareto_fronts

    labels = [objective_label(o) for o in cfg.objectives] if "sparkv" in cfg.policies else []
    base = cfg.sparkv or SparKVConfig().to_dict()
    configs = {objective_label(o): json.dumps({**base, "objective": o}) for o in cfg.objectives}
    configs.update({n: n for n in cfg.policies if n != "sparkv"})
    return {"energy_kind": "modelled (simulator)", "dominated": [dominance(rows, n) for n in labels],
            "energy_objective": [energy_target(rows, n) for n in labels if n != "sparkv"],
            "pareto": pareto_fronts(rows, configs)}


def print_energy(energy: dict[str, Any]) -> None:
    for d in energy["dominated"]:
        print(f"{d['policy']}: dominated by a baseline (both faster and less energy) in {d['dominated']} of "
              f"{d['scenarios']} scenarios")
    for t in energy["energy_objective"]:
        e, tt = t["energy_over_lowest_baseline"], t["ttft_over_it"]
        print(f"{t['policy']}: energy / lowest-energy baseline's median {e['median']:.3f}, p90 {e['p90']:.3f}, max "
              f"{e['max']:.3f}; TTFT / its median {tt['median']:.3f}, p90 {tt['p90']:.3f}, max {tt['max']:.3f}; "
              f"target met in {t['met']} of {t['scenarios']} (lowest-energy baseline: {t['lowest_energy_baseline']})")
    print("Pareto front per regime (median TTFT and energy / local-only's, modelled energy):")
    print(format_table([p for p in energy["pareto"]], [("regime", "regime", ""), ("policy", "policy", ""),
                       ("ttft_over_local_med", "TTFT/local", ".3f"), ("energy_over_local_med", "energy/local", ".3f"),
                       ("on_front", "on front", "")]))  # fmt: skip
