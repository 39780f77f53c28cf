"""The trace and model spec a scenario names, loaded once per process (sweeps and tuning share them).

A worker process runs many scenarios over the same few traces and models; loading each once keeps a
sweep's cost in simulation, not in parsing trace files.
"""

from __future__ import annotations

from functools import lru_cache

from sparkv.core.model import ModelSpec, resolve_model_spec
from sparkv.traces import Trace, get_trace


@lru_cache(maxsize=64)
def cached_trace(name: str) -> Trace:
    """`get_trace(name)`, once per process."""
    return get_trace(name)


@lru_cache(maxsize=16)
def cached_spec(name: str) -> ModelSpec:
    """`resolve_model_spec(name)`, once per process."""
    return resolve_model_spec(name)
