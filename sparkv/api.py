"""The Python API: build a scenario, run policies in the simulator (or for real), sweep, validate; get tables.

    import sparkv
    sc = sparkv.scenario(context_tokens=8192, chunk_tokens=512, trace="lte:seed=1", device="cpu-smollm2")
    run = sparkv.simulate(sc, ["local", "stream", "sparkv", "oracle"])
    run.table                       # pandas DataFrame, one row per policy (configuration + outcome)
    grid = sparkv.sweep(sc, trace=["lte:seed=1", "ge:seed=2"], bandwidth_scale=[0.5, 1, 2], jobs=2)
    grid.table, grid.summary()      # one row per run; median/p90 TTFT per policy

Every table row carries the configuration that produced it (the scenario's fields, the policy and its
config, the trace's name, mean rate and length) beside the outcome (TTFT s, energy J, MB streamed, ...).
Energy is modelled (radio and compute power over the timeline) in both worlds. Traces are named as on the
command line: a file with loader options (`PATH?rate_col=Verizon&gaps=outage`), a folder, a glob, or a
synthetic spec (grammar in `sparkv.traces.options` and `sparkv.traces.specs`). Sweeps run in worker
processes: a script that calls `sweep(jobs=N)` with N > 1 needs the usual `if __name__ == "__main__":`
guard; `jobs=1` (the default) runs in this process and needs none.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkv.analysis.sweep import SweepSpec, expand, load_spec, run_sweep
from sparkv.analysis.tables import order_columns, result_row, summarise
from sparkv.core.config import LinkConfig, Scenario
from sparkv.core.errors import UserError
from sparkv.core.result import Result
from sparkv.policies import POLICIES, Policy
from sparkv.policies import make_policy as _make_registered
from sparkv.sim import DEFAULT_MAX_TIME_S, SimulationStalled, World, build_world
from sparkv.sim import simulate as _simulate_one
from sparkv.traces import Trace, get_trace

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "LinkConfig",
    "RealRun",
    "Scenario",
    "SimulationRun",
    "SweepRun",
    "TraceLoopWarning",
    "build_world",
    "frame",
    "load_trace",
    "make_policy",
    "policy_names",
    "read_table",
    "run_real",
    "save_sweep",
    "scenario",
    "simulate",
    "sweep",
    "sweep_spec",
    "validate",
]


class TraceLoopWarning(UserWarning):
    """A request ran longer than its trace, which then replayed from its start (as mahimahi does)."""


def scenario(base: Scenario | None = None, **fields: Any) -> Scenario:
    """A `Scenario` from flat keyword fields: scenario fields (model, context_tokens, chunk_tokens, trace,
    device, codec, ...), link fields by their own names (rtt_s, bandwidth_scale, radio, ...), or rtt_ms.
    A `Path` trace is taken as its string; unknown names raise UserError naming them."""
    if "rtt_ms" in fields:
        fields["rtt_s"] = float(fields.pop("rtt_ms")) / 1e3
    if isinstance(fields.get("trace"), Path):
        fields["trace"] = str(fields["trace"])
    known = set(Scenario.__dataclass_fields__) | set(LinkConfig.__dataclass_fields__)
    unknown = sorted(set(fields) - known)
    if unknown:
        raise UserError(f"unknown scenario field(s) {', '.join(unknown)}; fields: {', '.join(sorted(known))}")
    try:
        return (base or Scenario()).with_(**fields)
    except (TypeError, ValueError) as exc:
        raise UserError(f"scenario: {exc}") from exc


def load_trace(spec: str | Path) -> Trace:
    """A trace from a file (with `?key=value` loader options) or a synthetic spec; bytes/s over seconds."""
    return get_trace(str(spec))


def policy_names() -> list[str]:
    """The registered policy names."""
    return list(POLICIES)


def make_policy(name: str | Path, world: World | None = None, **options: Any) -> Policy:
    """A fresh policy: a registered name or a policy config JSON (as `sparkv tune` writes).

    The oracle plans on the future bandwidth, so it needs `world` (whose trace, link arithmetic and device
    availability it is given) or an explicit `forecast=`; without either it is refused.
    """
    registered, configured = _resolve(str(name))
    merged = {**configured, **options}
    if registered == "oracle" and "forecast" not in merged and "foresight" not in merged:
        if world is None:
            raise UserError("the oracle plans on the future bandwidth: pass world=sparkv.build_world(scenario) "
                            "(or forecast=TRACE); without it it would know only the mean")  # fmt: skip
        from sparkv.policies.oracle import oracle_options

        merged = {**oracle_options(world), **merged}
    return _make_registered(registered, **merged)


def _resolve(name: str) -> tuple[str, dict[str, Any]]:
    """(registered name, options) of a policy name or a policy config JSON file."""
    if name.endswith(".json"):
        from sparkv.analysis.tune import load_policy_config

        loaded = load_policy_config(name)
        return loaded.policy, dict(loaded.options)
    if name not in POLICIES:
        raise UserError(f"unknown policy {name!r}; choose from {', '.join(sorted(POLICIES))} or a config JSON")
    return name, {}


def _label(name: str) -> str:
    return name if not name.endswith(".json") else f"{_resolve(name)[0]}:{Path(name).stem}"


def frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A DataFrame of table rows, configuration columns first (the order of the CSV files)."""
    import pandas as pd

    listed = [dict(r) for r in rows]
    return pd.DataFrame(listed, columns=order_columns(listed) if listed else None)


