"""`sparkv decode --policy aerp|h2o`: per-head eviction (Kelle's AERP, H2O) in the simulator, for real
(`--real`), validated (`--validate`), with Kelle's modelled memory energy per generated token, and quality
(`--quality`: the generated tasks; `--ppl`: perplexity on long documents; `--refresh-study`: 2DRP vs uniform
refresh with bit errors injected into the real stored KV)."""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparkv.analysis.kelle_validate import compare_head_runs, fit_head_compute
from sparkv.commands.common import format_table
from sparkv.core.decode import DecodeScenario, DecodeSummary, decode_geometry
from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec, resolve_model_spec
from sparkv.core.result import Result
from sparkv.cost_models.kelle import (
    LLAMA2_7B,
    SOURCES,
    HeadDecodeCompute,
    MemoryConfig,
    RefreshPlan,
    TokenTraffic,
    equal_error_uniform,
    fit_retention,
    kelle_configs,
    paper_workloads,
    token_energy,
    two_drp,
    uniform_refresh,
)
from sparkv.cost_models.profiles import load_profile
from sparkv.policies.decode import HEAD_DECODE_POLICIES, make_decode_policy
from sparkv.policies.decode.kelle import HeadBudget, RecomputeRule
from sparkv.sim.kelle import RecordedAttention, SyntheticAttention, run_kelle_sim

PAPER_ENERGY_RATIO = 4.46  # Kelle+eDRAM vs Original+SRAM, energy efficiency (section 8.1.2)
ALIASES = {"full-kv": "full", "streaming": "streaming-heads"}  # run in the per-head machinery at equal N'


def add_kelle_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head-budget", default="512",
                   help="aerp/h2o: N', tokens kept per KV head and layer; a list (128,512,1024) for --quality/--ppl")
    p.add_argument("--batch", type=int, default=16, help="aerp/h2o energy ledger: sequences per batch (default 16)")
    p.add_argument("--ppl", action="store_true",
                   help="aerp/h2o: perplexity on long documents (--documents), teacher-forced through the policy")
    p.add_argument("--documents", default="/work/shared/datasets/leval/scientific_qa.jsonl",
                   help="JSONL of long documents for --ppl (LEval format; read in place)")
    p.add_argument("--doc-count", type=int, default=2,
                   help="documents per file for --ppl and --quality-documents (default 2)")
    p.add_argument("--ppl-prefix", type=int, default=1024, help="tokens prefilled before scoring (default 1024)")
    p.add_argument("--refresh-study", action="store_true",
                   help="aerp: perplexity under eDRAM bit errors, 2DRP vs uniform refresh (modelled retention)")
    p.add_argument("--error-rates", default="1e-6,1e-5,1e-4,1e-3",
                   help="--refresh-study: uniform failure rates to test besides the refresh plans")  # fmt: skip


def is_head_run(names: list[str]) -> bool:
    return any(n in HEAD_DECODE_POLICIES for n in names)


def budgets(args: argparse.Namespace) -> list[int]:
    try:
        values = [int(v) for v in str(args.head_budget).split(",") if v.strip()]
    except ValueError as exc:
        raise UserError(f"bad --head-budget {args.head_budget!r}: use N' such as 512 or a list 128,512") from exc
    if not values or min(values) < 16:
        raise UserError(f"--head-budget must be >= 16 tokens, got {args.head_budget!r}")
    return values


def head_policy(name: str, budget: int, total_tokens: int) -> HeadBudget:
    """A per-head policy by name at N' = budget; `full` keeps everything (no eviction: the reference)."""
    name = ALIASES.get(name, name)
    if name == "full":
        policy = make_decode_policy("h2o", budget_tokens=max(total_tokens + 2, 2))
        policy.name = "full"
        return policy  # type: ignore[return-value]
    policy = make_decode_policy(name, budget_tokens=budget)
    if not isinstance(policy, HeadBudget):
        raise UserError(f"{name} is not a per-head policy; per-head runs take aerp, h2o, streaming, full-kv")
    return policy


def _scenario(scenario: DecodeScenario) -> DecodeScenario:
    if scenario.group_tokens != 1:
        scenario = scenario.with_(group_tokens=1)
    return scenario.with_(budget_fraction=1.0, budget_bytes=0, select_tokens=0)


