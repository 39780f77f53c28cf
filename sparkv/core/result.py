"""What one request produced, in either world: TTFT, energy by component, and a timeline of spans.

The simulator and the real executor both write `Result`; analysis reads only these files. Every
result carries the configuration that produced it, so a figure can be traced back to its inputs.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from sparkv.core.request import CellBlock

LANES = ("link", "compute")
SPAN_KINDS = ("fetch", "cancelled", "failed", "compute", "query", "first_token", "read")


class Span(NamedTuple):
    """One interval of work on one lane.

    A named tuple, immutable like the rest of a result: a simulated request records one per piece of
    work, and a tuple is built at C speed (`make_span`), where a class with an `__init__` costs several
    times more.
    """

    lane: str  # "link", "compute" or "disk"
    kind: str  # one of SPAN_KINDS
    start_s: float
    end_s: float
    block: CellBlock | None = None  # cells the work covered (None for query / first token)
    bytes: int = 0  # wire bytes (link spans), bytes read (disk spans)
    layer: int = -1  # query layer (query spans)

    def to_dict(self) -> dict[str, Any]:
        out = self._asdict()
        out["block"] = self.block.to_list() if self.block else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Span:
        block = CellBlock.from_list(data["block"]) if data.get("block") else None
        return cls(**{**data, "block": block})


# A `Span` from all seven fields in order, as one tuple: no defaults, no checks, and no Python frame (a
# simulated request records a span per piece of work)
make_span: Callable[[tuple[str, str, float, float, CellBlock | None, int, int]], Span] = partial(tuple.__new__, Span)


@dataclass
class Result:
    """Outcome of one request under one policy in one world ("sim" or "real")."""

    world: str
    policy: str
    ttft_s: float  # request arrival to first token
    energy_j: dict[str, float]  # component -> joules ("radio", "compute", "idle", ...)
    spans: list[Span]
    config: dict[str, Any]  # the configuration tree that produced this result
    bytes_streamed: int = 0  # wire bytes of completed transfers
    bytes_wasted: int = 0  # wire bytes of cancelled or failed transfers
    cells_streamed: int = 0
    cells_computed: int = 0
    faults: list[str] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)  # policy calls, for replay
    extra: dict[str, Any] = field(default_factory=dict)  # link used, generated text, measured energy...
    decode: dict[str, Any] | None = None  # the decode phase, if any (`sparkv.core.decode.DecodeSummary.to_dict`)

    @property
    def energy_total_j(self) -> float:
        return float(sum(self.energy_j.values()))

    def summary(self) -> dict[str, Any]:
        """One flat row for tables."""
        return {
            "world": self.world,
            "policy": self.policy,
            "ttft_s": self.ttft_s,
            "energy_j": self.energy_total_j,
            "mb_streamed": self.bytes_streamed / 1e6,
            "mb_wasted": self.bytes_wasted / 1e6,
            "cells_streamed": self.cells_streamed,
            "cells_computed": self.cells_computed,
            "faults": len(self.faults),
        }

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["spans"] = [s.to_dict() for s in self.spans]
        out["energy_total_j"] = self.energy_total_j
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        data = {k: v for k, v in data.items() if k != "energy_total_j"}
        data["spans"] = [Span.from_dict(s) for s in data.get("spans", [])]
        return cls(**data)

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: Path | str) -> Result:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def write_timeline_csv(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(
                ["lane", "kind", "start_s", "end_s", "chunk_lo", "chunk_hi", "layer_lo", "layer_hi", "bytes"]
            )
            for s in self.spans:
                b = s.block.to_list() if s.block else [-1, -1, s.layer, s.layer + 1]
                writer.writerow([s.lane, s.kind, f"{s.start_s:.6f}", f"{s.end_s:.6f}", *b, s.bytes])
        return path