def read_table(path: str | Path) -> pd.DataFrame:
    """A saved table as a DataFrame: a sweep/evaluate/validate CSV, a folder holding one, or Result JSONs."""
    from sparkv.analysis.tables import load_rows

    return frame(load_rows(Path(path)))


# ---- the simulator ----


@dataclass
class SimulationRun:
    """Policies simulated on one scenario: the Results, the policies that did not finish, and notes."""

    scenario: Scenario
    world: World
    results: list[Result]
    stalled: dict[str, str] = field(default_factory=dict)  # policy -> why it did not finish
    notes: list[str] = field(default_factory=list)  # e.g. the trace looped under a long request
    needs_longer: set[str] = field(default_factory=set)  # stalled policies that a larger max_sim_s would finish

    @property
    def table(self) -> pd.DataFrame:
        """One row per policy (finished or not), configuration and outcome columns."""
        rows = [{**result_row(r), **_trace_columns(self.world.trace, r.ttft_s, self.scenario)} for r in self.results]
        for name, why in self.stalled.items():
            rows.append({"policy": name, "world": "sim", "status": "stalled", "error": why})
        return frame(rows)

    def _repr_html_(self) -> str:  # a notebook shows the table
        return str(self.table._repr_html_())


def _trace_columns(trace: Trace, ttft_s: float, sc: Scenario) -> dict[str, Any]:
    used_s = sc.link.trace_offset_s + ttft_s
    return {"trace_duration_s": trace.duration_s, "trace_looped": bool(used_s > trace.duration_s)}


def loop_note(trace: Trace, offset_s: float, runs: Mapping[str, float]) -> str | None:
    """A one-line note if any request (policy -> simulated seconds) ran past the end of the trace."""
    over = {name: s for name, s in runs.items() if offset_s + s > trace.duration_s}
    if not over:
        return None
    longest = max(over.values()) + offset_s
    who = ", ".join(f"{n} ({s:.1f} s)" for n, s in over.items())
    return (f"trace {trace.name} is {trace.duration_s:.1f} s long and looped (up to x{longest / trace.duration_s:.1f}) "
            f"under {who}; '?loop=error' on a trace file makes this an error")  # fmt: skip


def simulate(
    scenario: Scenario | None = None,
    policies: Sequence[str | Path] | None = None,
    *,
    trace: Trace | None = None,
    max_sim_s: float = DEFAULT_MAX_TIME_S,
    record: bool = True,
    policy_options: Mapping[str, Mapping[str, Any]] | None = None,
    warn: bool = True,
) -> SimulationRun:
    """Run `policies` (default: every registered one) on one scenario in the SimPy model.

    `trace` replaces the scenario's trace by an object already loaded; `policy_options` gives options per
    policy name (`{"sparkv": {"config": SparKVConfig(...)}}`); `max_sim_s` is how long a request may take
    in simulated seconds before it counts as not finished. A request that outlives its trace is noted in
    `notes` (and warned about with `TraceLoopWarning` unless `warn=False`).
    """
    sc = scenario or Scenario()
    if not max_sim_s > 0:
        raise UserError(f"max_sim_s must be > 0, got {max_sim_s}")
    names = [str(p) for p in (policies or list(POLICIES))]
    for name in names:
        _resolve(name)  # fail early on an unknown name
    world = build_world(sc, trace=trace)
    options = policy_options or {}
    run = SimulationRun(sc, world, [])
    seconds: dict[str, float] = {}
    for name in names:
        label = _label(name)
        try:
            result = _simulate_one(world, make_policy(name, world, **options.get(name, {})), max_time_s=max_sim_s,
                                   record=record)  # fmt: skip
        except SimulationStalled as exc:
            run.stalled[label] = str(exc)
            if getattr(exc, "needs_longer", False):
                run.needs_longer.add(label)
            seconds[label] = max_sim_s
            continue
        result.policy = label
        run.results.append(result)
        seconds[label] = result.ttft_s
    note = loop_note(world.trace, sc.link.trace_offset_s, seconds)
    if note is not None:
        _apply_loop_rule(run, note)
        if warn:
            warnings.warn(note, TraceLoopWarning, stacklevel=2)
    return run


