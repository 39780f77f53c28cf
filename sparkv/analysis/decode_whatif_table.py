"""The decode what-if table: every decode policy x memory budget x storage profile, from simulated Results.

A cell holds tokens/s, the modelled energy per generated token and the accuracy of its (policy, budget).
Energy per generated token is **modelled**, in two named parts over the simulated timeline:

- device: the device profile's active power while the compute lane works (attention, FFN, scoring, the LM
  head) and its idle power while it waits for reads; the module or SoC figure covers its DRAM;
- storage: the storage profile's read power over the storage lane's busy time (0 where the profile gives none:
  then the cell's `energy_parts` say "not modelled").

Not counted: the SmartSSD's in-drive scoring power (HillInfer; no figure), writes of appended groups, the
radio. Accuracy comes from a real quality measurement (`load_quality`) or is "not measured".
A cell whose policy cannot run within the budget says so (`status`), with the memory it would need.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from sparkv.core.decode import DecodeSummary
from sparkv.core.errors import UserError
from sparkv.core.result import Result
from sparkv.cost_models.energy import ComputePower
from sparkv.cost_models.storage import StorageProfile

OK = "ok"
NEEDS_WHOLE_KV = "needs-whole-kv"  # full-kv: the whole KV in memory, more than the budget
OVER_BUDGET = "over-budget"  # ran, but its memory high-water mark exceeds the budget
HEAD_POLICIES = ("aerp", "h2o")  # per-head eviction: nothing read from disk, storage does not apply
PLOT_COLOURS = ("#7f7f7f", "#e377c2", "#17becf", "#ff7f0e", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b")
MATCH_TOLERANCE = 0.1  # a measured budget fraction matches a table budget within 10 % (relative)
ENERGY_MODEL = {
    "device_active_j": "device profile active_w x compute-lane busy seconds (modelled; SoC/module figure, DRAM in it)",
    "device_idle_j": "device profile idle_w x seconds the compute lane waits for reads (modelled)",
    "storage_read_j": "storage profile read_w x storage-lane busy seconds (modelled; 0 where the profile has none)",
    "not_counted": "SmartSSD in-drive scoring power (HillInfer), writes of appended groups, the radio",
}


@dataclass(frozen=True)
class Accuracy:
    """Measured accuracy of one (policy, budget): percent of tasks answered, over `n` tasks."""

    percent: float
    n: int
    source: str  # the results file and what it measured


@dataclass
class Cell:
    """One (policy, budget, storage) of the table. Numbers are None where the cell did not run (see status)."""

    policy: str
    budget_fraction: float
    storage: str
    status: str  # OK, NEEDS_WHOLE_KV, OVER_BUDGET
    note: str  # why a cell is refused or what does not apply ("no disk reads")
    kv_bytes: int  # the context's whole KV, all layers
    budget_bytes: int
    memory_bytes: int = 0  # KV the policy held at most (group policies: resident + in flight + tail; per head: kept)
    uses_storage: bool = True
    tokens_per_s: float | None = None
    step_median_s: float | None = None
    step_p90_s: float | None = None
    bytes_read_per_token: float | None = None
    energy_j_per_token: float | None = None
    energy_parts: dict[str, Any] = field(default_factory=dict)  # joules per token by part (ENERGY_MODEL)
    accuracy_percent: float | None = None
    accuracy_n: int = 0
    accuracy_source: str = "not measured"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def budget_label(fraction: float) -> str:
    """1/8 for 0.125; a decimal where no small fraction fits."""
    f = Fraction(fraction).limit_denominator(64)
    return f"{f.numerator}/{f.denominator}" if abs(float(f) - fraction) < 1e-9 else f"{fraction:g}"


def head_budget_tokens(fraction: float, context_tokens: int) -> int:
    """N' for a budget fraction: every head of every layer keeps that share of the context's tokens (16 at least)."""
    return max(16, int(fraction * context_tokens))


def energy_per_token(totals: dict[str, float], power: ComputePower, storage: StorageProfile | None) -> dict[str, Any]:
    """Modelled joules per generated token by part, from a decode run's totals (see ENERGY_MODEL)."""
    steps = totals["steps"]
    if steps <= 0 or totals["tokens_per_s"] <= 0:
        raise ValueError(f"a decode run with {steps} steps at {totals['tokens_per_s']} tokens/s has no energy")
    run_s = steps / totals["tokens_per_s"]
    wait_s = min(totals["stall_s"], run_s)
    read_w = storage.read_w if storage is not None else 0.0
    parts: dict[str, Any] = {
        "device_active_j": power.active_w * (run_s - wait_s) / steps,
        "device_idle_j": power.idle_w * wait_s / steps,
        "storage_read_j": read_w * totals["read_s"] / steps,
    }
    parts["total_j"] = parts["device_active_j"] + parts["device_idle_j"] + parts["storage_read_j"]
    if storage is not None and read_w <= 0 and totals["read_s"] > 0:
        parts["storage_read"] = f"not modelled: storage profile {storage.name} gives no read power"
    return parts


