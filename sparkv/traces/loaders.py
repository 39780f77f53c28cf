"""Loaders for public bandwidth-trace formats, each turning its file into one `Trace` (bytes/s, seconds).

| format    | layout                                                    | rule                           |
|-----------|-----------------------------------------------------------|--------------------------------|
| mahimahi  | one integer ms timestamp per line = one 1500-byte packet  | binned into `window_s` (0.1 s) |
| pensieve  | `<time_s> <Mbit/s>` (Pensieve "cooked"), irregular times  | rate holds to next timestamp   |
| 5gophers  | CSV, `throughput_mbps` or `<carrier>_throughput_mbps`     | one row per second             |
| gnettrack | CSV, `Timestamp` YYYY.MM.DD_HH.MM.SS, `DL_bitrate` kbit/s | repeated s averaged, gaps held |
| nyu-mets  | `<value>,<unit>` per line, unit bits/Kbits/Mbits per sec  | one line per second            |
| columns   | any table: the user names rate/time columns and units     | see `sparkv.traces.columns`    |

Mahimahi replays its file in a loop whose period is the last timestamp, delivering every line once per
loop; binning keeps both, so bytes per loop are exact. Bins are `window_s` wide; the last may be shorter,
or up to 1.5 windows long, so that no sliver of a bin turns a few packets into a rate spike. 100 ms keeps
the sub-second fades that matter for a transfer of a few MB while making the trace 100x smaller than its
1 ms source. Pensieve's own simulator applies a sample to the interval that ends at its timestamp; here it
applies to the interval that starts there (the convention of every other loader), and the last sample
holds for the median sample interval.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sparkv.core.errors import UserError
from sparkv.traces.columns import Column, is_number, load_columns, read_lines, resolve_column, split_fields
from sparkv.traces.trace import Trace
from sparkv.traces.units import rate_unit_factor

MAHIMAHI_PACKET_BYTES = 1500
GNETTRACK_TIME = "%Y.%m.%d_%H.%M.%S"
_NYU_LINE = re.compile(r"^\s*([-+]?[0-9.]+(?:[eE][-+]?\d+)?)\s*,\s*([A-Za-z]+/sec)\s*$")
_INT_LINE = re.compile(r"^\d+$")
_DETECT_LINES = 50


def load_mahimahi(path: str | Path, window_s: float = 0.1, name: str | None = None) -> Trace:
    """Mahimahi packet-delivery opportunities (ms timestamps), binned into windows of `window_s`."""
    p = Path(path)
    if not window_s > 0:
        raise UserError(f"{p}: window_s must be > 0, got {window_s!r}")
    stamps: list[int] = []
    for lineno, text in read_lines(p):
        if not _INT_LINE.match(text):
            raise UserError(f"{p}:{lineno}: expected a millisecond timestamp (non-negative integer), got {text!r}")
        ms = int(text)
        if stamps and ms < stamps[-1]:
            raise UserError(f"{p}:{lineno}: timestamps must not decrease ({ms} after {stamps[-1]})")
        stamps.append(ms)
    period_ms = stamps[-1]
    if period_ms <= 0:
        raise UserError(f"{p}: last timestamp must be > 0 ms (it is the loop period), got {period_ms}")
    duration_s = period_ms / 1000.0
    window_ms = window_s * 1000.0
    n_bins = max(1, int(np.ceil(period_ms / window_ms - 1e-9)))
    bins = np.minimum((np.asarray(stamps, dtype=np.float64) // window_ms).astype(np.int64), n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    starts = np.arange(n_bins, dtype=np.float64) * window_s
    if n_bins > 1 and duration_s - starts[-1] < 0.5 * window_s:  # fold a sliver of a last bin into the one before
        counts[-2] += counts[-1]
        counts, starts = counts[:-1], starts[:-1]
    widths = np.diff(np.append(starts, duration_s))
    rates = counts * MAHIMAHI_PACKET_BYTES / widths
    return Trace(starts, rates, duration_s, name if name is not None else p.name, str(p))


def load_pensieve(path: str | Path, name: str | None = None, gaps: str = "fill") -> Trace:
    """Pensieve "cooked" traces: whitespace-separated `<time_s> <Mbit/s>` lines."""
    return load_columns(path, rate_col=1, rate_unit="Mbps", time_col=0, time_unit="s", name=name, gaps=gaps)


def load_nyu_mets(path: str | Path, name: str | None = None) -> Trace:
    """NYU-METS: `<value>,<unit>` one line per second, units mixed within a file."""
    p = Path(path)
    rates: list[float] = []
    for lineno, text in read_lines(p):
        m = _NYU_LINE.match(text)
        if not m:
            raise UserError(f"{p}:{lineno}: expected '<number>,<bits|Kbits|Mbits|Gbits>/sec', got {text!r}")
        try:
            factor = rate_unit_factor(m.group(2))
        except ValueError:
            raise UserError(f"{p}:{lineno}: unknown unit {m.group(2)!r}, expected bits/Kbits/Mbits/sec") from None
        value = float(m.group(1))
        if value < 0:
            raise UserError(f"{p}:{lineno}: expected a rate >= 0, got {text!r}")
        rates.append(value * factor)
    return Trace.from_samples(rates, 1.0, name if name is not None else p.name, str(p))


def load_5gophers(path: str | Path, rate_col: Column | None = None, name: str | None = None,
                  gaps: str = "fill") -> Trace:  # fmt: skip
    """5Gophers CSV, one row per second numbered by `seq_num` (a jump in it is a gap, see `gaps`).
    `rate_col` picks a carrier column (`Verizon` is enough); the name then says which."""
    p = Path(path)
    header = split_fields(read_lines(p)[0][1], ",")
    candidates = [h for h in header if h.lower().endswith("throughput_mbps")]
    if rate_col is None:
        if len(candidates) != 1:
            carriers = ", ".join(h[: -len("_throughput_mbps")] or h for h in candidates) or "none"
            raise UserError(
                f"{p}: {len(candidates)} throughput columns (carriers {carriers}); choose one as "
                f"'{p}?carrier={candidates[0][: -len('_throughput_mbps')].lower() if candidates else 'NAME'}'"
            )
        rate_col = candidates[0]
    elif isinstance(rate_col, str) and rate_col.lower() not in (h.lower() for h in header):
        short = [h for h in candidates if h.lower() == f"{rate_col.lower()}_throughput_mbps"]
        if not short:
            carriers = ", ".join(h[: -len("_throughput_mbps")] for h in candidates if h.lower() != "throughput_mbps")
            raise UserError(f"{p}: no carrier or column {rate_col!r}; carriers: {carriers or 'none'}; "
                            f"columns: {', '.join(header)}")  # fmt: skip
        rate_col = short[0]
    if name is None and len(candidates) > 1:
        chosen = header[resolve_column(rate_col, header, p, "rate")]
        name = f"{p.name}[{chosen.removesuffix('_throughput_mbps').removesuffix('_THROUGHPUT_MBPS')}]"
    seq = "seq_num" if "seq_num" in (h.lower() for h in header) else None
    return load_columns(p, rate_col=rate_col, rate_unit="Mbps", time_col=seq, time_unit="s", interval_s=1.0,
                        delimiter=",", name=name, gaps=gaps)  # fmt: skip


def load_gnettrack(path: str | Path, rate_col: Column = "DL_bitrate", name: str | None = None,
                   gaps: str = "fill") -> Trace:  # fmt: skip
    """G-NetTrack Pro CSV (kbit/s). Repeated seconds are averaged; gaps and `-` follow `gaps` (default: hold
    the previous rate)."""
    return load_columns(
        path, rate_col=rate_col, rate_unit="kbps", time_col="Timestamp", time_unit=GNETTRACK_TIME,
        interval_s=1.0, delimiter=",", name=name, gaps=gaps,
    )  # fmt: skip


_LOADERS: dict[str, Callable[..., Trace]] = {
    "mahimahi": load_mahimahi,
    "pensieve": load_pensieve,
    "5gophers": load_5gophers,
    "gnettrack": load_gnettrack,
    "nyu-mets": load_nyu_mets,
    "columns": load_columns,
}
_ALIASES = {
    "cooked": "pensieve",
    "nyu": "nyu-mets",
    "g-nettrack": "gnettrack",
    "csv": "columns",
    "generic": "columns",
}
FORMATS: tuple[str, ...] = tuple(_LOADERS)
_OPTIONS = {
    "mahimahi": {"window_s"},
    "pensieve": {"gaps"},
    "5gophers": {"rate_col", "gaps"},
    "gnettrack": {"rate_col", "gaps"},
    "nyu-mets": set(),
    "columns": {"rate_col", "rate_unit", "time_col", "time_unit", "interval_s", "delimiter", "gaps"},
}

# Self-describing headers for `columns` auto-detection: lower-cased column name -> unit.
_TIME_NAMES = {
    "time": "s",
    "time_s": "s",
    "t": "s",
    "t_s": "s",
    "seconds": "s",
    "time_ms": "ms",
    "timestamp_ms": "ms",
}
_RATE_SUFFIXES = (
    ("bytes_per_second", "B/s"), ("bytes_per_sec", "B/s"), ("bytes_per_s", "B/s"), ("bits_per_second", "bps"),
    ("gbps", "Gbps"), ("mbps", "Mbps"), ("kbps", "kbps"), ("mbit_s", "Mbps"), ("kbit_s", "kbps"),
)  # fmt: skip


def _clip(text: str, n: int = 60) -> str:
    """repr of a line, shortened for an error message."""
    return repr(text if len(text) <= n else text[: n - 3] + "...")


def _self_describing(header: list[str]) -> dict[str, Any] | None:
    """Options for `load_columns` if the header names one time column and one rate column with units."""
    times = [h for h in header if h.lower() in _TIME_NAMES]
    rates = [(h, u) for h in header for suffix, u in _RATE_SUFFIXES if h.lower().endswith(suffix)]
    rates = [rates[i] for i in range(len(rates)) if rates[i][0] not in (r[0] for r in rates[:i])]
    if len(rates) != 1 or len(times) > 1:
        return None
    opts: dict[str, Any] = {"rate_col": rates[0][0], "rate_unit": rates[0][1]}
    if times:
        opts.update(time_col=times[0], time_unit=_TIME_NAMES[times[0].lower()])
    return opts


def detect(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(format, options implied by the file) from its first lines; UserError naming the first misfit."""
    p = Path(path)
    lines = read_lines(p)[:_DETECT_LINES]
    first_no, first = lines[0]
    fields = split_fields(first, "," if "," in first else None)
    if not any(is_number(f) for f in fields if f):  # a header line
        lowered = {f.lower() for f in fields}
        if {"timestamp", "dl_bitrate"} <= lowered:
            return "gnettrack", {}
        if any(f.endswith("throughput_mbps") for f in lowered):
            return "5gophers", {}
        opts = _self_describing(fields)
        if opts is not None:
            return "columns", opts
        raise UserError(
            f"{p}:{first_no}: header {_clip(first)} matches no known format; expected G-NetTrack (Timestamp, "
            "DL_bitrate), 5Gophers (throughput_mbps) or a time column plus one rate column named with its "
            f"unit (e.g. time_s,bytes_per_second); or name them: '{p}?format=columns&rate_col=NAME&rate_unit=Mbps'"
        )
    tests = (
        ("mahimahi", lambda s: bool(_INT_LINE.match(s))),
        ("nyu-mets", lambda s: bool(_NYU_LINE.match(s))),
        ("pensieve", lambda s: len(s.split()) == 2 and all(is_number(x) for x in s.split())),
    )
    for fmt, fits in tests:
        if fits(first):
            for lineno, text in lines[1:]:
                if not fits(text):
                    raise UserError(f"{p}:{lineno}: looks like {fmt} from line {first_no}, but got {_clip(text)}")
            return fmt, {}
    raise UserError(
        f"{p}:{first_no}: cannot tell the format from {_clip(first)}; expected a mahimahi ms timestamp, "
        "'<time_s> <Mbit/s>', '<value>,<unit>/sec' or a header line; or name the columns, e.g. "
        f"'{p}?format=columns&time_col=0&rate_col=1&rate_unit=B/s'"
    )


