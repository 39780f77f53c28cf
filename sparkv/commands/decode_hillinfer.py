"""`sparkv decode` for HillInfer: its settings from this machine's measured host kernel, the storage profile and
the (modelled) SmartSSD profile; its statistics after a run; and `--hill-study`, the targets' measurements
(INT8 vs fp16 top-10 % overlap on real decode queries, host-link bytes, the split against a brute force,
and a what-if of the drive's speeds x0.5-x2)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from sparkv.analysis.decode_hillinfer import brute_force_split, fit_host_scoring
from sparkv.commands.common import format_table
from sparkv.core.decode import DecodeScenario, DecodeSummary
from sparkv.core.model import ModelSpec
from sparkv.core.result import Result
from sparkv.cost_models.smartssd import MODELLED, HostScoring, SmartSSDProfile, get_smartssd
from sparkv.cost_models.storage import StorageProfile
from sparkv.executor.model.keyscore import quantize_keys, quantize_query, score_records
from sparkv.policies.decode import DecodePolicy, make_decode_policy
from sparkv.policies.decode.hillinfer import RESULT_BYTES_PER_GROUP, HillInfer
from sparkv.sim.decode import DecodeWorld, build_decode_world
from sparkv.sim.decode_storage import run_storage_decode_sim

HOST_READ_BYTES = 16 << 10  # B_c off the storage profile: the host's share is read in runs of ~10-20 records


def add_hill_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hill-bits", type=int, choices=(8, 4), default=8, help="hillinfer: key scoring bits (default 8)")
    p.add_argument("--hill-study", action="store_true",
                   help="hillinfer targets: INT8 vs fp16 overlap (real), host-link bytes, split vs brute force, "
                        "SmartSSD what-if x0.5-x2 (modelled)")  # fmt: skip


def hill_options(scenario: DecodeScenario, spec: ModelSpec, storage: StorageProfile, ssd: SmartSSDProfile,
                 host: HostScoring, bits: int = 8) -> dict[str, Any]:  # fmt: skip
    """HillInfer's settings: f_c from the host kernel's cost, B_c from the storage profile, f_s and B_s from
    the drive's profile (modelled)."""
    return {
        "bits": bits,
        "cpu_tokens_per_s": 1.0 / host.per_token_s,
        "host_bps": storage.bandwidth_bps(HOST_READ_BYTES, scenario.queue_depth),
        "ssd_tokens_per_s": ssd.tokens_per_s(spec.num_attention_heads * spec.head_dim),
        "ssd_internal_bps": ssd.internal_bps,
    }


def build_policy(name: str, options: dict[str, Any] | None) -> DecodePolicy:
    """A decode policy by name; hillinfer gets `options` (the others take none here)."""
    return make_decode_policy(name, **(options or {})) if name == "hillinfer" else make_decode_policy(name)


def settings_of(result: Result) -> dict[str, Any]:
    """A run's policy settings (what rebuilds it for a replay)."""
    return {k: v for k, v in result.config["policy"].items() if k != "name"}


