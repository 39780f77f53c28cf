"""Results as a Chrome/Perfetto trace (JSON trace-event format): open it at ui.perfetto.dev or chrome://tracing.

One process per result (`world:policy`, plus the trace name), one thread per lane (link, compute), one
complete ("X") event per span with ts/dur in microseconds and the cell block, bytes and kind in `args`;
an instant event at the first token; and a counter track of the link's bandwidth (Mbit/s, the scenario's
trace after scaling and offset) when the trace can be rebuilt from the result's config.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sparkv.core.errors import UserError
from sparkv.core.result import LANES, Result, Span

US = 1e6  # microseconds per second
MAX_COUNTER_POINTS = 20_000  # per result; a long trace at 100 ms bins stays readable


def _range(lo: int, hi: int) -> str:
    """Half-open [lo, hi) as inclusive text: "3" or "0-29"."""
    return f"{lo}" if hi - lo == 1 else f"{lo}-{hi - 1}"


def _span_event(span: Span, pid: int, tid: int) -> dict[str, Any]:
    args: dict[str, Any] = {"kind": span.kind, "bytes": span.bytes}
    if span.block is not None:
        b = span.block
        args.update(chunks=f"[{b.chunk_lo}, {b.chunk_hi})", layers=f"[{b.layer_lo}, {b.layer_hi})",
                    block=b.to_list(), cells=b.num_cells)  # fmt: skip
        name = f"{span.kind} chunk {_range(b.chunk_lo, b.chunk_hi)} layer {_range(b.layer_lo, b.layer_hi)}"
    else:
        name = span.kind if span.layer < 0 else f"{span.kind} layer {span.layer}"
        if span.layer >= 0:
            args["layer"] = span.layer
    if span.bytes and span.end_s > span.start_s:
        args["mbit_per_s"] = round(span.bytes * 8 / 1e6 / (span.end_s - span.start_s), 3)
    return {"name": name, "cat": span.kind, "ph": "X", "pid": pid, "tid": tid, "ts": span.start_s * US,
            "dur": max(0.0, span.end_s - span.start_s) * US, "args": args}  # fmt: skip


def bandwidth_counter(result: Result, pid: int) -> list[dict[str, Any]]:
    """Counter events of the trace's rate (Mbit/s) over [0, TTFT]; empty if the trace cannot be rebuilt."""
    scenario = (result.config or {}).get("scenario") or {}
    name = scenario.get("trace")
    if not name:
        return []
    try:
        from sparkv.traces import get_trace

        trace = get_trace(name)
    except (UserError, ValueError, OSError):
        return []
    link = scenario.get("link", {})
    scale = float(link.get("bandwidth_scale", 1.0))
    offset = float(link.get("trace_offset_s", 0.0))
    end = max([result.ttft_s, *(s.end_s for s in result.spans)]) if result.spans else result.ttft_s
    events: list[dict[str, Any]] = []
    t, last = 0.0, None
    breakpoints = _breakpoints_after(trace.times_s.tolist(), float(trace.duration_s), offset)
    for _ in range(4 * MAX_COUNTER_POINTS):  # bounded: a run outlasting many loops of its trace ends too
        if t > end or len(events) >= MAX_COUNTER_POINTS:
            break
        rate = trace.rate_at(t + offset) * scale * 8 / 1e6
        if rate != last:
            events.append({"name": "bandwidth", "ph": "C", "pid": pid, "ts": t * US, "args": {"Mbit/s": rate}})
            last = rate
        t = next(breakpoints) - offset
    events.append({"name": "bandwidth", "ph": "C", "pid": pid, "ts": end * US, "args": {"Mbit/s": last or 0.0}})
    return events


def _breakpoints_after(times: list[float], duration_s: float, t_s: float) -> Iterator[float]:
    """The breakpoints of a trace looping every duration_s, strictly after absolute time t_s, in order.

    Counted by (loop, index), never recomputed from a float sum, so rounding cannot send it back to the
    breakpoint it just gave (a loop's end is the next loop's start)."""
    from bisect import bisect_right

    if not duration_s > 0:
        raise ValueError(f"trace duration must be positive, got {duration_s}")
    loop_f, r = divmod(t_s, duration_s)
    loop = int(loop_f)
    inner = [x for x in times if 0 < x < duration_s]  # breakpoints inside one loop; 0 is a loop's start
    i = bisect_right(inner, r)
    prev = t_s
    while True:
        for x in inner[i:]:
            value = loop * duration_s + x
            if value > prev:
                prev = value
                yield value
        loop, i = loop + 1, 0
        value = loop * duration_s
        if value > prev:
            prev = value
            yield value


def to_chrome_trace(results: list[Result], bandwidth: bool = True) -> dict[str, Any]:
    """The trace-event JSON object for `results` (one process each, lanes as threads)."""
    events: list[dict[str, Any]] = []
    for pid, result in enumerate(results, start=1):
        trace_name = ((result.config or {}).get("trace") or {}).get("name", "")
        label = f"{result.world}:{result.policy}" + (f" ({trace_name})" if trace_name else "")
        events.append({"name": "process_name", "ph": "M", "pid": pid, "args": {"name": label}})
        events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "args": {"sort_index": pid}})
        lanes = list(LANES) + sorted({s.lane for s in result.spans} - set(LANES))
        for tid, lane in enumerate(lanes, start=1):
            events.append({"name": "thread_name", "ph": "M", "pid": pid, "tid": tid, "args": {"name": lane}})
        tids = {lane: tid for tid, lane in enumerate(lanes, start=1)}
        for span in result.spans:
            events.append(_span_event(span, pid, tids[span.lane]))
        events.append({"name": "first token", "ph": "i", "s": "p", "pid": pid, "tid": tids["compute"],
                       "ts": result.ttft_s * US, "args": {"ttft_s": result.ttft_s,
                                                          "energy_j": result.energy_total_j}})  # fmt: skip
        if bandwidth:
            events.extend(bandwidth_counter(result, pid))
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"source": "sparkv", "results": len(results)}}  # fmt: skip


def write_chrome_trace(results: list[Result], path: Path | str) -> Path:
    if not results:
        raise UserError("no results to export")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_chrome_trace(results)))
    return path
