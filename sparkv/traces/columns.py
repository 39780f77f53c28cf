"""The generic table reader: any CSV or whitespace file with a rate column and, optionally, a time column.

The user names the columns (header name or 0-based index) and their units, so a new layout needs no new
parser; the format-specific loaders in `loaders.py` are thin wrappers over `load_columns`. Rules:

- Lines that are blank or start with `#` are skipped. The first line is a header if none of its fields
  is a number. Fields are split on `,` if the first line has a comma, else on whitespace (or `delimiter`).
- A rate field that is empty, `-`, `nan`, `NA`, `n/a`, `null` or `none` is missing.
- Without a time column each row holds for `interval_s`; a missing sample holds the previous rate (a
  leading one takes the first present rate).
- With a time column, times must not decrease. Rows that share a timestamp are averaged; each rate holds
  until the next timestamp (rows with a missing rate are dropped, so the rate before them holds); the
  last holds for the median interval between timestamps. Times are shifted so the trace starts at 0.
  A time unit containing `%` is a `strptime` pattern (e.g. `%Y.%m.%d_%H.%M.%S`).
- Gaps (a time step over 1.5 x the median step, or a missing rate) follow `gaps`: `fill` (the above:
  the rate before holds), `outage` (0 bytes/s for the missing time) or `error` (UserError naming it).
  The trace's `info` says which column was read and what was done about gaps.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from sparkv.core.errors import UserError
from sparkv.traces.trace import Trace
from sparkv.traces.units import rate_unit_factor, time_unit_factor

GAP_MODES = ("fill", "outage", "error")
MISSING = frozenset({"", "-", "nan", "na", "n/a", "null", "none"})
Column = int | str


def read_lines(path: str | Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of every non-blank, non-comment line; UserError if none or unreadable."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{p}: no such trace file") from None
    except IsADirectoryError:
        raise UserError(f"{p}: is a directory, expected a trace file") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{p}: not a text file ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"{p}: cannot read ({exc.strerror})") from None
    lines = [(i, s.strip()) for i, s in enumerate(text.splitlines(), 1)]
    lines = [(i, s) for i, s in lines if s and not s.startswith("#")]
    if not lines:
        raise UserError(f"{p}: empty file, expected trace samples")
    return lines


def is_number(text: str) -> bool:
    """True if `text` parses as a float."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def split_fields(text: str, delimiter: str | None) -> list[str]:
    """Fields of one line, stripped of blanks and double quotes."""
    parts = text.split(delimiter) if delimiter else text.split()
    return [f.strip().strip('"').strip() for f in parts]


def guess_delimiter(first_line: str) -> str | None:
    """',' if the line has a comma, else None (whitespace)."""
    return "," if "," in first_line else None


def resolve_column(col: Column, header: list[str] | None, path: Path, what: str) -> int:
    """0-based index of `col` (an index, a digit string, or a header name, matched case-insensitively)."""
    if isinstance(col, int) or col.strip().isdigit():
        return int(col)
    if header is None:
        raise UserError(f"{path}: {what} column {col!r} is a name but the file has no header; give an index")
    lowered = [h.lower() for h in header]
    if col.lower() in lowered:
        return lowered.index(col.lower())
    raise UserError(f"{path}: no {what} column {col!r}; columns are {', '.join(header)}")


def _parse_time(text: str, unit: str, path: Path, lineno: int) -> float:
    try:
        if "%" in unit:
            return datetime.strptime(text, unit).replace(tzinfo=UTC).timestamp()  # no DST jumps
        value = float(text) * time_unit_factor(unit)
    except ValueError:
        raise UserError(f"{path}:{lineno}: expected a time in {unit!r}, got {text!r}") from None
    if not math.isfinite(value):
        raise UserError(f"{path}:{lineno}: expected a finite time, got {text!r}")
    return value


