"""`sparkv decode --whatif-table`: every decode policy x memory budget x storage profile in the simulator, one
table of tokens/s, modelled energy per generated token and accuracy (from `--quality FILE`, or a small real
measurement with `--measure-quality`, else "not measured"); JSON, CSV and a figure with `--out DIR`."""

from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path
from typing import Any

from sparkv.analysis.decode_whatif_table import (
    ENERGY_MODEL,
    HEAD_POLICIES,
    OK,
    Cell,
    attach_accuracy,
    budget_label,
    finish_energy,
    head_budget_tokens,
    load_quality,
    pivot_rows,
    plot_whatif,
    refused_cell,
    run_cell,
    write_outputs,
)
from sparkv.commands.common import format_table
from sparkv.commands.decode_hillinfer import build_policy, sim_options
from sparkv.commands.decode_kelle import _derived_compute, _scenario, head_policy
from sparkv.core.decode import DecodeScenario, decode_geometry
from sparkv.core.errors import UserError
from sparkv.core.model import resolve_model_spec
from sparkv.core.result import Result
from sparkv.cost_models.profiles import load_profile
from sparkv.cost_models.storage import StorageProfile, builtin_storage_names, load_storage
from sparkv.policies.decode import DECODE_POLICIES, HEAD_DECODE_POLICIES
from sparkv.sim.decode import build_decode_world, simulate_decode
from sparkv.sim.kelle import SyntheticAttention, run_kelle_sim

WHATIF_POLICIES = ("full-kv", "full-reload", "streaming", "h2o", "aerp", "kvswap", "hillinfer")
WHATIF_BUDGETS = "1/4,1/8,1/16"
WHATIF_STORAGE = ("jetson-orin-nvme", "phone-ufs31", "jetson-orin-emmc", "this-vm")  # this-vm: where present
WHATIF_DEVICE = "jetson-orin-nano-15w"  # an embedded SoC for SmolLM2-class models (roofline profile, modelled)


def add_whatif_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--whatif-table", action="store_true",
                   help="simulated what-if table: policies x budgets x storage profiles; tokens/s, modelled J/token, "
                        f"accuracy (device default {WHATIF_DEVICE})")
    p.add_argument("--whatif-budgets", default=WHATIF_BUDGETS,
                   help=f"--whatif-table: KV budgets as fractions of the KV (default {WHATIF_BUDGETS})")
    p.add_argument("--whatif-storage",
                   help="--whatif-table: storage profiles, comma-separated (default NVMe, UFS 3.1, eMMC and this-vm "
                        "where present)")
    p.add_argument("--measure-quality", action="store_true",
                   help="--whatif-table: also measure accuracy on the real model (a few minutes on 2 cores)")


def parse_fractions(text: str) -> list[float]:
    """'1/4,1/8' or '0.25,0.125' -> fractions in (0, 1]."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            value = float(Fraction(part))
        except (ValueError, ZeroDivisionError) as exc:
            raise UserError(f"bad --whatif-budgets entry {part!r}: use fractions of the KV such as 1/8") from exc
        if not 0.0 < value <= 1.0:
            raise UserError(f"--whatif-budgets entry {part!r} is not a fraction in (0, 1]")
        out.append(value)
    if not out:
        raise UserError("--whatif-budgets is empty")
    return out


def default_storages() -> list[str]:
    present = set(builtin_storage_names())
    return [s for s in WHATIF_STORAGE if s in present]


def whatif_config(args: argparse.Namespace, scenario: DecodeScenario) -> dict[str, Any]:
    """The table's settings (what reproduces it): the scenario, policies, budgets, storage profiles."""
    if getattr(args, "budget", None):
        raise UserError("--whatif-table takes its budgets from --whatif-budgets (fractions), not --budget")
    if getattr(args, "storage", None):
        raise UserError("--whatif-table takes its storage profiles from --whatif-storage, not --storage")
    policies = list(args.policy or WHATIF_POLICIES)
    known = [*DECODE_POLICIES, *HEAD_POLICIES]
    bad = [p for p in policies if p not in known]
    if bad:
        raise UserError(f"--whatif-table policies {bad} unknown; choose from {', '.join(known)}")
    storages = [s.strip() for s in args.whatif_storage.split(",") if s.strip()] if args.whatif_storage else (
        default_storages())  # fmt: skip
    scenario = scenario.with_(device=args.device or WHATIF_DEVICE)
    if getattr(args, "select_tokens", None) is None:  # every policy uses all of its budget (M = what fits)
        scenario = scenario.with_(select_tokens=0)
    kinds = {s: load_storage(s).kind for s in storages}  # measured or analytic: named in the table
    return {"scenario": scenario.to_dict(), "policies": policies, "budget_fractions": parse_fractions(
        args.whatif_budgets), "storages": storages, "storage_kinds": kinds, "hill_bits": args.hill_bits,
        "world": "sim"}  # fmt: skip


