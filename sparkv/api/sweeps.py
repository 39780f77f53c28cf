"""Sweeps in the simulator: `sweep` over axes of scenario fields and policies, `SweepRun`, `save_sweep`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkv.analysis.sweep import SweepInterrupted, SweepSpec, expand, load_spec, run_sweep
from sparkv.analysis.sweep_store import RunStore
from sparkv.analysis.tables import summarise
from sparkv.api.basics import frame
from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.traces import get_trace

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class SweepRun:
    """A finished sweep: its spec and points, one row per point, and how it ran."""

    spec: SweepSpec
    points: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    backend: str
    workers: int
    wall_s: float
    notes: list[str] = field(default_factory=list)
    reused: int = 0  # rows taken from the runs folder, not computed (resume)

    @property
    def computed(self) -> int:
        """Runs simulated by this call (the others were reused)."""
        return len(self.rows) - self.reused

    @property
    def table(self) -> pd.DataFrame:
        """One row per run (status ok, stalled or error), configuration and outcome columns."""
        return frame(self.rows)

    def summary(self, by: str = "policy") -> pd.DataFrame:
        """Per `by` value: runs, stalls, errors, median and p90 TTFT (s), mean energy (J), mean MB streamed."""
        return frame(summarise(self.rows, by))

    def counts(self) -> dict[str, int]:
        return {s: sum(r["status"] == s for r in self.rows) for s in ("ok", "stalled", "error")}

    def _repr_html_(self) -> str:
        return str(self.summary()._repr_html_())


def sweep_spec(base: Scenario | Mapping[str, Any] | None = None, *, mode: str = "grid",
               spec: SweepSpec | str | Path | None = None, **axes: Any) -> SweepSpec:  # fmt: skip
    """A sweep spec: `spec` (a SweepSpec or a JSON/TOML file) with `axes` (name=[values], or one value)
    replacing its axes and `base` (a Scenario or flat fields) under its base."""
    loaded = spec if isinstance(spec, SweepSpec) else load_spec(Path(spec)) if spec is not None else SweepSpec({})
    merged_axes = dict(loaded.axes)
    for name, values in axes.items():
        if values is None:
            continue
        if isinstance(values, str | Path | int | float) or not isinstance(values, Iterable):
            values = [values]
        merged_axes[name] = [str(v) if isinstance(v, Path) else v for v in values]
    base_fields: dict[str, Any] = dict(loaded.base)
    if isinstance(base, Scenario):
        base_fields = {**_flat(base), **base_fields}
    elif base is not None:
        base_fields = {**dict(base), **base_fields}
    return SweepSpec(merged_axes, mode or loaded.mode, base_fields)


def _flat(sc: Scenario) -> dict[str, Any]:
    data = sc.to_dict()
    link = data.pop("link")
    return {**data, **link}


def sweep(
    base: Scenario | Mapping[str, Any] | None = None,
    *,
    mode: str = "grid",
    spec: SweepSpec | str | Path | None = None,
    jobs: int = 1,
    backend: str = "local",
    ray_address: str | None = None,
    runs: str | Path | None = None,
    resume: bool = True,
    keep_results: bool | str | Path = False,
    progress: bool = False,
    **axes: Any,
) -> SweepRun:
    """Simulate a grid (or, with mode="list", a zip) of scenarios x policies; one row per run.

    Axes are keyword lists: trace (files with options, folders, globs, specs), bandwidth_scale, rtt_ms,
    chunk_tokens, context_tokens, model, device, codec, policy (names or config JSONs), radio, seed, any
    other scenario or link field. `jobs` > 1 runs local worker processes; backend="ray" uses Ray (at
    `ray_address`, else a local one). `runs` is a folder with one sub-folder per run, named by its job key
    (a hash of the run's full configuration): each finished run's row is stored there, and with `resume`
    (the default) a run already stored there by the same sparkv code is not run again. `keep_results`
    also saves each run's Result JSON in its folder (a path given here is taken as `runs`).
    """
    if ray_address is not None and backend != "ray":
        raise UserError(f"ray_address={ray_address!r} needs backend='ray' (got backend={backend!r})")
    if jobs < 1:
        raise UserError(f"jobs must be >= 1, got {jobs}")
    from sparkv.analysis.backends import make_backend

    if isinstance(keep_results, str | Path):
        runs, keep_results = runs or keep_results, True
    if keep_results and runs is None:
        raise UserError("keep_results needs a folder: pass runs=FOLDER (or keep_results=FOLDER)")
    plan = sweep_spec(base, mode=mode, spec=spec, **axes)
    points = expand(plan)
    store = RunStore(Path(runs), keep_results=bool(keep_results), reuse=resume) if runs is not None else None
    runner = make_backend(backend, jobs, ray_address, preload=["sparkv.analysis.sweep"])
    start = time.perf_counter()
    interrupted = False
    try:
        rows = run_sweep(points, runner, store, progress=progress)
    except SweepInterrupted:  # Ctrl-C: its finished rows travel with it; running workers are stopped now
        interrupted = True
        raise
    finally:
        runner.close(now=interrupted)
    wall_s = time.perf_counter() - start
    notes = _add_loop_columns(rows)
    reused = store.reused if store else 0
    return SweepRun(plan, points, rows, runner.name, runner.workers, wall_s, notes, reused=reused)


def _add_loop_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Each row's trace length (s) and whether its request outlived the trace; one note per such trace."""
    durations: dict[str, float] = {}
    looped: dict[str, int] = {}
    for row in rows:
        name = str(row.get("trace", ""))
        if name not in durations:
            try:
                durations[name] = get_trace(name).duration_s
            except (UserError, ValueError):
                durations[name] = float("nan")
        ttft = row.get("ttft_s")
        used = (row.get("trace_offset_s") or 0.0) + (ttft if isinstance(ttft, int | float) else 0.0)
        row["trace_duration_s"] = durations[name]
        row["trace_looped"] = bool(used > durations[name])
        looped[name] = looped.get(name, 0) + row["trace_looped"]
    return [f"trace {name} ({durations[name]:.1f} s) looped under {n} run(s) that outlived it"
            for name, n in looped.items() if n]  # fmt: skip


def save_sweep(run: SweepRun, out: Path, argv: Sequence[str] = ()) -> dict[str, Path]:
    """results.csv (and results.parquet when pyarrow is importable) and sweep.json (spec, provenance)."""
    from sparkv.analysis.sweep import provenance
    from sparkv.analysis.tables import write_csv, write_parquet

    out.mkdir(parents=True, exist_ok=True)
    written = {"csv": write_csv(run.rows, out / "results.csv")}
    parquet = write_parquet(run.rows, out / "results.parquet")
    if parquet is not None:
        written["parquet"] = parquet
    traces = list(dict.fromkeys(p["scenario"]["trace"] for p in run.points))
    meta = {"kind": "sweep", "spec": run.spec.to_dict(), "traces": traces, "runs": len(run.rows),
            "computed": run.computed, "reused": run.reused,
            "status": run.counts(), "backend": run.backend, "workers": run.workers, "wall_s": run.wall_s,
            "notes": run.notes, "complete": True, "argv": list(argv), **provenance()}  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(meta, indent=1, default=str))
    written["json"] = out / "sweep.json"
    return written
