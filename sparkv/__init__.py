"""sparkv: decide, per (chunk x layer) cell, whether an on-device LLM streams its KV cache or computes it.

Units inside the package are SI and bytes: seconds (`_s`), bytes (`_bytes`), bytes per second (`_bps`),
joules (`_j`) and watts (`_w`). Bits per second appear only at the edges (loaders, printed tables).

The Python API lives in `sparkv.api`; its main names are importable from here too (loaded on first use,
so `import sparkv` stays light for the command line):

    import sparkv
    run = sparkv.simulate(sparkv.scenario(trace="lte:seed=1"), ["local", "stream", "sparkv"])
    run.table   # a pandas DataFrame
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API_NAMES = (
    "LinkConfig", "Scenario", "SimulationRun", "SweepRun", "RealRun", "TraceLoopWarning", "build_world", "frame",
    "load_trace", "make_policy", "policy_names", "read_table", "run_real", "scenario", "simulate", "sweep",
    "sweep_spec", "tune", "TuneRun", "validate",
)  # fmt: skip

__all__ = ["__version__", *_API_NAMES]


def __getattr__(name: str) -> Any:
    """`sparkv.simulate` and the other API names, imported from `sparkv.api` when first asked for."""
    if name in _API_NAMES:
        from sparkv import api

        return getattr(api, name)
    raise AttributeError(f"module 'sparkv' has no attribute {name!r}")