def refused_cell(policy: str, fraction: float, storage: str, kv_bytes: int, budget_bytes: int) -> Cell:
    """full-kv under a budget smaller than the KV: it does not run."""
    note = f"needs the whole KV ({kv_bytes / 1e6:.1f} MB) in memory > budget {budget_bytes / 1e6:.1f} MB"
    return Cell(policy, fraction, storage, NEEDS_WHOLE_KV, note, kv_bytes, budget_bytes, memory_bytes=kv_bytes)


def run_cell(result: Result, fraction: float, storage: StorageProfile, power: ComputePower, kv_bytes: int,
             budget_bytes: int) -> Cell:  # fmt: skip
    """A cell from one simulated decode Result (group-level or per-head policy) on `storage`."""
    if result.decode is None:
        raise UserError(f"result of {result.policy} has no decode phase")
    summary = DecodeSummary.from_dict(result.decode)
    t = summary.totals()
    per_head = result.policy in HEAD_POLICIES
    # per head: the kept K/V (+ stored inputs) of every head, nothing on disk; else resident + in flight + tail
    held = summary.policy_stats.get("held_bytes_by_step") or [0]
    memory = int(max(held)) if per_head else int(t["memory_hwm_bytes"])
    status, note = OK, ""
    if memory > budget_bytes:
        status = OVER_BUDGET
        note = f"holds {memory / 1e6:.1f} MB at most > budget {budget_bytes / 1e6:.1f} MB"
    if per_head:
        note = "; ".join(n for n in (note, "no disk reads: evicted tokens are gone; same on every storage") if n)
    return Cell(
        policy=result.policy, budget_fraction=fraction, storage=storage.name, status=status, note=note,
        kv_bytes=kv_bytes, budget_bytes=budget_bytes, memory_bytes=memory, uses_storage=not per_head,
        tokens_per_s=t["tokens_per_s"], step_median_s=t["step_median_s"], step_p90_s=t["step_p90_s"],
        bytes_read_per_token=t["bytes_read"] / t["steps"] if t["steps"] else 0.0,
        energy_parts=energy_per_token(t, power, None if per_head else storage),
    )  # fmt: skip


def finish_energy(cells: list[Cell]) -> None:
    """energy_j_per_token from the parts (after all parts are in)."""
    for c in cells:
        if c.energy_parts:
            c.energy_j_per_token = float(c.energy_parts["total_j"])


# ---- accuracy from quality results files ----

QualityKey = tuple[str, float]  # (policy, budget fraction; 0.0 for a policy that keeps the whole KV)
_PER_HEAD_NAMES = {"full": "full-kv", "aerp": "aerp", "h2o": "h2o"}  # decode-kelle-quality.json columns
_WHOLE_KV = ("full-kv", "full-reload")  # attend every token: accuracy independent of the budget


def load_quality(paths: list[Path]) -> dict[QualityKey, Accuracy]:
    """Per (policy, budget fraction) accuracy from results files of `sparkv decode --quality` (group policies at
    one budget), `sparkv decode --policy aerp --policy h2o --quality` (per head, N' per row) or the table's
    own `--measure-quality` (`decode-whatif-quality.json`)."""
    counts: dict[QualityKey, list[float]] = {}
    sources: dict[QualityKey, set[str]] = {}
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
            rows = data["rows"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"cannot read quality results {path}: {exc}") from exc
        for key, correct in _quality_entries(data, rows, path):
            counts.setdefault(key, []).append(correct)
            sources.setdefault(key, set()).add(Path(path).name)
    return {k: Accuracy(100.0 * sum(v) / len(v), len(v), ", ".join(sorted(sources[k]))) for k, v in counts.items()}