def run_kelle(args: argparse.Namespace, scenario: DecodeScenario, names: list[str]) -> int:
    scenario = _scenario(scenario)
    if args.refresh_study:
        return refresh_study(args, scenario)
    if args.ppl:
        return perplexity(args, scenario, names)
    if args.quality:
        return task_quality(args, scenario, names)
    if args.validate:
        return validate_kelle(args, scenario, names)
    if args.real:
        return real_kelle(args, scenario, names)
    return sim_kelle(args, scenario, names)


COLUMNS = [("policy", "policy", ""), ("world", "world", ""), ("budget", "N'", "d"),
           ("step_median_ms", "step median ms", ".2f"), ("step_p90_ms", "p90 ms", ".2f"),
           ("tokens_per_s", "tokens/s", ".2f"), ("held_mb", "kept KV+x MB", ".3f"),
           ("kv_read_mb", "KV read MB/step", ".3f"), ("x_tokens", "x tokens", "d"), ("evictions", "evictions", "d")]
ENERGY_COLUMNS = [("policy", "policy", ""), ("config", "memory (modelled)", ""),
                  ("onchip_mj", "on-chip mJ/token", ".4f"),
                  ("read_mj", "read", ".4f"), ("write_mj", "write", ".4f"), ("leak_mj", "leakage", ".4f"),
                  ("refresh_mj", "refresh", ".4f"), ("dram_mj", "DRAM mJ/token", ".4f"),
                  ("total_mj", "total mJ/token", ".4f"), ("token_us", "us/token", ".1f"),
                  ("onchip", "on-chip share", ".2f"), ("vs", "x vs Original+SRAM", ".2f")]  # fmt: skip


def _row(result: Result) -> dict[str, Any]:
    d = DecodeSummary.from_dict(result.decode or {})
    t, st = d.totals(), d.policy_stats
    kv = st["kv_read_bytes_by_step"][1:] or st["kv_read_bytes_by_step"]
    return {"policy": result.policy, "world": result.world, "budget": int(st["budget_tokens_per_head"]),
            "step_median_ms": t["step_median_s"] * 1e3, "step_p90_ms": t["step_p90_s"] * 1e3,
            "tokens_per_s": t["tokens_per_s"], "held_mb": st["held_bytes_mean"] / 1e6,
            "kv_read_mb": statistics.mean(kv) / 1e6 if kv else 0.0, "x_tokens": int(st["x_tokens_end"]),
            "evictions": int(st["evictions"])}  # fmt: skip


def energy_rows(spec: ModelSpec, results: list[Result], batch: int, context_tokens: int) -> list[dict[str, Any]]:
    """Modelled energy per generated token of each run's traffic in each memory configuration, beside the
    Original+SRAM baseline (the full cache of the same context, SRAM)."""
    base_traffic = TokenTraffic.full_cache(spec, context_tokens)
    configs = kelle_configs()
    base = token_energy(spec, base_traffic, configs[0], batch)
    rows = [_energy_row("original (full KV)", base, base.total_j)]
    rows += [_energy_row("original (full KV)", token_energy(spec, base_traffic, c, batch), base.total_j)
             for c in configs[1:]]  # fmt: skip
    for r in results:
        stats = (r.decode or {}).get("policy_stats", {})
        traffic = TokenTraffic.from_stats(stats, f"{r.world} {r.policy} run")
        rows += [_energy_row(r.policy, token_energy(spec, traffic, c, batch), base.total_j) for c in configs]
    return rows


def _energy_row(policy: str, e: Any, base_j: float) -> dict[str, Any]:
    chip, dram = e.lines
    return {"policy": policy, "config": e.config, "onchip_mj": chip.total_j * 1e3, "read_mj": chip.read_j * 1e3,
            "write_mj": chip.write_j * 1e3, "leak_mj": chip.leakage_j * 1e3, "refresh_mj": chip.refresh_j * 1e3,
            "dram_mj": dram.total_j * 1e3, "total_mj": e.total_j * 1e3, "token_us": e.token_s * 1e6,
            "onchip": e.onchip_fraction, "vs": base_j / e.total_j if e.total_j else 0.0,
            "modelled": True, "bound": e.bound}  # fmt: skip


