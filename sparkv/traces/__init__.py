"""Bandwidth traces: one `Trace` type (bytes/s over seconds, looping), loaders, generators, statistics."""

from sparkv.traces.bench import integral_vs_stepping
from sparkv.traces.columns import load_columns
from sparkv.traces.loaders import (
    FORMATS,
    detect_format,
    load_5gophers,
    load_gnettrack,
    load_mahimahi,
    load_nyu_mets,
    load_pensieve,
    load_trace,
)
from sparkv.traces.plot import plot_trace_panels, plot_traces
from sparkv.traces.specs import SPEC_KINDS, by_name, get_trace, is_spec
from sparkv.traces.stats import TraceStats, trace_stats
from sparkv.traces.synthetic import constant, fitted, gilbert_elliott, lte_like, steps
from sparkv.traces.trace import Trace, concat
from sparkv.traces.units import parse_duration, parse_rate

__all__ = [
    "FORMATS",
    "SPEC_KINDS",
    "Trace",
    "TraceStats",
    "by_name",
    "concat",
    "constant",
    "detect_format",
    "fitted",
    "get_trace",
    "gilbert_elliott",
    "integral_vs_stepping",
    "is_spec",
    "load_5gophers",
    "load_columns",
    "load_gnettrack",
    "load_mahimahi",
    "load_nyu_mets",
    "load_pensieve",
    "load_trace",
    "lte_like",
    "parse_duration",
    "parse_rate",
    "plot_trace_panels",
    "plot_traces",
    "steps",
    "trace_stats",
]