def detect_format(path: str | Path) -> str:
    """The format name `load_trace(path)` would use."""
    return detect(path)[0]


def load_trace(path: str | Path, fmt: str = "auto", name: str | None = None, **opts: Any) -> Trace:
    """Load a trace file of format `fmt` (one of FORMATS, or 'auto'); options go to that format's loader."""
    fmt = _ALIASES.get(fmt.lower(), fmt.lower())
    implied: dict[str, Any] = {}
    if fmt == "auto":
        fmt, implied = detect(path)
    if fmt not in _LOADERS:
        raise UserError(f"{path}: unknown trace format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    given = {k: v for k, v in opts.items() if v is not None}
    if "gaps" not in _OPTIONS[fmt]:
        given.pop("gaps", None)  # no gaps in this format (mahimahi: a silent stretch is already an outage)
    extra = set(given) - _OPTIONS[fmt]
    if extra:
        allowed = ", ".join(sorted(_OPTIONS[fmt])) or "none"
        raise UserError(f"{path}: option(s) {', '.join(sorted(extra))} do not apply to {fmt} (allowed: {allowed})")
    merged = {**implied, **given}
    if fmt == "columns" and not {"rate_col", "rate_unit"} <= set(merged):
        raise UserError(f"{path}: format 'columns' needs rate_col and rate_unit: "
                        f"'{path}?format=columns&rate_col=1&rate_unit=Mbps'")  # fmt: skip
    return _LOADERS[fmt](path, name=name, **merged)


def accepted_options(path: str | Path, fmt: str = "auto") -> set[str]:
    """Option names (as in `sparkv.traces.options`) that mean something for this file read as `fmt`:
    the format's loader options, `carrier` beside `rate_col`, and format, gaps and loop. A 5Gophers file
    with a single throughput column takes no column choice."""
    fmt = _ALIASES.get(fmt.lower(), fmt.lower())
    if fmt == "auto":
        fmt = detect(path)[0]
    names = set(_OPTIONS.get(fmt, set())) | {"format", "gaps", "loop"}
    if fmt == "5gophers":
        header = split_fields(read_lines(Path(path))[0][1], ",")
        if sum(h.lower().endswith("throughput_mbps") for h in header) <= 1:
            names.discard("rate_col")
    if "rate_col" in names:
        names.add("carrier")
    return names
