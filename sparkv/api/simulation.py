"""Policies on one scenario in the SimPy model: `simulate` and its `SimulationRun` (Results, table, notes)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparkv.analysis.tables import result_row
from sparkv.api.basics import TraceLoopWarning, frame, make_policy, policy_label, resolve_policy
from sparkv.core.config import Scenario
from sparkv.core.errors import UserError
from sparkv.core.result import Result
from sparkv.policies import NO_DISK_LANE, default_policies
from sparkv.sim import DEFAULT_MAX_TIME_S, SimulationStalled, World, build_world
from sparkv.sim import simulate as _simulate_one
from sparkv.traces import Trace

if TYPE_CHECKING:
    import pandas as pd


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
    names = [str(p) for p in (policies or default_policies(sc.local is not None))]
    for name in names:
        resolve_policy(name)  # fail early on an unknown name
    world = build_world(sc, trace=trace)
    options = policy_options or {}
    run = SimulationRun(sc, world, [])
    if not policies and sc.local is not None:
        run.notes.append(f"{', '.join(NO_DISK_LANE)}: not available with KV on local disk (no disk lane in its model)")
    seconds: dict[str, float] = {}
    for name in names:
        label = policy_label(name)
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
