"""One self-contained page (HTML with embedded PNGs, or Markdown beside PNG files) for a sweep, an
evaluation, a validation, a folder of Results, or any table: what was run, the headline table, the
figures, the full table, and the machine it ran on.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any

from sparkv.analysis.plots import plot_predicted_vs_measured, standard_figures
from sparkv.analysis.tables import (
    CONFIG_COLUMNS,
    OUTCOME_COLUMNS,
    SUMMARY_COLUMNS,
    distinct,
    load_rows,
    numbers,
    prediction_pairs,
    summarise,
)
from sparkv.core.errors import UserError

Row = dict[str, Any]
META_FILES = ("sweep.json", "evaluation.json", "evaluate.json", "validation.json", "validate.json", "meta.json")
MAX_ROWS = 300  # rows of the full table shown on the page (the CSV has them all)


def find_meta(path: Path) -> dict[str, Any]:
    """The run's metadata JSON beside the results (sweep.json, evaluation.json, ...), or {}."""
    folder = path if path.is_dir() else path.parent
    for name in META_FILES:
        if (folder / name).is_file():
            try:
                data = json.loads((folder / name).read_text())
            except json.JSONDecodeError:
                continue
            if isinstance(data, dict):
                return {"_file": name, **data}
    return {}


def detect_kind(rows: list[Row], meta: dict[str, Any]) -> str:
    """sweep, evaluation, validation, results (Result JSONs) or table."""
    if prediction_pairs(rows):
        return "validation"
    name = str(meta.get("kind") or meta.get("_file", ""))
    if "sweep" in name:
        return "sweep"
    if "eval" in name or (rows and {"fluid_bound_s", "speedup_vs_cake"} & set(rows[0])):
        return "evaluation"
    if rows and "world" in rows[0] and "status" in rows[0]:
        return "results"
    return "table"


def config_tables(rows: list[Row]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(fixed settings, varied settings) over the configuration columns present."""
    fixed, varied = [], []
    skip = {"index", "policy_config"} | DERIVED | ({"trace"} if distinct(rows, "trace_name") else set())
    for col in [c for c in CONFIG_COLUMNS if c not in skip] + ["scale_kind", "scale_target", "link"]:
        values = distinct(rows, col)
        if len(values) == 1:
            fixed.append((col, _fmt(values[0])))
        elif values:
            more = f", ... ({len(values)} values)" if len(values) > 8 else ""
            shown = ", ".join(_fmt(v) for v in values[:8]) + more
            varied.append((col, shown))
    return fixed, varied


def validation_rows(rows: list[Row]) -> list[Row]:
    """Per quantity and policy: median and p90 absolute relative error of simulated vs measured."""
    out = []
    pairs = prediction_pairs(rows)
    if numbers(rows, "sim_profile_ttft_s"):  # `sparkv validate` with speed probes: also at the profile's speed
        pairs.append(("ttft_s at profiled speed", "sim_profile_ttft_s", "real_ttft_s"))
    for quantity, pred, meas in pairs:
        for policy in distinct(rows, "policy") or [None]:
            mine = [r for r in rows if policy is None or r.get("policy") == policy]
            errs = sorted(abs(p - m) / abs(m) for r in mine if numbers([r], pred) and numbers([r], meas)
                          for p, m in [(float(r[pred]), float(r[meas]))] if m)  # fmt: skip
            signed = [float(r[pred]) - float(r[meas]) for r in mine if numbers([r], pred) and numbers([r], meas)]
            if errs:
                out.append({"quantity": quantity, "policy": policy or "all", "runs": len(errs),
                            "median_abs_rel_err_pct": 100 * errs[len(errs) // 2],
                            "p90_abs_rel_err_pct": 100 * errs[min(len(errs) - 1, int(0.9 * len(errs)))],
                            "mean_signed_err": sum(signed) / len(signed)})  # fmt: skip
    return out


VALIDATION_COLUMNS = [("quantity", "quantity", ""), ("policy", "policy", ""), ("runs", "runs", "d"),
                      ("median_abs_rel_err_pct", "median |error| %", ".1f"),
                      ("p90_abs_rel_err_pct", "p90 |error| %", ".1f"),
                      ("mean_signed_err", "mean sim - real (unit of quantity)", ".3g")]  # fmt: skip


CAPTIONS = {
    "ttft_vs_bandwidth": "Time to first token against bandwidth: median over traces (band: 25-75 %), one panel "
                         "per context length.",
    "ttft_cdf": "Distribution of time to first token over every run of each policy, one panel per context length; "
                "a curve that stops short of 1 has runs that did not finish.",
    "energy": "Energy to the first token by component, averaged over the settings every policy finished.",
    "best_policy": "The policy with the lowest median TTFT in each setting, its median, and how much faster it "
                   "is than the runner-up (within 1 %: a tie).",
    "ttft_scatter": "Predicted (simulated) against measured (real) time to first token, one point per run.",
    "ttft_error_by_policy": "Prediction error of time to first token by policy.",
}  # fmt: skip
DERIVED = {"trace_mean_mbps", "trace_duration_s", "trace_looped"}  # follow from the settings: not axes of a run
_ABS_PATH = re.compile(r"(?<![\w.])/(?:[^\s/\"',:;()\[\]]+/)+([^\s/\"',:;()\[\]]+)")


def short_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part (a report is shared: the author's folders are
    not the reader's business, and the names are what identifies a trace)."""
    return _ABS_PATH.sub(lambda m: m.group(1), text)


def figure_caption(figure: Path) -> str:
    stem = figure.stem
    for key, text in CAPTIONS.items():
        if stem == key or stem.endswith("_" + key):
            return text
    if stem.startswith("pred_vs_meas_"):
        return f"Predicted against measured {stem[len('pred_vs_meas_'):].replace('_', ' ')}, one point per run."
    return stem.replace("_", " ")


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "-" if math.isnan(value) else "did not finish"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e7 and spec in ("", ".4g"):
        return str(int(value))  # 16384, not 1.638e+04
    if isinstance(value, float) and abs(value) >= 1e4 and spec in ("", ".4g"):
        return f"{value:.0f}"
    if isinstance(value, float) and spec:
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str):
        return short_paths(value)
    return str(value)