def simulate_cells(config: dict[str, Any]) -> tuple[list[Cell], Cell | None, list[Result]]:
    """Every cell of the table from its simulated run (full-kv over budget is refused, not run), and full-kv with
    the whole KV in memory as the reference (None when full-kv is not among the policies)."""
    base = DecodeScenario.from_dict(config["scenario"])
    spec = resolve_model_spec(base.model)
    power = load_profile(base.device).power
    storages: list[StorageProfile] = [load_storage(s) for s in config["storages"]]
    cells: list[Cell] = []
    results: list[Result] = []
    head = [p for p in config["policies"] if p in HEAD_DECODE_POLICIES]
    heads: dict[tuple[str, float], Result] = {}
    if head:
        heads = _head_runs(base, spec, head, config["budget_fractions"])
        results += list(heads.values())
    for frac in config["budget_fractions"]:
        for storage in storages:
            sc = base.with_(budget_fraction=frac, budget_bytes=0, storage=storage.name)
            world = build_decode_world(sc, storage=storage, spec=spec)
            kv, budget = world.geometry.kv_bytes, world.geometry.budget_bytes
            for name in config["policies"]:
                if name in HEAD_DECODE_POLICIES:
                    cells.append(run_cell(heads[(name, frac)], frac, storage, power, kv, budget))
                    continue
                if name == "full-kv" and kv > budget:
                    cells.append(refused_cell(name, frac, storage.name, kv, budget))
                    continue
                result = simulate_decode(world, build_policy(name, sim_options(world, config["hill_bits"])),
                                         record=False)  # fmt: skip
                results.append(result)
                cells.append(run_cell(result, frac, storage, power, kv, budget))
    reference = None
    if "full-kv" in config["policies"]:  # reads nothing: the same on every storage
        world = build_decode_world(base.with_(budget_fraction=1.0, budget_bytes=0, storage=storages[0].name),
                                   storage=storages[0], spec=spec)  # fmt: skip
        result = simulate_decode(world, build_policy("full-kv", None), record=False)
        results.append(result)
        kv = world.geometry.kv_bytes
        reference = run_cell(result, 1.0, storages[0], power, kv, world.geometry.budget_bytes)
        reference.status, reference.budget_bytes = OK, reference.memory_bytes  # no budget: all it holds
        reference.storage, reference.uses_storage, reference.note = "any", False, "whole KV in memory, no disk reads"
    finish_energy([*cells, *([reference] if reference else [])])
    return cells, reference, results


def _head_runs(base: DecodeScenario, spec: Any, names: list[str],
               fracs: list[float]) -> dict[tuple[str, float], Result]:  # fmt: skip
    """Per-head policies (aerp, h2o) in their own simulated world, once per budget: no storage involved."""
    sc = _scenario(base)
    geo = decode_geometry(spec, sc)
    total = sc.context_tokens + sc.steps
    attention = SyntheticAttention(spec.num_layers, spec.num_kv_heads, total + 1, seed=sc.seed)
    prefill = attention.prefill(sc.context_tokens, spec)
    compute = _derived_compute(sc, spec)
    out = {}
    for frac in fracs:
        for name in names:
            policy = head_policy(name, head_budget_tokens(frac, sc.context_tokens), total)
            out[(name, frac)] = run_kelle_sim(sc, spec, geo, prefill, attention, compute, policy)[0]
    return out