def _quality_entries(data: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> list[tuple[QualityKey, float]]:
    out: list[tuple[QualityKey, float]] = []
    if rows and "budget_fraction" in rows[0]:  # the table's own measurement: one row per (task, policy, budget)
        for r in rows:
            frac = 0.0 if r["policy"] in _WHOLE_KV else float(r["budget_fraction"])
            out.append(((r["policy"], frac), float(r["correct"])))
        return out
    if rows and "budget" in rows[0]:  # per-head tasks: N' tokens per head of a context of `length` tokens
        for r in rows:
            for col, policy in _PER_HEAD_NAMES.items():
                if col in r:
                    frac = 0.0 if policy in _WHOLE_KV else int(r["budget"]) / int(r["length"])
                    out.append(((policy, frac), float(r[col])))
        return out
    scenario = data.get("scenario") or {}
    if int(scenario.get("budget_bytes", 0)):
        raise UserError(f"{path}: quality measured at a budget in bytes; the table needs a fraction (--budget 1/8)")
    frac = float(scenario.get("budget_fraction", 0.125))
    skip = {"kind", "length", "tokens", "depth", "seed", "answer", "recall"}
    for r in rows:
        if r.get("metric", "answer string") != "answer string":
            continue  # a question on a real document, scored by its dataset's metric: not a generated task
        for col, value in r.items():
            if col in skip or col.endswith(("_text", "_same")) or not isinstance(value, int | float):
                continue
            out.append(((col, 0.0 if col in _WHOLE_KV else frac), float(value)))
    return out


def attach_accuracy(cells: list[Cell], quality: dict[QualityKey, Accuracy]) -> None:
    """Each cell takes the accuracy measured for its policy at its budget (within MATCH_TOLERANCE)."""
    for c in cells:
        acc = quality.get((c.policy, 0.0)) if c.policy in _WHOLE_KV else None
        if acc is None and c.policy not in _WHOLE_KV:
            near = [(abs(f - c.budget_fraction) / c.budget_fraction, a) for (p, f), a in quality.items()
                    if p == c.policy and f > 0]  # fmt: skip
            near = [x for x in near if x[0] <= MATCH_TOLERANCE]
            acc = min(near, key=lambda x: x[0])[1] if near else None
        if acc is not None:
            c.accuracy_percent, c.accuracy_n, c.accuracy_source = acc.percent, acc.n, acc.source


# ---- the printed table, the files, the figure ----


def _value(c: Cell, what: str) -> str:
    if c.status == NEEDS_WHOLE_KV:
        return f"n/a: KV {c.kv_bytes / 1e6:.0f} MB > budget" if what == "tps" else "n/a"
    if what == "tps":
        text = f"{c.tokens_per_s:.2f}"
        if c.status == OVER_BUDGET:
            text += f" (over budget: {c.memory_bytes / 1e6:.1f} MB)"
        elif not c.uses_storage:
            text += " (no disk)"
        return text
    return f"{(c.energy_j_per_token or 0.0) * 1e3:.1f}"


def accuracy_text(c: Cell) -> str:
    if c.accuracy_percent is None:
        return "not measured"
    return f"{c.accuracy_percent:.0f} % (n={c.accuracy_n})"


def pivot_rows(cells: list[Cell], storages: list[str], kinds: dict[str, str] | None = None,
               ) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:  # fmt: skip
    """One printed row per (policy, budget): tokens/s and mJ/token for each storage, accuracy; and its columns.
    `kinds`: storage name -> "measured" or "analytic", named in each storage's column."""
    rows: list[dict[str, Any]] = []
    keys = list(dict.fromkeys((c.policy, c.budget_fraction) for c in cells))
    by = {(c.policy, c.budget_fraction, c.storage): c for c in cells}
    for policy, frac in keys:
        first = by[(policy, frac, storages[0])]
        row: dict[str, Any] = {"policy": policy, "budget": f"{budget_label(frac)} ({first.budget_bytes / 1e6:.1f} MB)",
                               "accuracy": accuracy_text(first)}  # fmt: skip
        for st in storages:
            c = by[(policy, frac, st)]
            row[f"{st}:tps"], row[f"{st}:mj"] = _value(c, "tps"), _value(c, "mj")
        rows.append(row)
    cols = [("policy", "policy", ""), ("budget", "KV budget", "")]
    for st in storages:
        label = f"{st} ({kinds[st]})" if kinds and st in kinds else st
        cols += [(f"{st}:tps", f"{label} tokens/s", ""), (f"{st}:mj", "mJ/token", "")]
    cols.append(("accuracy", "accuracy", ""))
    return rows, cols


def write_outputs(cells: list[Cell], config: dict[str, Any], out: Path, reference: Cell | None = None) -> list[Path]:
    """decode-whatif.json (config, energy model, cells, the full-KV reference) and decode-whatif.csv (one row per
    cell, with the config in columns)."""
    out.mkdir(parents=True, exist_ok=True)
    js = out / "decode-whatif.json"
    js.write_text(json.dumps({"config": config, "energy_model": ENERGY_MODEL, "cells": [c.to_dict() for c in cells],
                              "reference": reference.to_dict() if reference else None}, indent=1))  # fmt: skip
    flat_config = {f"config_{k}": v if not isinstance(v, list | dict) else json.dumps(v) for k, v in config.items()}
    path = out / "decode-whatif.csv"
    with path.open("w", newline="") as fh:
        fields = [k for k in Cell.__dataclass_fields__ if k != "energy_parts"]
        fields += ["energy_device_active_j", "energy_device_idle_j", "energy_storage_read_j", *flat_config]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for c in cells:
            d = c.to_dict()
            parts = d.pop("energy_parts")
            d.update({f"energy_{k}": parts.get(k, "") for k in ("device_active_j", "device_idle_j", "storage_read_j")})
            writer.writerow({**d, **flat_config})
    return [js, path]


def plot_whatif(cells: list[Cell], storages: list[str], path: Path, kinds: dict[str, str] | None = None) -> Path:
    """Tokens/s against modelled mJ/token, one panel per storage profile: colour = policy, marker = budget;
    cells that do not run are named under the panel."""
    from sparkv.analysis.plots import _plain, _save, plt

    policies = list(dict.fromkeys(c.policy for c in cells))
    fracs = sorted({c.budget_fraction for c in cells}, reverse=True)
    colours = {p: PLOT_COLOURS[i % len(PLOT_COLOURS)] for i, p in enumerate(policies)}
    size = {p: 90 - 50 * i / max(1, len(policies) - 1) for i, p in enumerate(policies)}  # equal points stay visible
    markers = dict(zip(fracs, "osD^vP*X", strict=False))
    fig, axes = plt.subplots(1, len(storages), figsize=(4.2 * len(storages), 4.2), squeeze=False, sharey=True)
    for ax, st in zip(axes[0], storages, strict=True):
        mine = [c for c in cells if c.storage == st]
        for c in mine:
            if c.tokens_per_s is None or c.energy_j_per_token is None:
                continue
            face = "none" if c.status == OVER_BUDGET else colours[c.policy]
            ax.scatter(c.tokens_per_s, c.energy_j_per_token * 1e3, s=size[c.policy],
                       marker=markers.get(c.budget_fraction, "o"),
                       facecolors=face, edgecolors=colours[c.policy], linewidths=1.3)  # fmt: skip
        refused = sorted({f"{c.policy} {budget_label(c.budget_fraction)}" for c in mine if c.status == NEEDS_WHOLE_KV})
        ax.set_title(f"{st} ({kinds[st]} disk)" if kinds and st in kinds else st, fontsize=10)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens/s (simulated)")
        _plain(ax.xaxis)
        _plain(ax.yaxis)
        ax.grid(True, which="both", alpha=0.3)
        if refused:
            ax.text(0.02, 0.02, "not shown (KV > budget):\n" + ", ".join(refused), transform=ax.transAxes,
                    fontsize=6.5, va="bottom")  # fmt: skip
    axes[0][0].set_ylabel("energy per token, mJ (modelled)")
    handles = [plt.Line2D([], [], color=colours[p], marker="o", linestyle="", label=p) for p in policies]
    handles += [plt.Line2D([], [], color="black", marker=markers[f], linestyle="", label=f"budget {budget_label(f)}")
                for f in fracs]  # fmt: skip
    handles.append(plt.Line2D([], [], color="black", marker="o", markerfacecolor="none", linestyle="",
                              label="over budget"))  # fmt: skip
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle("decode what-if: up and left is worse (slower, more energy); down and right is better", fontsize=10)
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    return _save(fig, path)