def full_columns(rows: list[Row]) -> list[tuple[str, str, str]]:
    """Varied configuration columns, then the outcome columns present."""
    _, varied = config_tables(rows)
    keys = ["policy"] + [k for k, _ in varied if k != "policy"]
    outs = [c for c in OUTCOME_COLUMNS if c not in ("error", "faults") and any(c in r for r in rows[:5])]
    if not outs:
        outs = [c for c in rows[0] if c not in keys][:10] if rows else []
    return [(k, k, ".4g") for k in keys + outs]


def sections(path: Path, figures_dir: Path) -> tuple[str, list[tuple[str, Any]]]:
    """(title, [(kind, payload)]) where kind is h2, p, kv, table, figure, pre."""
    rows = load_rows(path)
    if not rows:
        raise UserError(f"{path}: no rows to report")
    meta = find_meta(path)
    kind = detect_kind(rows, meta)
    out: list[tuple[str, Any]] = [("h2", "What was run")]
    article = "An" if kind[0] in "aeiou" else "A"
    out.append(("p", f"{article} {kind} of {len(rows)} runs, read from {path.name}."))
    fixed, varied = config_tables(rows)
    if varied:
        out.append(("kv", ("Varied", varied)))
    if fixed:
        out.append(("kv", ("Fixed", fixed)))
    spec = {k: v for k, v in meta.items() if k not in ("versions", "machine", "_file", "argv")}
    if spec:
        text = short_paths(json.dumps(spec, indent=1, default=str))
        out.append(("pre", ("Run metadata (" + meta["_file"] + ")", text)))
    if meta.get("argv"):
        out.append(("p", "Command: sparkv " + short_paths(" ".join(map(str, meta["argv"])))))
    out.append(("h2", "Headline"))
    if kind == "validation":
        out.append(("table", (validation_rows(rows), VALIDATION_COLUMNS)))
    if any("policy" in r for r in rows[:5]) and numbers(rows, "ttft_s"):
        out.append(("p", "Per policy over all runs; a run that stalled is counted, never averaged in."))
        out.append(("table", (summarise(rows), SUMMARY_COLUMNS)))
    out.append(("h2", "Figures"))
    figs = standard_figures(rows, figures_dir) if numbers(rows, "ttft_s") else []
    for quantity, pred, meas in prediction_pairs(rows):
        png = figures_dir / f"pred_vs_meas_{quantity}.png"
        figs.append(plot_predicted_vs_measured(rows, quantity, pred, meas, png))
    out.extend(("figure", f) for f in figs)
    if not figs:
        out.append(("p", "No figures: the table has no TTFT column."))
    out.append(("h2", f"All runs ({min(len(rows), MAX_ROWS)} of {len(rows)} shown)"))
    out.append(("table", (rows[:MAX_ROWS], full_columns(rows))))
    out.append(("h2", "Machine and versions"))
    if meta.get("machine") or meta.get("versions"):
        out.append(("kv", ("Ran on", [(k, _fmt(v)) for k, v in {**meta.get("machine", {}), "time": meta.get(
            "time", "")}.items()])))  # fmt: skip
        if meta.get("versions"):
            out.append(("kv", ("Versions", [(k, _fmt(v)) for k, v in meta["versions"].items()])))
    else:
        from sparkv.analysis.sweep import provenance

        here = provenance()
        out.append(("p", "The results do not record their machine; this report was generated on:"))
        out.append(("kv", ("Report machine", [(k, _fmt(v)) for k, v in here["machine"].items()])))
    return f"sparkv {kind} report: {path.name}", out