def run_whatif_table(args: argparse.Namespace, scenario: DecodeScenario) -> int:
    config = whatif_config(args, scenario)
    quality_files = _quality_paths(args)  # a missing file fails before any work
    cells, reference, _ = simulate_cells(config)
    if args.measure_quality:
        from sparkv.commands.decode_whatif_quality import measure_quality

        quality_files.append(measure_quality(args, config))
    config["quality_files"] = [str(p) for p in quality_files]
    if quality_files:
        attach_accuracy(cells, load_quality(quality_files))
    print_table(cells, reference, config)
    if args.out:
        paths = write_outputs(cells, config, args.out, reference)
        paths.append(plot_whatif(cells, config["storages"], args.out / "decode-whatif.png",
                                 config.get("storage_kinds")))  # fmt: skip
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def _quality_paths(args: argparse.Namespace) -> list[Path]:
    value = getattr(args, "quality", None)
    if not isinstance(value, str):
        return []
    paths = [Path(v.strip()) for v in value.split(",") if v.strip()]
    for p in paths:
        if not p.is_file():
            raise UserError(f"--quality {p}: no such results file (write one with sparkv decode --quality --out DIR)")
    return paths


def print_table(cells: list[Cell], reference: Cell | None, config: dict[str, Any]) -> None:
    sc = DecodeScenario.from_dict(config["scenario"])
    spec = resolve_model_spec(sc.model)
    kv = cells[0].kv_bytes if cells else 0
    print(f"decode what-if (simulated): {spec.name}, {sc.context_tokens} context tokens (KV {kv / 1e6:.1f} MB), "
          f"{sc.steps} steps, device {sc.device} (its compute and power, modelled), G={sc.group_tokens}, "
          f"M={sc.select_tokens or 'what fits the budget'}, scores {sc.scores}; aerp/h2o per head at N' = budget x "
          "context tokens")  # fmt: skip
    rows, cols = pivot_rows(cells, config["storages"], config.get("storage_kinds"))
    print(format_table(rows, cols))
    print("tokens/s: simulated decode steps; mJ/token: modelled energy per generated token = device power "
          "(active while computing, idle while waiting for reads) + storage read power over its busy time")
    print(f"not counted: {ENERGY_MODEL['not_counted']}")
    kinds = config.get("storage_kinds") or {}
    if kinds:
        print("storage: " + ", ".join(f"{st} {kind}" for st, kind in kinds.items())
              + " (analytic: a modelled disk from published figures; measured: profiled on a real disk)")  # fmt: skip
    if "hillinfer" in config["policies"]:
        print("hillinfer: the SmartSSD's in-storage scoring time is modelled (its profile), in every column")
    unmodelled = sorted({c.storage for c in cells if "storage_read" in c.energy_parts})
    if unmodelled:
        print(f"storage read energy not modelled on {', '.join(unmodelled)} (the profile gives no read power)")
    refused = [budget_label(f) for f in sorted({c.budget_fraction for c in cells if c.status == "needs-whole-kv"},
                                               reverse=True)]  # fmt: skip
    if refused:
        print(f"n/a: full-kv keeps the whole KV in memory, more than the budget ({', '.join(refused)})")
    if reference is not None and reference.tokens_per_s is not None:
        print(f"reference, full-kv with the whole KV ({reference.kv_bytes / 1e6:.1f} MB) in memory: "
              f"{reference.tokens_per_s:.2f} tokens/s, {(reference.energy_j_per_token or 0.0) * 1e3:.1f} mJ/token "
              "(no disk reads)")  # fmt: skip
    if any(c.status == "over-budget" for c in cells):
        print("over budget: the policy ran but held more KV than the budget (full-reload holds two layers' KV)")
    if all(c.accuracy_percent is None for c in cells):
        print("accuracy not measured: pass --quality FILE (decode-quality.json of sparkv decode --quality --out DIR, "
              "or decode-kelle-quality.json) or add --measure-quality (real SmolLM2, a few minutes)")
    else:
        print("accuracy: % of generated long-context tasks answered (real model), from "
              + ", ".join(config["quality_files"]))