def _apply_loop_rule(run: SimulationRun, note: str) -> None:
    """`?loop=error` on the trace: a run that outlived it does not count (it moves to `stalled`)."""
    if run.world.trace.info.get("loop") != "error":
        run.notes.append(note)
        return
    offset = run.scenario.link.trace_offset_s
    kept = []
    for r in run.results:
        if offset + r.ttft_s > run.world.trace.duration_s:
            run.stalled[r.policy] = f"ran {r.ttft_s:.1f} s, past the end of trace {run.world.trace.name} (loop=error)"
        else:
            kept.append(r)
    run.results = kept
    run.notes.append(note.split(";")[0] + "; those runs count as errors (loop=error)")


# ---- sweeps ----


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
    keep_results: str | Path | None = None,
    progress: bool = False,
    **axes: Any,
) -> SweepRun:
    """Simulate a grid (or, with mode="list", a zip) of scenarios x policies; one row per run.

    Axes are keyword lists: trace (files with options, folders, globs, specs), bandwidth_scale, rtt_ms,
    chunk_tokens, context_tokens, model, device, codec, policy (names or config JSONs), radio, seed, any
    other scenario or link field. `jobs` > 1 runs local worker processes; backend="ray" uses Ray (at
    `ray_address`, else a local one). `keep_results` saves every Result JSON in that folder.
    """
    if ray_address is not None and backend != "ray":
        raise UserError(f"ray_address={ray_address!r} needs backend='ray' (got backend={backend!r})")
    if jobs < 1:
        raise UserError(f"jobs must be >= 1, got {jobs}")
    from sparkv.analysis.backends import make_backend

    plan = sweep_spec(base, mode=mode, spec=spec, **axes)
    points = expand(plan)
    runner = make_backend(backend, jobs, ray_address, preload=["sparkv.analysis.sweep"])
    start = time.perf_counter()
    try:
        rows = run_sweep(points, runner, Path(keep_results) if keep_results else None, progress=progress)
    finally:
        runner.close()
    wall_s = time.perf_counter() - start
    notes = _add_loop_columns(rows)
    return SweepRun(plan, points, rows, runner.name, runner.workers, wall_s, notes)


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
            "status": run.counts(), "backend": run.backend, "workers": run.workers, "wall_s": run.wall_s,
            "notes": run.notes, "argv": list(argv), **provenance()}  # fmt: skip
    (out / "sweep.json").write_text(json.dumps(meta, indent=1, default=str))
    written["json"] = out / "sweep.json"
    return written


# ---- the real executor ----


@dataclass
class RealRun:
    """Policies run for real on one document: the Results and what the session used."""

    scenario: Scenario  # as run: measured token counts, the bandwidth scale and link constants used
    results: list[Result]
    link: str  # which link shaped the trace (netns/tbf or pacing) and why
    link_constants: str  # where rtt / per-transfer / efficiency came from
    model_id: str
    question: str
    reference: str
    metric: str  # how answers were scored against the reference

    @property
    def table(self) -> pd.DataFrame:
        """One row per policy: configuration, measured outcome, executor idle %, the full answer and its score."""
        from sparkv.analysis.overhead import overhead
        from sparkv.analysis.scoring import matches, score

        rows = []
        for r in self.results:
            answer = str(r.extra.get("text", "")).strip()
            rows.append({**result_row(r), "idle_pct": overhead(r).idle_pct, "answer": answer,
                         "reference": self.reference, "metric": self.metric,
                         "answer_score": score(self.metric, answer, self.reference),
                         "answer_matches": matches(self.metric, answer, self.reference)})  # fmt: skip
        return frame(rows)