def measure_host_scoring(keys: np.ndarray, spec: ModelSpec, group_tokens: int, bits: int,
                         repeats: int = 5) -> HostScoring:  # fmt: skip
    """The host kernel's cost per token on this machine: `keys` float [T, d] of one real layer, a random query,
    the best of `repeats` (a microbenchmark; --validate fits it to the real runs' phases instead)."""
    t = keys.shape[0] // group_tokens * group_tokens
    rec = quantize_keys(keys[:t].reshape(t // group_tokens, group_tokens, -1), bits)
    q = quantize_query(np.random.default_rng(0).normal(size=(spec.num_attention_heads, spec.head_dim)))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        score_records(rec, q, group_tokens, spec.num_kv_heads, bits, 1.0)
        best = min(best, time.perf_counter() - t0)
    return HostScoring(per_token_s=best / t, source=f"microbenchmark: {t} tokens of real keys, best of {repeats}")


def sim_options(world: DecodeWorld, bits: int) -> dict[str, Any]:
    """Settings for a simulated run: the policy's default host kernel speed, this world's disk and drive."""
    host = HostScoring(per_token_s=1.0 / HillInfer().settings.cpu_tokens_per_s)
    return hill_options(world.scenario, world.spec, world.storage, get_smartssd("samsung-smartssd"), host, bits)


HILL_COLUMNS = [
    ("world", "world", ""),
    ("topk_hit_rate", "top-K hit rate", ".3f"),
    ("promoted", "promoted", "d"),
    ("demoted", "demoted", "d"),
    ("cpu_share", "host share of cold scoring", ".3f"),
    ("link_mb", "host link MB", ".2f"),
    ("cold_keys_mb", "all cold keys fp16 MB", ".2f"),
    ("reduction", "reduction x", ".1f"),
    ("internal_mb", "in-drive MB (modelled)", ".1f"),
]


def print_hill_stats(results: list[Result]) -> None:
    rows = []
    for r in results:
        if r.policy != "hillinfer" or r.decode is None:
            continue
        st = r.decode["policy_stats"]
        rows.append({"world": r.world, "topk_hit_rate": st["topk_hit_rate"], "promoted": st["promoted"],
                     "demoted": st["demoted"], "cpu_share": st["cpu_share"], "link_mb": st["host_link_bytes"] / 1e6,
                     "cold_keys_mb": st["cold_keys_fp16_bytes"] / 1e6,
                     "reduction": st["link_reduction_vs_cold_keys"],
                     "internal_mb": st["storage_internal_bytes"] / 1e6})  # fmt: skip
    if rows:
        print(format_table(rows, HILL_COLUMNS))
        print(f"hillinfer: host link = the host's share of quantised keys + the drive's results + fp16 KV of the "
              f"selected cold groups; the drive's scoring is {MODELLED}")  # fmt: skip


# ---- --hill-study ----

WHAT_IF_SCALES = (0.5, 1.0, 2.0)


def what_if_rows(world: DecodeWorld, host: HostScoring, bits: int) -> list[dict[str, Any]]:
    """Simulated step time of HillInfer with each drive speed (FPGA, internal, link, all) x0.5/x1/x2 (MODELLED);
    the split re-derived from each variant."""
    base = get_smartssd("samsung-smartssd")
    rows = []
    for what in ("fpga", "internal", "link", "all"):
        for x in WHAT_IF_SCALES:
            if x == 1.0 and what != "all":
                continue
            f = {"fpga": x if what in ("fpga", "all") else 1.0, "internal": x if what in ("internal", "all") else 1.0,
                 "link": x if what in ("link", "all") else 1.0}  # fmt: skip
            ssd = base.scaled(**f)
            policy = make_decode_policy("hillinfer", **hill_options(world.scenario, world.spec, world.storage, ssd,
                                                                    host, bits))  # fmt: skip
            res, _ = run_storage_decode_sim(world, policy, ssd=ssd, host=host, record=False)
            t = DecodeSummary.from_dict(res.decode or {}).totals()
            st = (res.decode or {})["policy_stats"]
            rows.append({"scaled": what, "x": x, "step_ms": t["step_median_s"] * 1e3, "tokens_per_s": t["tokens_per_s"],
                         "cpu_share": st["cpu_share"], "ssd_s": st["world_scoring"]["ssd_modelled_s"]})  # fmt: skip
    return rows


def split_rows(world: DecodeWorld, host: HostScoring, bits: int, samples: int = 6) -> list[dict[str, Any]]:
    """The latency model's split against a brute force over every host share, with the world's own costs
    (storage profile, fitted host kernel, modelled drive), at a few (step, layer) points of a simulated run."""
    ssd = get_smartssd("samsung-smartssd")
    rows = []
    for fast in (1.0, 0.25, 0.05):  # the drive as declared, and slower ones (the host then takes more)
        variant = ssd.scaled(fpga=fast, internal=fast)
        policy = make_decode_policy("hillinfer", **hill_options(world.scenario, world.spec, world.storage, variant,
                                                                host, bits))  # fmt: skip
        assert isinstance(policy, HillInfer)
        _, engine = run_storage_decode_sim(world, policy, ssd=variant, host=host, record=False)
        geo = world.geometry
        for layer in sorted(set(np.linspace(0, geo.num_layers - 1, samples).astype(int).tolist())):
            sp = policy.split(world.scenario.steps, layer, engine.full_groups)
            cold = tuple(sorted(sp.cpu + sp.storage))
            bf = brute_force_split(cold, len(sp.hot), geo.group_tokens, sp.record_bytes, host, world.storage,
                                   world.scenario.queue_depth, variant, world.spec.num_attention_heads *
                                   world.spec.head_dim, RESULT_BYTES_PER_GROUP, policy.select_groups(),
                                   len(sp.cpu))  # fmt: skip
            rows.append({"drive": variant.name, "layer": layer, **bf})
    return rows


def hill_study(args: argparse.Namespace, scenario: DecodeScenario, real: Result | None,
               overlap: dict[str, float] | None, out: Path | None, spec: ModelSpec | None = None) -> int:  # fmt: skip
    """Print (and save) the study's tables: split vs brute force, what-if, and the real overlap if measured."""
    world = build_decode_world(scenario, spec=spec)
    if real is not None:
        host = fit_host_scoring(real.extra["scoring_samples"], 1.0 / real.config["policy"]["cpu_tokens_per_s"])
    else:
        host = HostScoring(per_token_s=1.0 / HillInfer().settings.cpu_tokens_per_s)
    budget_mb = world.geometry.budget_bytes / 1e6
    print(f"hillinfer study: {world.spec.name}, {scenario.context_tokens} tokens, budget {budget_mb:.1f} MB, "
          f"storage {world.storage.name}; host kernel {host.per_token_s * 1e9:.1f} ns/token ({host.source}); "
          f"the drive {MODELLED}")  # fmt: skip
    if overlap is not None:
        print(f"INT{args.hill_bits} vs fp16 top-10 % overlap on real decode queries: "
              f"mean {overlap['overlap_mean']:.3f}, min {overlap['overlap_min']:.3f} "
              f"over {int(overlap['queries'])} (step, layer) scorings")  # fmt: skip
    splits = split_rows(world, host, args.hill_bits)
    print(format_table(splits, [("drive", "drive (modelled)", ""), ("layer", "layer", "d"),
                                ("chosen_cpu_groups", "model host groups", ".0f"),
                                ("best_cpu_groups", "brute-force host groups", ".0f"),
                                ("chosen_s", "model phase s", ".6f"), ("best_s", "best phase s", ".6f"),
                                ("excess", "excess", ".3f")]))  # fmt: skip
    worst = max(r["excess"] for r in splits)
    print(f"split vs brute force: worst excess {worst:.3f} (target <= 0.10)")
    whatif = what_if_rows(world, host, args.hill_bits)
    print(format_table(whatif, [("scaled", "drive speed scaled", ""), ("x", "x", ".1f"),
                                ("step_ms", "step median ms", ".2f"), ("tokens_per_s", "tokens/s", ".2f"),
                                ("cpu_share", "host share", ".3f"),
                                ("ssd_s", "drive scoring s (modelled)", ".3f")]))  # fmt: skip
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "hillinfer-study.json").write_text(json.dumps(
            {"scenario": scenario.to_dict(), "host_scoring": host.to_dict(), "overlap": overlap, "split": splits,
             "what_if": whatif, "smartssd": get_smartssd("samsung-smartssd").to_dict()}, indent=1))  # fmt: skip
    return 0