def print_energy(spec: ModelSpec, results: list[Result], batch: int, context_tokens: int) -> dict[str, Any]:
    rows = energy_rows(spec, results, batch, context_tokens)
    print(f"modelled energy per generated token (Kelle memories, 4 MB on-chip KV tier, LPDDR4; batch {batch}; "
          f"weights INT8 from DRAM); paper: Kelle+eDRAM {PAPER_ENERGY_RATIO}x more energy-efficient than "
          "Original+SRAM (LLaMA2-7B, its own workloads)")  # fmt: skip
    print(format_table(rows, ENERGY_COLUMNS))
    work = paper_workloads(spec, batch)
    paper = paper_workloads(LLAMA2_7B, batch)
    for name, table in ((spec.name, work), (LLAMA2_7B.name, paper)):
        print(f"modelled, Kelle's workloads on {name}'s dimensions (full cache at its mean length vs AERP at N', "
              "no recompute):")
        _workload_table(table)
    geo = float(np.exp(np.mean([np.log(r["ratio"]) for r in work])))
    geo_paper = float(np.exp(np.mean([np.log(r["ratio"]) for r in paper])))
    print(f"geometric mean {geo:.2f}x ({spec.name}), {geo_paper:.2f}x ({LLAMA2_7B.name}); sources: "
          + "; ".join(f"{k}: {v}" for k, v in SOURCES.items()))  # fmt: skip
    return {"rows": rows, "paper_workloads": work, "geomean_ratio": geo, "llama2_7b_workloads": paper,
            "llama2_7b_geomean_ratio": geo_paper, "modelled": True}  # fmt: skip


def _workload_table(work: list[dict[str, Any]]) -> None:
    print(format_table(work, [("task", "workload", ""), ("context", "context", "d"), ("decoded", "decoded", "d"),
                              ("budget", "N'", "d"), ("original_sram_mj", "Original+SRAM mJ/token", ".3f"),
                              ("aerp_sram_mj", "AERP+SRAM", ".3f"), ("kelle_mj", "AERP+eDRAM+2DRP", ".3f"),
                              ("ratio", "x (paper 4.46 on average)", ".2f")]))  # fmt: skip


def _spec_dims(spec: ModelSpec) -> str:
    return RecomputeRule(spec.hidden_size, spec.num_kv_heads, spec.head_dim).describe()


def sim_kelle(args: argparse.Namespace, scenario: DecodeScenario, names: list[str]) -> int:
    """Simulated: synthetic attention (modelled), compute derived from the device profile."""
    spec = resolve_model_spec(scenario.model)
    geo = decode_geometry(spec, scenario)
    total = scenario.context_tokens + scenario.steps
    attention = SyntheticAttention(spec.num_layers, spec.num_kv_heads, total + 1, seed=scenario.seed)
    prefill = attention.prefill(scenario.context_tokens, spec)
    compute = _derived_compute(scenario, spec)
    results = []
    for budget in budgets(args):
        for name in names:
            policy = head_policy(name, budget, total)
            result, _ = run_kelle_sim(scenario, spec, geo, prefill, attention, compute, policy)
            results.append(result)
    print(f"decode (per head, simulated): {spec.name}, {scenario.context_tokens} context tokens, {scenario.steps} "
          f"steps, attention {attention.source}, compute {compute.kind} ({compute.source})")  # fmt: skip
    print(_spec_dims(spec))
    print(format_table([_row(r) for r in results], COLUMNS))
    energy = print_energy(spec, results, args.batch, scenario.context_tokens)
    _write(args.out, results, {"energy": energy})
    return 0


def _derived_compute(scenario: DecodeScenario, spec: ModelSpec) -> HeadDecodeCompute:
    from sparkv.cost_models.decode_compute import derive_decode_compute

    profile = load_profile(scenario.device)
    dc = derive_decode_compute(profile.compute, spec, scenario.rank, profile.name)
    return HeadDecodeCompute.derive(dc.layer_fixed_s, dc.per_attended_token_s, dc.step_fixed_s, spec, dc.source)


def _write(out: Path | None, results: list[Result], extra: dict[str, Any]) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        budget = (r.decode or {}).get("policy_stats", {}).get("budget_tokens_per_head", 0)
        r.save(out / f"decode-{r.world}-{r.policy}-n{budget}.json")
    (out / "decode-kelle.json").write_text(json.dumps({"rows": [_row(r) for r in results], **extra}, indent=1))
    print(f"wrote {out}/")