def _parse_rate(text: str, factor: float, path: Path, lineno: int, col_label: str) -> float | None:
    if text.lower() in MISSING:
        return None
    try:
        value = float(text) * factor
    except ValueError:
        raise UserError(f"{path}:{lineno}: expected a number in column {col_label}, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise UserError(f"{path}:{lineno}: expected a finite rate >= 0 in column {col_label}, got {text!r}")
    return value


def load_columns(
    path: str | Path,
    rate_col: Column,
    rate_unit: str,
    time_col: Column | None = None,
    time_unit: str = "s",
    interval_s: float = 1.0,
    delimiter: str | None = None,
    name: str | None = None,
    gaps: str = "fill",
) -> Trace:
    """A trace from a table: `rate_col` in `rate_unit`; times from `time_col` or every `interval_s`."""
    p = Path(path)
    if gaps not in GAP_MODES:
        raise UserError(f"{p}: gaps must be one of {', '.join(GAP_MODES)}, got {gaps!r}")
    try:
        factor = rate_unit_factor(rate_unit)
        if time_col is not None and "%" not in time_unit:
            time_unit_factor(time_unit)
    except ValueError as exc:
        raise UserError(f"{p}: {exc}") from None
    if not (interval_s > 0 and math.isfinite(interval_s)):
        raise UserError(f"{p}: interval_s must be > 0, got {interval_s!r}")
    lines = read_lines(p)
    delim = delimiter if delimiter is not None else guess_delimiter(lines[0][1])
    first = split_fields(lines[0][1], delim)
    header = first if not any(is_number(f) for f in first if f) else None
    rows = lines[1:] if header is not None else lines
    if not rows:
        raise UserError(f"{p}: only a header line, expected trace samples after it")
    ri = resolve_column(rate_col, header, p, "rate")
    ti = None if time_col is None else resolve_column(time_col, header, p, "time")
    column = header[ri] if header is not None and ri < len(header) else f"#{ri}"
    rate_label = repr(column) if header is not None else column
    need = max(ri, ti if ti is not None else 0) + 1
    times: list[float] = []
    rates: list[float | None] = []
    linenos: list[int] = []
    for lineno, text in rows:
        fields = split_fields(text, delim)
        if len(fields) < need:
            raise UserError(f"{p}:{lineno}: expected at least {need} fields, got {len(fields)}: {text!r}")
        rates.append(_parse_rate(fields[ri], factor, p, lineno, rate_label))
        linenos.append(lineno)
        if ti is not None:
            t = _parse_time(fields[ti], time_unit, p, lineno)
            if times and t < times[-1]:
                raise UserError(f"{p}:{lineno}: time goes backwards ({fields[ti]!r} after an earlier time)")
            times.append(t)
    label = name if name is not None else p.name
    if ti is None:
        samples, note = _hold_missing(rates, linenos, p, gaps, interval_s)
        trace = Trace.from_samples(samples, interval_s, label, str(p))
    else:
        trace, note = _timed_trace(times, rates, interval_s, p, label, gaps)
    return replace(trace, info={"column": column, "gaps": note})


def _hold_missing(rates: list[float | None], linenos: list[int], path: Path, gaps: str,
                  interval_s: float) -> tuple[list[float], str]:  # fmt: skip
    """Missing samples take the previous rate (leading ones the first present one), or 0 for `outage`."""
    present = [r for r in rates if r is not None]
    if not present:
        raise UserError(f"{path}: every rate sample is missing")
    missing = [n for n, r in zip(linenos, rates, strict=True) if r is None]
    if missing and gaps == "error":
        raise UserError(f"{path}:{missing[0]}: missing rate ({len(missing)} row(s) in all); "
                        f"'{path}?gaps=fill' holds the rate before, 'gaps=outage' makes them 0")  # fmt: skip
    out: list[float] = []
    last = present[0]
    for r in rates:
        last = r if r is not None else (0.0 if gaps == "outage" else last)
        out.append(last)
    return out, _gap_note(len(missing), len(missing) * interval_s, gaps)


def _gap_note(count: int, seconds: float, gaps: str) -> str:
    if count == 0:
        return "none"
    done = "held at the rate before" if gaps == "fill" else "as outage (0 B/s)"
    return f"{count} gap(s), {seconds:g} s {done}"


def _timed_trace(times: list[float], rates: list[float | None], interval_s: float, path: Path, name: str,
                 gaps: str = "fill") -> tuple[Trace, str]:  # fmt: skip
    """Average rows sharing a timestamp, drop missing rates, hold each rate to the next timestamp (or, for
    `gaps="outage"`, for one usual step, then 0 until the next timestamp)."""
    t = np.asarray(times, dtype=np.float64)
    have = np.array([r is not None for r in rates])
    if not have.any():
        raise UserError(f"{path}: every rate sample is missing")
    r = np.array([x if x is not None else 0.0 for x in rates], dtype=np.float64)
    t, r = t[have], r[have]
    uniq, inverse = np.unique(t, return_inverse=True)
    sums = np.bincount(inverse, weights=r)
    means = sums / np.bincount(inverse)
    last_hold = float(np.median(np.diff(uniq))) if uniq.size > 1 else interval_s
    rel = uniq - times[0]  # start at the file's first timestamp, even if that row's rate is missing
    rel[0] = 0.0  # leading rows with missing rates take the first present rate
    duration = float(uniq[-1] - times[0]) + last_hold
    steps = np.diff(rel)
    jumps = np.flatnonzero(steps > 1.5 * last_hold) if uniq.size > 1 else np.array([], dtype=np.int64)
    missing_s = float((steps[jumps] - last_hold).sum()) if jumps.size else 0.0
    if jumps.size and gaps == "error":
        i = int(jumps[0])
        raise UserError(
            f"{path}: {jumps.size} gap(s) in the time column, {missing_s:g} s in all; the first after "
            f"{rel[i]:g} s (time {uniq[i]:g} then {uniq[i + 1]:g}); '?gaps=fill' holds the rate before a gap, "
            "'?gaps=outage' makes it 0"
        )
    if jumps.size and gaps == "outage":
        rel = np.insert(rel, jumps + 1, rel[jumps] + last_hold)
        means = np.insert(means, jumps + 1, 0.0)
    return Trace(rel, means, duration, name, str(path)), _gap_note(int(jumps.size), missing_s, gaps)
