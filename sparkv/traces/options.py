"""Loader options written into a trace argument: `PATH?KEY=VALUE&KEY=VALUE`, accepted wherever a trace is.

Every command that takes a trace (simulate, run, evaluate, sweep, tune, validate, traces show) and the
Python API read the same grammar, so a file whose layout needs options can be named anywhere, with its
own options beside it:

    car-driving-trace-1.csv?carrier=tmobile                   5Gophers, one of several carrier columns
    log.csv?format=columns&time_col=0&rate_col=1&rate_unit=B/s    a headerless time_s,bytes_per_second CSV
    walk.csv?gaps=outage&loop=error                           missing seconds carry nothing; no looping
    'traces/5g/*.csv?carrier=verizon'                         a glob (or a folder): every file gets them

Quote the argument in a shell (`?` and `&` are special there). Keys:

| key        | values                                              | default                                |
|------------|-----------------------------------------------------|----------------------------------------|
| format     | auto, mahimahi, pensieve, 5gophers, gnettrack, nyu-mets, columns | auto (detected from the file) |
| rate_col   | the rate column, by header name or 0-based index    | the format's (5Gophers: the only one)  |
| carrier    | the same as rate_col (5Gophers: `tmobile` finds `TMobile_throughput_mbps`) |                 |
| rate_unit  | bps, kbps, Mbps, Gbps (bits); B/s, KB/s, MB/s, GB/s | the format's                           |
| time_col   | the time column, name or index                      | the format's; none: one row per interval_s |
| time_unit  | s, ms, us, min, or a strptime pattern               | s                                      |
| interval_s | seconds per row without a time column               | 1                                      |
| window_s   | mahimahi bin width, s                               | 0.1                                    |
| delimiter  | field separator (`,` `;` `tab`)                     | comma if the first line has one, else blanks |
| gaps       | fill, outage, error                                 | fill                                   |
| loop       | repeat, error                                       | repeat                                 |

Gaps are missing time: a timestamp step longer than 1.5 x the usual one (5Gophers' `seq_num` jumping from
102 to 109), or a row whose rate is missing. `fill` holds the rate before the gap through it, `outage`
makes the missing time carry 0 bytes/s, `error` refuses the file and names the gap. The trace keeps the
gaps' length either way (a 5Gophers file with 6 missing seconds lasts 6 s longer than its rows).

A trace replays from its start when a request outlives it (mahimahi does the same). With `loop=repeat`
the simulator's callers warn when that happens; with `loop=error` such a run counts as an error.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from sparkv.core.errors import UserError
from sparkv.traces.columns import GAP_MODES

LOOP_MODES = ("repeat", "error")
KEYS = ("format", "rate_col", "carrier", "rate_unit", "time_col", "time_unit", "interval_s", "window_s",
        "delimiter", "gaps", "loop")  # fmt: skip
_QUERY = re.compile(r"^[A-Za-z_]+=[^&]*(?:&[A-Za-z_]+=[^&]*)*$")
_DELIMITERS = {"tab": "\t", "comma": ",", "semicolon": ";", "space": " "}


def split_trace_arg(text: str) -> tuple[str, dict[str, str]]:
    """(path or spec, options) of a trace argument; no options unless the part after the last `?` reads
    as KEY=VALUE pairs (so a glob such as `trace?.csv` is left alone)."""
    head, mark, query = str(text).rpartition("?")
    if not mark or not _QUERY.match(query):
        return str(text), {}
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(KEYS))
    if unknown:
        raise UserError(f"trace {text!r}: unknown option(s) {', '.join(unknown)}; options: {', '.join(KEYS)}")
    return head, {k.lower(): v.strip() for k, v in options.items()}


def join_trace_arg(path: str, options: dict[str, str]) -> str:
    """The argument `split_trace_arg` reads back as (path, options)."""
    if not options:
        return path
    return path + "?" + "&".join(f"{k}={v}" for k, v in options.items())


def loader_options(text: str, options: dict[str, str]) -> tuple[str, dict[str, Any], str]:
    """(format, loader keyword options, loop mode) from string options; UserError naming a bad value."""
    opts: dict[str, Any] = {}
    fmt = options.get("format", "auto") or "auto"
    for key in ("rate_col", "rate_unit", "time_col", "time_unit"):
        if options.get(key):
            opts[key] = options[key]
    if options.get("carrier"):
        if "rate_col" in opts:
            raise UserError(f"trace {text!r}: give carrier or rate_col, not both")
        opts["rate_col"] = options["carrier"]
    for key in ("interval_s", "window_s"):
        if options.get(key):
            try:
                opts[key] = float(options[key])
            except ValueError:
                raise UserError(f"trace {text!r}: {key} must be a number of seconds, got {options[key]!r}") from None
    if options.get("delimiter"):
        opts["delimiter"] = _DELIMITERS.get(options["delimiter"].lower(), options["delimiter"])
    gaps = options.get("gaps", "")
    if gaps:
        if gaps not in GAP_MODES:
            raise UserError(f"trace {text!r}: gaps must be one of {', '.join(GAP_MODES)}, got {gaps!r}")
        opts["gaps"] = gaps
    loop = options.get("loop", "repeat") or "repeat"
    if loop not in LOOP_MODES:
        raise UserError(f"trace {text!r}: loop must be one of {', '.join(LOOP_MODES)}, got {loop!r}")
    return fmt, opts, loop