def _setup(args: argparse.Namespace, scenario: DecodeScenario) -> Any:
    from sparkv.commands.decode_real import _loaded, _tokens
    from sparkv.executor.model.kelle_run import prepare_kelle

    loaded = _loaded(args.hf_model)
    torch.set_num_threads(args.threads)
    ids = _tokens(loaded, scenario.context_tokens, scenario.seed)
    setup = prepare_kelle(loaded, ids, scenario, args.kv_dir)
    how = (f"prefill read from {setup.path}" if setup.reused
           else f"prefilled with explicit attention, saved to {setup.path}")  # fmt: skip
    print(f"real per-head decode: {loaded.model_id}, {scenario.context_tokens} tokens {how} ({setup.build_s:.1f} s)")
    print(_spec_dims(loaded.spec))
    return setup


def real_kelle(args: argparse.Namespace, scenario: DecodeScenario, names: list[str]) -> int:
    from sparkv.executor.model.kelle_run import run_kelle_real

    setup = _setup(args, scenario)
    total = scenario.context_tokens + scenario.steps
    results = [run_kelle_real(setup, head_policy(n, b, total)).result for b in budgets(args) for n in names]
    print(format_table([_row(r) for r in results], COLUMNS))
    print("real: every time measured on this CPU; kept KV in memory, nothing read from disk")
    energy = print_energy(setup.loaded.spec, results, args.batch, scenario.context_tokens)
    _write(args.out, results, {"energy": energy})
    return 0


VALIDATE_COLUMNS = [("policy", "policy", ""), ("real_median_ms", "real median ms", ".2f"),
                    ("sim_median_ms", "sim median ms", ".2f"), ("median_err", "median err", ".3f"),
                    ("real_p90_ms", "real p90 ms", ".2f"), ("sim_p90_ms", "sim p90 ms", ".2f"),
                    ("p90_err", "p90 err", ".3f"), ("bytes_match", "bytes equal", ""),
                    ("evictions_match", "evictions equal", "")]  # fmt: skip


