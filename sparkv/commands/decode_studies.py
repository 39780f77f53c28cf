"""Decode studies in the simulator: a group-size sweep on a recorded per-token score trace and one disk, and a
what-if table of larger models on modelled devices and disks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sparkv.analysis.decode_quality import topm_recall
from sparkv.commands.common import format_table
from sparkv.core.decode import DecodeScenario, DecodeSummary, decode_geometry
from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec, resolve_model_spec
from sparkv.cost_models.decode_compute import DecodeCompute
from sparkv.policies.decode import make_decode_policy
from sparkv.sim.decode import build_decode_world, simulate_decode
from sparkv.traces.scores import load_score_trace, regroup

SWEEP_COLUMNS = [
    ("G", "G", "d"),
    ("kvswap_ms", "kvswap step ms", ".2f"),
    ("reload_ms", "full reload step ms", ".2f"),
    ("speedup", "speedup x", ".2f"),
    ("tokens_per_s", "kvswap tokens/s", ".2f"),
    ("mb_per_step", "read MB/step", ".3f"),
    ("hit_rate", "hit rate", ".3f"),
    ("recall", "top-M recall", ".3f"),
    ("mass", "attention mass vs top-M", ".3f"),
]


def load_compute(path: Path | None) -> DecodeCompute | None:
    if path is None:
        return None
    try:
        return DecodeCompute.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read decode compute {path}: {exc}") from exc


def sweep_g(scenario: DecodeScenario, sizes: list[int], compute: DecodeCompute | None, spec: ModelSpec | None,
            out: Path | None) -> int:  # fmt: skip
    """KVSwap vs full reload at every G on one per-token trace (`--scores`, recorded with `--record-scores`)."""
    tokens = load_score_trace(scenario.scores)
    rows: list[dict[str, Any]] = []
    for g in sizes:
        sc = scenario.with_(group_tokens=g)
        trace = regroup(tokens, g)
        world = build_decode_world(sc, compute=compute, scores=trace, spec=spec)
        kv = DecodeSummary.from_dict(simulate_decode(world, make_decode_policy("kvswap")).decode or {}).totals()
        fr = DecodeSummary.from_dict(simulate_decode(world, make_decode_policy("full-reload")).decode or {}).totals()
        geo = world.geometry
        rec = topm_recall(trace, geo.select_groups, geo.sink_groups)
        rows.append({"G": g, "kvswap_ms": kv["step_median_s"] * 1e3, "reload_ms": fr["step_median_s"] * 1e3,
                     "speedup": fr["step_median_s"] / kv["step_median_s"], "tokens_per_s": kv["tokens_per_s"],
                     "mb_per_step": kv["bytes_read"] / kv["steps"] / 1e6, "hit_rate": kv["hit_rate"],
                     "recall": rec["recall_mean"], "mass": rec["mass_ratio_mean"]})  # fmt: skip
    print(f"group-size sweep: {scenario.model}, {scenario.context_tokens} tokens, M={scenario.select_tokens}, storage "
          f"{scenario.storage}, scores {tokens.source} (simulated step times)")  # fmt: skip
    print(format_table(rows, SWEEP_COLUMNS))
    good = [r for r in rows if r["recall"] >= 0.8] or rows
    best = max(good, key=lambda r: r["tokens_per_s"])
    print(f"best G on this disk: {best['G']} ({best['tokens_per_s']:.2f} tokens/s, recall {best['recall']:.3f}"
          f"{'' if best['recall'] >= 0.8 else '; no G reaches recall 0.8'})")  # fmt: skip
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "decode-sweep-g.json").write_text(json.dumps({"scenario": scenario.to_dict(), "rows": rows}, indent=1))
    return 0


WHATIF = (  # (label, storage, G): KVSwap's G = 4 on NVMe, 8 on eMMC
    ("NVMe", "jetson-orin-nvme", 4),
    ("eMMC", "jetson-orin-emmc", 8),
)
WHATIF_POLICIES = ("full-kv", "full-reload", "kvswap", "streaming")


def what_if(args: argparse.Namespace, out: Path | None) -> int:
    """Llama-3.1-8B at 32k on a Jetson AGX Orin (roofline compute), NVMe vs eMMC (analytic disks): tokens/s."""
    model = args.model or "llama-3.1-8b"
    context = args.context_tokens or 32768
    spec = resolve_model_spec(model)
    rows: list[dict[str, Any]] = []
    for label, storage, g in WHATIF:
        sc = DecodeScenario(model=model, context_tokens=context, group_tokens=g, steps=args.steps or 16,
                            device=args.device or "jetson-agx-orin-maxn", storage=storage)  # fmt: skip
        world = build_decode_world(sc, spec=spec)
        row: dict[str, Any] = {"disk": label, "storage": storage, "G": g}
        for name in WHATIF_POLICIES:
            t = DecodeSummary.from_dict(simulate_decode(world, make_decode_policy(name)).decode or {}).totals()
            row[name] = t["tokens_per_s"]
        row["kv_gb"] = decode_geometry(spec, sc).kv_bytes / 1e9
        rows.append(row)
    print(f"what-if (modelled): {model} at {context} tokens, device {args.device or 'jetson-agx-orin-maxn'} "
          "(roofline), M=400, budget 1/8 of the KV, synthetic scores; tokens/s per policy")  # fmt: skip
    cols = [("disk", "disk", ""), ("G", "G", "d"), ("kv_gb", "KV GB", ".2f")]
    cols += [(n, f"{n} tok/s", ".2f") for n in WHATIF_POLICIES]
    print(format_table(rows, cols))
    print("full-kv holds the whole KV in DRAM (no budget); the others keep 1/8 of it at most")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "decode-what-if.json").write_text(json.dumps(rows, indent=1))
    return 0