def auto_bandwidth_scale(sc: Scenario) -> float:
    """Bandwidth scale at which streaming everything takes as long as computing everything (predicted)."""
    world = build_world(sc)
    compute_s = float(world.costs.compute_cell_s.sum())
    wire = float(world.costs.cell_bytes.sum()) / sc.link.efficiency
    return wire / compute_s / world.trace.mean_bps


def run_real(
    scenario: Scenario | None = None,
    policies: Sequence[str | Path] = ("local", "stream", "cake", "static", "sparkv"),
    *,
    document: str = "builtin",
    link: str = "auto",
    torch_device: str = "cpu",
    max_new_tokens: int = 16,
    bandwidth_scale: float | str | None = None,
    on_start: Any = None,
) -> RealRun:
    """Run `policies` for real: the model prefilled layer by layer, a KV server process, a link replaying
    the trace (`link`: netns, pacing or auto). `document` is `builtin` or `FILE.jsonl[:INDEX][?fields]`
    (see `sparkv.analysis.documents`); `bandwidth_scale="auto"` picks the scale at which streaming and
    computing everything take as long (predicted), a number sets it, None keeps the scenario's.
    `on_start(session)` is called once the link is up (the CLI prints what it uses)."""
    from sparkv.analysis.documents import load_document

    sc = scenario or Scenario()
    names = [str(p) for p in policies]
    for name in names:
        if _resolve(name)[0] == "oracle":
            raise UserError("the oracle needs the future trace; it runs in the simulator only")
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    context, question, answer, metric = load_document(document, sc.context_tokens)
    from sparkv.executor.session import RealSession

    session = RealSession(sc, (context, question, answer), link_kind=link, device=torch_device)
    if bandwidth_scale is not None:
        scale = auto_bandwidth_scale(session.scenario) if bandwidth_scale == "auto" else float(bandwidth_scale)
        session = RealSession(session.scenario.with_(bandwidth_scale=scale), (context, question, answer),
                              link_kind=link, loaded=session.loaded)  # fmt: skip
    results: list[Result] = []
    with session:
        if on_start is not None:
            on_start(session)
        for name in names:
            result = session.run(make_policy(name), max_new_tokens=max_new_tokens)
            result.policy = _label(name)
            results.append(result)
    return RealRun(session.scenario, results, session.link_description(), session.link_constants,
                   session.loaded.model_id, question, answer, metric)  # fmt: skip


def validate(
    scenario: Scenario | None = None,
    traces: Sequence[str | Path] = ("lte:seed=1",),
    policies: Sequence[str] = ("local", "stream", "cake", "sparkv"),
    *,
    document: str = "builtin",
    link: str = "pacing",
    bandwidth_scale: float | str | None = "auto",
    repeats: int = 1,
    probe: bool = True,
    speed_tolerance: float = 0.08,
    attempts: int = 3,
    progress: Any = print,
) -> pd.DataFrame:
    """The same requests in the real executor and in the simulator: one row per (trace, policy) with
    predicted and measured TTFT (s), the error (%), and how many of the real run's decisions a fresh
    policy replaying its log did differently (0 expected). Traces take the full trace grammar."""
    from sparkv.analysis.documents import load_document
    from sparkv.analysis.validate import pair_row, run_validation
    from sparkv.traces.expand import expand_traces

    sc = scenario or Scenario()
    if repeats < 1 or attempts < 1:
        raise UserError(f"repeats and attempts must be >= 1, got {repeats}, {attempts}")
    for name in policies:
        if _resolve(name)[0] == "oracle":
            raise UserError("the oracle needs the future trace; it runs in the simulator only")
    if bandwidth_scale not in (None, "auto"):
        sc = sc.with_(bandwidth_scale=float(bandwidth_scale))
    context, question, answer, _ = load_document(document, sc.context_tokens)
    pairs = run_validation(expand_traces([str(t) for t in traces]), list(policies), sc, (context, question, answer),
                           link, auto_bandwidth_scale if bandwidth_scale == "auto" else None, progress=progress,
                           make=make_policy, repeats=repeats, probe=probe, speed_tolerance=speed_tolerance,
                           attempts=attempts)  # fmt: skip
    return frame(pair_row(p) for p in pairs)
