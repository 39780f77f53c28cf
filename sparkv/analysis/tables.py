"""Results as flat rows: one dict per request, the same columns for sweeps, result folders and CSVs.

A row holds the run's full configuration (the scenario's fields flattened, link fields under their own
names, the policy and its config as JSON, the trace's name and mean rate) and its outcome (TTFT,
energy by component and in total, MB streamed and wasted, cells computed and streamed, status).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.core.result import Result

# Configuration columns first, in this order, then outcome columns.
CONFIG_COLUMNS = [
    "index", "world", "policy", "trace_name", "trace_mean_mbps", "model", "device", "codec", "context_tokens",
    "query_tokens", "chunk_tokens", "trace", "bandwidth_scale", "rtt_s", "per_transfer_s", "efficiency",
    "trace_offset_s", "radio", "server_concurrency", "server_background_rps", "availability", "compute_noise", "seed",
    "policy_config",
]  # fmt: skip
OUTCOME_COLUMNS = [
    "status", "error", "ttft_s", "energy_j", "mb_streamed", "mb_wasted", "cells_computed", "cells_streamed",
    "faults",
]  # fmt: skip
STATUSES = ("ok", "stalled", "error")


def scenario_columns(scenario: Scenario) -> dict[str, Any]:
    """The scenario's fields as one flat dict (link fields by their own names)."""
    data = scenario.to_dict()
    link = data.pop("link")
    return {**data, **link}


