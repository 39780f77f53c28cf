"""The executor-overhead measure: idle time inside [0, TTFT] when no lane is busy."""

from __future__ import annotations

import pytest

from sparkv.analysis.overhead import busy_union_s, overhead
from sparkv.core.request import CellBlock
from sparkv.core.result import Result, Span


def _span(lane: str, start: float, end: float) -> Span:
    kind = "fetch" if lane == "link" else "compute"
    return Span(lane, kind, start, end, CellBlock(0, 1, 0, 1))


def test_union_merges_overlaps_and_clips() -> None:
    spans = [_span("link", 0.0, 2.0), _span("compute", 1.0, 3.0), _span("compute", 4.0, 9.0)]
    assert busy_union_s(spans, 5.0) == pytest.approx(3.0 + 1.0)


def test_idle_and_compute_gaps() -> None:
    spans = [_span("compute", 0.1, 1.0), _span("link", 0.5, 2.0), _span("compute", 2.2, 3.0)]
    r = Result(world="real", policy="x", ttft_s=3.0, energy_j={}, spans=spans, config={})
    o = overhead(r)
    assert o.busy_s == pytest.approx(2.7)
    assert o.idle_s == pytest.approx(0.3)  # [0, 0.1) and [2.0, 2.2)
    assert o.compute_gaps_s == pytest.approx(1.2)
    assert o.idle_pct == pytest.approx(10.0)