def render_html(title: str, parts: list[tuple[str, Any]]) -> str:
    e = html.escape
    body = [f"<h1>{e(title)}</h1>"]
    for kind, payload in parts:
        if kind == "h2":
            body.append(f"<h2>{e(payload)}</h2>")
        elif kind == "p":
            body.append(f"<p>{e(payload)}</p>")
        elif kind == "kv":
            caption, items = payload
            cells = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in items)
            body.append(f"<table class=\"kv\"><caption>{e(caption)}</caption>{cells}</table>")
        elif kind == "pre":
            caption, text = payload
            body.append(f"<details><summary>{e(caption)}</summary><pre>{e(text)}</pre></details>")
        elif kind == "table":
            rows, cols = payload
            head = "".join(f"<th>{e(h)}</th>" for _, h, _ in cols)
            lines = "".join("<tr>" + "".join(f"<td>{e(_fmt(r.get(k, ''), f))}</td>" for k, _, f in cols) + "</tr>"
                            for r in rows)  # fmt: skip
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{lines}</tbody></table>")
        elif kind == "figure":
            data = base64.b64encode(Path(payload).read_bytes()).decode()
            body.append(f"<figure><img alt=\"{e(Path(payload).stem)}\" src=\"data:image/png;base64,{data}\"/>"
                        f"<figcaption>{e(figure_caption(Path(payload)))}</figcaption></figure>")  # fmt: skip
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}th{background:#f3f3f3}table.kv th{text-align:left}"
             "caption{font-weight:bold;text-align:left}img{max-width:100%}figure{margin:1.5em 0}"
             "pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:12px}")  # fmt: skip
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>{e(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


def render_markdown(title: str, parts: list[tuple[str, Any]], out_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for kind, payload in parts:
        if kind == "h2":
            lines += [f"## {payload}", ""]
        elif kind == "p":
            lines += [str(payload), ""]
        elif kind == "kv":
            caption, items = payload
            lines += [f"**{caption}**", "", "| setting | value |", "|---|---|"]
            lines += [f"| {k} | {str(v).replace('|', '/')} |" for k, v in items] + [""]
        elif kind == "pre":
            lines += [f"<details><summary>{payload[0]}</summary>", "", "```json", payload[1], "```", "</details>", ""]
        elif kind == "table":
            rows, cols = payload
            lines += ["| " + " | ".join(h for _, h, _ in cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_fmt(r.get(k, ""), f) for k, _, f in cols) + " |" for r in rows] + [""]
        elif kind == "figure":
            rel = Path(payload).relative_to(out_dir) if Path(payload).is_relative_to(out_dir) else Path(payload)
            lines += [f"![{Path(payload).stem}]({rel.as_posix()})", "", f"*{figure_caption(Path(payload))}*", ""]
    return "\n".join(lines)


def write_report(results: Path, out: Path, fmt: str = "html") -> Path:
    """The report of `results` at `out` (HTML file; for md, a file with PNGs in `figures/` beside it)."""
    if fmt not in ("html", "md"):
        raise UserError(f"report format must be html or md, got {fmt!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "md":
        title, parts = sections(results, out.parent / "figures")
        out.write_text(render_markdown(title, parts, out.parent))
        return out
    with tempfile.TemporaryDirectory() as tmp:
        title, parts = sections(results, Path(tmp))
        out.write_text(render_html(title, parts))
    return out
