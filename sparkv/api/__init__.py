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

from sparkv.api.basics import (
    TraceLoopWarning,
    frame,
    load_trace,
    make_policy,
    policy_names,
    read_table,
    scenario,
)
from sparkv.api.real import RealRun, auto_bandwidth_scale, run_real, validate
from sparkv.api.simulation import SimulationRun, loop_note, simulate
from sparkv.api.sweeps import SweepRun, save_sweep, sweep, sweep_spec
from sparkv.api.tuning import TuneRun, tune
from sparkv.core.config import LinkConfig, Scenario
from sparkv.sim import World, build_world

__all__ = [
    "LinkConfig",
    "RealRun",
    "Scenario",
    "SimulationRun",
    "SweepRun",
    "TraceLoopWarning",
    "TuneRun",
    "World",
    "auto_bandwidth_scale",
    "build_world",
    "frame",
    "load_trace",
    "loop_note",
    "make_policy",
    "policy_names",
    "read_table",
    "run_real",
    "save_sweep",
    "scenario",
    "simulate",
    "sweep",
    "sweep_spec",
    "tune",
    "validate",
]