def result_row(result: Result) -> dict[str, Any]:
    """One flat row for a finished `Result` (config + outcome)."""
    config = result.config or {}
    scen = config.get("scenario")
    row: dict[str, Any] = scenario_columns(Scenario.from_dict(scen)) if scen else {}
    trace = config.get("trace") or {}
    row.update(
        policy=result.policy,
        world=result.world,
        trace_name=trace.get("name", row.get("trace", "")),
        trace_mean_mbps=trace.get("mean_bps", math.nan) * 8 / 1e6,
        policy_config=json.dumps(config.get("policy", {}), sort_keys=True),
        status="ok",
        error="",
        ttft_s=result.ttft_s,
        energy_j=result.energy_total_j,
        mb_streamed=result.bytes_streamed / 1e6,
        mb_wasted=result.bytes_wasted / 1e6,
        cells_computed=result.cells_computed,
        cells_streamed=result.cells_streamed,
        faults=len(result.faults),
    )
    for component, joules in result.energy_j.items():
        row[f"energy_{component}_j"] = joules
    stats = result.extra.get("policy_stats") or {}
    row.update({f"policy_{k}": v for k, v in stats.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    return row


def order_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Known config columns, then outcome columns, then energy components, then anything else."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    known = CONFIG_COLUMNS + OUTCOME_COLUMNS
    head = [c for c in known if c in seen]
    energy = sorted(c for c in seen if c.startswith("energy_") and c.endswith("_j") and c not in known)
    rest = [c for c in seen if c not in head and c not in energy]
    return head + energy + rest


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    columns = order_columns(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return path


def write_parquet(rows: Sequence[dict[str, Any]], path: Path) -> Path | None:
    """Parquet beside the CSV when pyarrow is importable; None otherwise."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    columns = order_columns(rows)
    table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    pq.write_table(table, path)
    return path


def _convert(text: str) -> Any:
    if text == "":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"True": True, "False": False}.get(text, text)


def read_csv(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV with numbers converted (empty cells become None)."""
    with path.open(newline="") as fh:
        return [{k: _convert(v) for k, v in row.items() if k is not None} for row in csv.DictReader(fh)]


def find_results(paths: Iterable[Path | str]) -> list[Path]:
    """Result JSON files named directly or found under folders (recursively), sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found.extend(sorted(q for q in p.rglob("*.json") if _is_result(q)))
        elif p.is_file():
            found.append(p)
        else:
            raise UserError(f"{p}: no such file or folder")
    return found


def _is_result(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and {"world", "policy", "ttft_s", "spans"} <= set(data)


def load_results(paths: Iterable[Path | str]) -> list[Result]:
    out = []
    for p in find_results(paths):
        try:
            out.append(Result.load(p))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
            raise UserError(f"{p}: not a sparkv Result JSON ({exc})") from exc
    return out


def load_rows(path: Path | str) -> list[dict[str, Any]]:
    """Rows from a CSV (sweep, evaluate, validate or any table), a folder with one, or Result JSONs."""
    path = Path(path)
    if path.is_dir():
        for name in ("results.csv", "rows.csv", "evaluation.csv", "validation.csv"):
            if (path / name).is_file():
                return read_csv(path / name)
        results = load_results([path])
        if not results:
            raise UserError(f"{path}: no results CSV and no Result JSON files in this folder")
        return [result_row(r) for r in results]
    if not path.is_file():
        raise UserError(f"{path}: no such file or folder")
    if path.suffix == ".csv":
        return read_csv(path)
    if path.suffix == ".json":
        return [result_row(r) for r in load_results([path])]
    raise UserError(f"{path}: expected a .csv table, a Result .json, or a folder of them")


# ---- small helpers for grouping rows without pandas ----


def numbers(rows: Iterable[dict[str, Any]], key: str) -> list[float]:
    """Finite numeric values of `key` (missing, empty and non-numeric cells skipped)."""
    out = []
    for row in rows:
        v = row.get(key)
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def group_by(rows: Iterable[dict[str, Any]], *keys: str) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return groups


def distinct(rows: Iterable[dict[str, Any]], key: str) -> list[Any]:
    """Distinct non-empty values of `key`, sorted (numbers numerically)."""
    values = {row.get(key) for row in rows} - {None, ""}
    return sorted(values, key=lambda v: (isinstance(v, str), v))


def ok_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows that finished (status ok, or no status column)."""
    return [r for r in rows if r.get("status") in (None, "", "ok")]


def summarise(rows: Sequence[dict[str, Any]], by: str = "policy") -> list[dict[str, Any]]:
    """One row per `by` value: runs, stalls, errors, TTFT median/p90, mean energy, mean MB streamed."""
    import numpy as np

    out = []
    for (key,), group in group_by(rows, by).items():
        done = ok_rows(group)
        ttft = numbers(done, "ttft_s")
        out.append({
            by: key,
            "runs": len(group),
            "stalled": sum(r.get("status") == "stalled" for r in group),
            "errors": sum(r.get("status") == "error" for r in group),
            "ttft_median_s": float(np.median(ttft)) if ttft else math.nan,
            "ttft_p90_s": float(np.percentile(ttft, 90)) if ttft else math.nan,
            "energy_mean_j": float(np.mean(numbers(done, "energy_j"))) if numbers(done, "energy_j") else math.nan,
            "mb_streamed_mean": float(np.mean(numbers(done, "mb_streamed"))) if numbers(done, "mb_streamed")
            else math.nan,
        })  # fmt: skip
    return sorted(out, key=lambda r: (math.isnan(r["ttft_median_s"]), r["ttft_median_s"]))


SUMMARY_COLUMNS = [
    ("policy", "policy", ""),
    ("runs", "runs", "d"),
    ("stalled", "stalled", "d"),
    ("errors", "errors", "d"),
    ("ttft_median_s", "median TTFT s", ".3f"),
    ("ttft_p90_s", "p90 TTFT s", ".3f"),
    ("energy_mean_j", "mean energy J", ".1f"),
    ("mb_streamed_mean", "mean streamed MB", ".2f"),
]


def prediction_pairs(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(quantity, predicted column, measured column) for validation tables: `predicted_X`/`measured_X`,
    `sim_X`/`real_X` or `X_pred`/`X_meas`, e.g. ("ttft_s", "sim_ttft_s", "real_ttft_s")."""
    columns = {k for r in rows[:50] for k in r}
    out = []
    for col in sorted(columns):
        for pre, meas in (("predicted_", "measured_"), ("sim_", "real_"), ("pred_", "meas_")):
            if col.startswith(pre) and meas + col[len(pre) :] in columns:
                out.append((col[len(pre) :], col, meas + col[len(pre) :]))
        if col.endswith("_pred") and col[: -len("_pred")] + "_meas" in columns:
            out.append((col[: -len("_pred")], col, col[: -len("_pred")] + "_meas"))
    return [p for p in out if numbers(rows, p[1]) and numbers(rows, p[2])]