def validate_kelle(args: argparse.Namespace, scenario: DecodeScenario, names: list[str]) -> int:
    """Warm-up, calibration runs (each policy at N' and 3/4 N'), then real runs and their replays. With
    `--calibrate per-policy` each policy is calibrated right before its own measured run (less drift)."""
    from sparkv.executor.model.kelle_run import run_kelle_real

    setup = _setup(args, scenario)
    total = scenario.context_tokens + scenario.steps
    budget = budgets(args)[0]
    calib = scenario.with_(steps=max(3, min(args.calib_steps, scenario.steps)))
    cal_setup = type(setup)(**{**setup.__dict__, "scenario": calib})
    kv_heads = setup.loaded.spec.num_kv_heads
    run_kelle_real(cal_setup, head_policy(names[0], budget, total))  # warm-up, discarded

    def calibrate(which: list[str]) -> HeadDecodeCompute:
        engines = [run_kelle_real(cal_setup, head_policy(n, b, total), log=True).engine
                   for n in which for b in (budget, max(24, budget * 3 // 4))]  # fmt: skip
        fit = fit_head_compute(engines, kv_heads)
        print(f"per-head compute fitted on {len(engines)} calibration runs ({', '.join(which)}) of {calib.steps} "
              f"steps: {json.dumps({k: v for k, v in fit.to_dict().items() if k.endswith('_s')})}")  # fmt: skip
        return fit

    per_policy = getattr(args, "calibrate", "joint") == "per-policy"
    joint = None if per_policy else calibrate(names)
    reals, sims, rows, fits = [], [], [], {}
    for name in names:
        fit = calibrate([name]) if joint is None else joint
        fits[name] = fit.to_dict()
        run = run_kelle_real(setup, head_policy(name, budget, total))
        sim, _ = run_kelle_sim(scenario, setup.loaded.spec, setup.geometry, setup.prefill,
                               RecordedAttention(run.attention, f"recorded: real {name} run"), fit,
                               head_policy(name, budget, total))  # fmt: skip
        reals.append(run.result)
        sims.append(sim)
        rows.append(compare_head_runs(run.result, sim))
    print(format_table([_row(r) for r in reals + sims], COLUMNS))
    print(format_table(rows, VALIDATE_COLUMNS))
    print("median/p90 err: |sim - real| / real of the step-time median and p90; bytes equal: every step's KV read, "
          "x read, written, held bytes and recomputed tokens identical; the sim replays real attention")  # fmt: skip
    _write(args.out, reals + sims, {"validation": rows, "compute": fits, "calibrate": args.calibrate})
    return 0


# ---- quality ----


def _doc_tokens(loaded: Any, path: str, count: int, need: int) -> list[tuple[int, torch.Tensor]]:
    """The first `count` documents of a JSONL file with at least `need` tokens (read in place)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for index, line in enumerate(fh):
            if not line.strip():
                continue
            ids = loaded.encode(json.loads(line)["input"], max_tokens=need)
            if int(ids.shape[0]) >= need:
                out.append((index, ids))
            if len(out) >= count:
                break
    if not out:
        raise UserError(f"no document in {path} has {need} tokens")
    return out


def perplexity(args: argparse.Namespace, scenario: DecodeScenario, names: list[str],
               errors: dict[str, Any] | None = None) -> int:  # fmt: skip
    """Teacher-forced perplexity of the tokens after a prefix, per policy and N' (and refresh plan)."""
    from sparkv.commands.decode_real import _loaded
    from sparkv.executor.model.kelle_run import prepare_kelle, run_kelle_real

    loaded = _loaded(args.hf_model)
    torch.set_num_threads(args.threads)
    prefix, steps = args.ppl_prefix, scenario.steps
    sc = scenario.with_(context_tokens=prefix)
    docs = _doc_tokens(loaded, args.documents, args.doc_count, prefix + steps + 1)
    rows: list[dict[str, Any]] = []
    for index, ids in docs:
        setup = prepare_kelle(loaded, ids[:prefix], sc, args.kv_dir)
        teacher = ids[prefix : prefix + steps + 1].tolist()
        for budget in budgets(args):
            for name in ["full", *[n for n in names if ALIASES.get(n, n) != "full"]]:
                if name == "full" and budget != budgets(args)[0]:
                    continue
                run = run_kelle_real(setup, head_policy(name, budget, prefix + steps), teacher=teacher)
                ppl = float(np.exp(np.mean(run.nll)))
                rows.append({"doc": index, "policy": ALIASES.get(name, name), "budget": budget if name != "full" else 0,
                             "ppl": ppl, "tokens": len(run.nll)})  # fmt: skip
                print(f"  doc {index}: {rows[-1]['policy']} N'={budget} ppl {ppl:.3f}", flush=True)
    summary = _ppl_summary(rows)
    print(f"perplexity: {loaded.model_id}, {len(docs)} documents of {args.documents}, prefix {prefix} tokens "
          f"prefilled, next {steps} tokens teacher-forced through each policy")  # fmt: skip
    print(format_table(summary, [("policy", "policy", ""), ("budget", "N'", "d"), ("ppl", "mean perplexity", ".3f"),
                                 ("rise", "rise vs full", "+.3f"), ("n", "documents", "d")]))  # fmt: skip
    _dump(args.out, "decode-kelle-ppl.json", {"scenario": sc.to_dict(), "documents": args.documents, "rows": rows,
                                             "summary": summary})  # fmt: skip
    return 0


def _ppl_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    full = {r["doc"]: r["ppl"] for r in rows if r["policy"] == "full"}
    keys = sorted({(r["policy"], r["budget"]) for r in rows}, key=lambda k: (k[1], k[0]))
    out = []
    for policy, budget in keys:
        sel = [r for r in rows if r["policy"] == policy and r["budget"] == budget]
        ppl = statistics.mean(r["ppl"] for r in sel)
        rise = statistics.mean(r["ppl"] - full[r["doc"]] for r in sel if r["doc"] in full)
        out.append({"policy": policy, "budget": budget, "ppl": ppl, "rise": rise, "n": len(sel)})
    return out


def _dump(out: Path | None, name: str, data: dict[str, Any]) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(data, indent=1))
    print(f"wrote {out / name}")


def task_quality(args: argparse.Namespace, scenario: DecodeScenario, names: list[str]) -> int:
    """The generated tasks (niah, multikey, vt) answered greedily under each per-head policy and N'."""
    from sparkv.analysis.decode_tasks import TASKS, make_tasks
    from sparkv.analysis.needle_kept import after_prefill, answer_tokens, kept_share, needle_rank
    from sparkv.commands.decode_quality import ANSWER_STEPS, _prompt_ids
    from sparkv.executor.model.kelle_run import prepare_kelle, run_kelle_real
    from sparkv.executor.model.models import load_model

    kinds = [k.strip() for k in args.tasks.split(",") if k.strip()]
    if any(k not in TASKS for k in kinds):
        raise UserError(f"unknown task kinds in {args.tasks!r}; choose from {', '.join(TASKS)}")
    lengths = [int(v) for v in args.lengths.split(",")]
    depths = [float(v) for v in args.depths.split(",")]
    loaded = load_model(args.hf_model)
    torch.set_num_threads(args.threads)
    policies = ["full", *[ALIASES.get(n, n) for n in names if ALIASES.get(n, n) != "full"]]
    rows: list[dict[str, Any]] = []
    for length in lengths:
        for task in make_tasks(kinds, length, depths, args.instances):
            ids = _prompt_ids(loaded, task, length)
            sc = scenario.with_(context_tokens=int(ids.shape[0]), steps=ANSWER_STEPS, seed=task.seed)
            setup = prepare_kelle(loaded, ids, sc, args.kv_dir)
            needle = answer_tokens([loaded.tokenizer.decode([t]) for t in ids.tolist()], task.answer)
            answers: dict[str, float] = {}
            for budget in budgets(args):
                row: dict[str, Any] = {"kind": task.kind, "length": length, "depth": task.depth, "budget": budget,
                                       "needle_tokens": int(needle.size),
                                       "needle_rank": needle_rank(setup.prefill, needle)}  # fmt: skip
                for name in policies:
                    if name == "full" and "full" in answers:  # no eviction: the same at every N'
                        row[name] = answers["full"]
                        continue
                    policy = head_policy(name, budget, sc.context_tokens + sc.steps)
                    run = run_kelle_real(setup, policy)
                    text = loaded.tokenizer.decode(run.tokens, skip_special_tokens=True)
                    row[name] = answers[name] = float(task.answer in text)
                    row[f"{name}_text"] = text.strip()[:40]
                    if name != "full":
                        fresh = head_policy(name, budget, sc.context_tokens + sc.steps)
                        start = after_prefill(fresh, setup.geometry, setup.prefill)
                        end = [policy.head_state(layer) for layer in range(setup.geometry.num_layers)]
                        row[f"{name}_kept_prefill"] = kept_share(start, needle)["mean"]
                        row[f"{name}_kept_end"] = kept_share(end, needle)["mean"]
                rows.append(row)
                print(f"  {task.kind} {length} depth {task.depth} N'={budget}: "
                      + ", ".join(f"{n} {'ok' if row[n] else 'wrong'}" for n in policies)
                      + "; answer tokens kept after the prefill (mean over layers and heads): "
                      + ", ".join(f"{n} {row[f'{n}_kept_prefill']:.2f}" for n in policies if n != "full")
                      + f"; needle's prefill-attention quantile {row['needle_rank']:.2f}", flush=True)  # fmt: skip
    summary = []
    for budget in budgets(args):
        for kind in kinds:
            sel = [r for r in rows if r["budget"] == budget and r["kind"] == kind]
            if sel:
                summary.append({"kind": kind, "budget": budget, "n": len(sel),
                                **{n: 100.0 * sum(r[n] for r in sel) / len(sel) for n in policies}})  # fmt: skip
    cols = [("kind", "task", ""), ("budget", "N'", "d"), ("n", "n", "d")] + [(n, f"{n} %", ".0f") for n in policies]
    print(format_table(summary, cols))
    kept = []
    for budget in budgets(args):
        sel = [r for r in rows if r["budget"] == budget and r["needle_tokens"]]
        if sel:
            kept.append({"budget": budget, "rank": statistics.mean(r["needle_rank"] for r in sel),
                         **{n: statistics.mean(r[f"{n}_kept_prefill"] for r in sel) for n in policies if n != "full"},
                         **{f"{n}_end": statistics.mean(r[f"{n}_kept_end"] for r in sel)
                            for n in policies if n != "full"}})  # fmt: skip
    if kept:
        print("share of the answer's tokens each (layer, KV head) keeps, mean over heads and tasks: after the "
              "prefill's eviction / at the end of the answer; quantile: the needle's accumulated prefill attention "
              "among all prompt tokens")  # fmt: skip
        print(format_table(kept, [("budget", "N'", "d"), ("rank", "needle quantile", ".2f")]
                           + [(n, f"{n} after prefill", ".2f") for n in policies if n != "full"]
                           + [(f"{n}_end", f"{n} at end", ".2f") for n in policies if n != "full"]))  # fmt: skip
    _dump(args.out, "decode-kelle-quality.json", {"scenario": scenario.to_dict(), "rows": rows, "summary": summary,
                                                 "needle_kept": kept})
    return 0


def refresh_study(args: argparse.Namespace, scenario: DecodeScenario) -> int:
    """AERP perplexity with retention failures injected (modelled eDRAM): no errors, 2DRP, uniform refresh at
    2DRP's mean failure rate and at its refresh work, and uniform failure rates from --error-rates."""
    from sparkv.commands.decode_real import _loaded
    from sparkv.executor.model.kelle_run import BitErrors, prepare_kelle, run_kelle_real

    loaded = _loaded(args.hf_model)
    torch.set_num_threads(args.threads)
    spec = loaded.spec
    retention = fit_retention()
    drp = two_drp()
    plans: list[RefreshPlan] = [drp, equal_error_uniform(drp, retention), uniform_refresh(drp.mean_interval_s())]
    plans += [uniform_refresh(retention.interval_for(float(r))) for r in args.error_rates.split(",") if r.strip()]
    budget = budgets(args)[0]
    prefix, steps = args.ppl_prefix, scenario.steps
    sc = scenario.with_(context_tokens=prefix)
    docs = _doc_tokens(loaded, args.documents, args.doc_count, prefix + steps + 1)
    geo_traffic = TokenTraffic(0, 0, 0, 0, 0)
    edram = MemoryConfig("eDRAM", kelle_configs()[1].onchip)
    rows: list[dict[str, Any]] = []
    for index, ids in docs:
        setup = prepare_kelle(loaded, ids[:prefix], sc, args.kv_dir)
        teacher = ids[prefix : prefix + steps + 1].tolist()
        clean = run_kelle_real(setup, head_policy("aerp", budget, prefix + steps), teacher=teacher)
        traffic = TokenTraffic.from_stats((clean.result.decode or {})["policy_stats"], "aerp clean run")
        geo_traffic = traffic
        step_s = token_energy(spec, traffic, edram, args.batch).token_s * args.batch  # modelled batch step
        base = float(np.exp(np.mean(clean.nll)))
        rows.append({"doc": index, "refresh": "none (error-free)", "ppl": base, "rise": 0.0, "failure_rate": 0.0,
                     "mean_failure": 0.0, "bit_error_rate": 0.0, "interval_s": 0.0, "refresh_mw": 0.0})  # fmt: skip
        for plan in plans:
            errors = BitErrors(retention, plan, step_s, seed=index)
            run = run_kelle_real(setup, head_policy("aerp", budget, prefix + steps), errors=errors, teacher=teacher)
            ppl = float(np.exp(np.mean(run.nll)))
            e = token_energy(spec, traffic, MemoryConfig(plan.name, edram.onchip, plan), args.batch)
            rows.append({"doc": index, "refresh": plan.name, "ppl": ppl, "rise": ppl - base,
                         "failure_rate": errors.stats()["failure_rate"], "mean_failure": plan.mean_failure(retention),
                         "bit_error_rate": errors.stats()["bit_error_rate"], "interval_s": plan.mean_interval_s(),
                         "refresh_mw": e.lines[0].refresh_j / e.token_s * 1e3 if e.token_s else 0.0,
                         "refresh_mj": e.lines[0].refresh_j * 1e3})  # fmt: skip
            print(f"  doc {index}: {plan.name}: ppl {ppl:.3f} ({ppl - base:+.3f}), cells failed "
                  f"{errors.stats()['failure_rate']:.2e}", flush=True)  # fmt: skip
    summary = []
    for name in dict.fromkeys(r["refresh"] for r in rows):
        sel = [r for r in rows if r["refresh"] == name]
        summary.append({"refresh": name, "ppl": statistics.mean(r["ppl"] for r in sel),
                        "rise": statistics.mean(r["rise"] for r in sel),
                        "mean_failure": sel[0]["mean_failure"],
                        "measured_failure": statistics.mean(r["failure_rate"] for r in sel),
                        "bit_error_rate": statistics.mean(r["bit_error_rate"] for r in sel),
                        "interval_s": sel[0]["interval_s"],
                        "refresh_mj": statistics.mean(r.get("refresh_mj", 0.0) for r in sel)})  # fmt: skip
    print(f"refresh study (modelled eDRAM, Weibull retention tau {retention.tau_s * 1e3:.2f} ms beta "
          f"{retention.beta:.2f}): {loaded.model_id}, AERP N'={budget}, {len(docs)} documents, prefix {prefix}, "
          f"{steps} scored tokens; modelled step {step_s * 1e3:.3f} ms (batch {args.batch})")  # fmt: skip
    print(format_table(summary, [("refresh", "refresh (modelled)", ""), ("mean_failure", "model failure rate", ".2e"),
                                 ("measured_failure", "injected cell failure rate", ".2e"),
                                 ("bit_error_rate", "bit-error rate (flipped)", ".2e"),
                                 ("ppl", "perplexity", ".3f"), ("rise", "rise", "+.4f"),
                                 ("refresh_mj", "refresh mJ/token", ".5f")]))  # fmt: skip
    verdict = refresh_verdict(summary, drp.name, equal_error_uniform(drp, retention).name)
    for line in verdict["lines"]:
        print(line)
    _dump(args.out, "decode-kelle-refresh.json",
          {"scenario": sc.to_dict(), "retention": retention.to_dict(), "plans": [p.describe(retention) for p in plans],
           "traffic": geo_traffic.__dict__, "rows": rows, "summary": summary, "verdict": verdict,
           "modelled": True})  # fmt: skip
    return 0


QUALITY_TOLERANCE = 0.1  # perplexity: the "rise < 0.1"; differences below it are eviction noise here


def refresh_verdict(summary: list[dict[str, Any]], drp_name: str, equal_name: str) -> dict[str, Any]:
    """2DRP against uniform refresh: at equal mean failure rate (quality and refresh energy), and at equal
    quality: the longest uniform interval that, with every shorter one measured, keeps the perplexity rise
    within QUALITY_TOLERANCE of 2DRP's (or of none, if 2DRP's is below 0), so one lucky run does not count."""
    by = {r["refresh"]: r for r in summary}
    drp, same = by[drp_name], by[equal_name]
    uniform = sorted((r for r in summary if r["refresh"].startswith("uniform")), key=lambda r: r["interval_s"])
    limit = max(drp["rise"], 0.0) + QUALITY_TOLERANCE
    best = None
    for r in uniform:
        if r["rise"] > limit:
            break
        best = r
    lines = [f"equal mean failure rate ({drp['mean_failure']:.1e}): 2DRP rise {drp['rise']:+.3f} vs uniform "
             f"{same['rise']:+.3f}; refresh {drp['refresh_mj']:.4f} vs {same['refresh_mj']:.4f} mJ/token "
             f"(2DRP x{drp['refresh_mj'] / same['refresh_mj']:.2f}; uniform is the least refresh work at a given mean "
             "rate, see cost_models.kelle.equal_error_uniform)"]  # fmt: skip
    if best is not None:
        lines.append(f"equal quality (rise <= {limit:+.3f}): the longest uniform interval measured is "
                     f"{best['interval_s'] * 1e3:.3f} ms (rise {best['rise']:+.3f}), refresh {best['refresh_mj']:.4f} "
                     f"mJ/token: 2DRP x{drp['refresh_mj'] / best['refresh_mj']:.2f} of it")  # fmt: skip
    else:
        lines.append(f"equal quality: no uniform interval measured kept the rise <= {limit:+.3f}")
    return {"lines": lines, "equal_error": {"2drp": drp, "uniform": same},
            "equal_quality_uniform": best}  # fmt: skip
