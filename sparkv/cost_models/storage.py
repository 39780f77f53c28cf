"""Storage profiles: read bandwidth as a function of request size and queue depth, plus latency.

A profile is a table (request sizes x queue depths -> bytes per second), measured on this machine by
`sparkv profile --disk PATH` (O_DIRECT, kind "measured") or built from published figures through a
closed form (kind "analytic", each source named in the file). A batch of reads issued together at queue
depth q costs `batch_fixed_s` plus, per request, its size over the bandwidth at that size and
min(q, requests in the batch): the simulator charges one layer's reads as one such batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sparkv.core.errors import UserError
from sparkv.core.readcurve import ReadCurve, batch_read_s, interpolate_bps


@dataclass(frozen=True)
class StorageProfile:
    name: str
    kind: str  # "measured" or "analytic"
    device: str  # what the numbers describe
    sizes_bytes: tuple[int, ...]  # request sizes, ascending
    queue_depths: tuple[int, ...]  # ascending
    read_bps: tuple[tuple[float, ...], ...]  # [size][queue depth] -> bytes/s
    latency_s: float  # one request of the smallest size at depth 1
    write_bps: float  # sequential writes (appends of new groups)
    batch_fixed_s: float = 0.0  # per batch of reads (submission and wake-up)
    read_w: float = 0.0  # device power while reading (0: not modelled)
    sources: dict[str, str] = field(default_factory=dict)
    date: str = ""
    measurements: dict[str, Any] = field(default_factory=dict)
    _memo: dict[tuple[int, int], float] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.sizes_bytes or not self.queue_depths:
            raise ValueError(f"storage profile {self.name!r} has an empty size or queue-depth grid")
        if list(self.sizes_bytes) != sorted(set(self.sizes_bytes)) or list(self.queue_depths) != sorted(
            set(self.queue_depths)
        ):
            raise ValueError(f"storage profile {self.name!r}: sizes and queue depths must ascend")
        if len(self.read_bps) != len(self.sizes_bytes) or any(len(r) != len(self.queue_depths) for r in self.read_bps):
            raise ValueError(f"storage profile {self.name!r}: read_bps must be {len(self.sizes_bytes)} rows of "
                             f"{len(self.queue_depths)}")  # fmt: skip
        if any(v <= 0 for row in self.read_bps for v in row) or self.write_bps <= 0:
            raise ValueError(f"storage profile {self.name!r}: bandwidths must be positive")

    def bandwidth_bps(self, size_bytes: int, queue_depth: int) -> float:
        """Read bandwidth at one request size and queue depth (log-log interpolation, flat beyond the grid)."""
        key = (size_bytes, queue_depth)
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        bw = interpolate_bps(self.sizes_bytes, self.queue_depths, self.read_bps, size_bytes, queue_depth)
        self._memo[key] = bw
        return bw

    def batch_s(self, request_bytes: Sequence[int], queue_depth: int) -> float:
        """Seconds to complete a batch of reads issued together at `queue_depth`."""
        return batch_read_s(self.bandwidth_bps, self.batch_fixed_s, request_bytes, queue_depth)

    def curve(self) -> ReadCurve:
        """The read model alone, as plain data (what a cost table carries for the disk lane)."""
        return ReadCurve(self.name, self.sizes_bytes, self.queue_depths, self.read_bps, self.batch_fixed_s)

    def write_s(self, nbytes: int) -> float:
        return nbytes / self.write_bps

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("_memo")
        out["sizes_bytes"], out["queue_depths"] = list(self.sizes_bytes), list(self.queue_depths)
        out["read_bps"] = [list(r) for r in self.read_bps]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StorageProfile:
        d = dict(data)
        d["sizes_bytes"] = tuple(int(s) for s in d["sizes_bytes"])
        d["queue_depths"] = tuple(int(q) for q in d["queue_depths"])
        d["read_bps"] = tuple(tuple(float(v) for v in row) for row in d["read_bps"])
        return cls(**d)

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path


DEFAULT_SIZES = tuple(512 * 2**i for i in range(12))  # 512 B .. 1 MiB
DEFAULT_DEPTHS = (1, 2, 4, 8, 16)


def analytic_storage(
    name: str,
    device: str,
    peak_bps: float,
    latency_s: float,
    parallel: int,
    write_bps: float,
    sources: dict[str, str],
    read_w: float = 0.0,
) -> StorageProfile:
    """A profile from a closed form: one request takes latency + size / peak; up to `parallel` overlap;
    bandwidth = min(peak, min(q, parallel) x size / (latency + size / peak))."""
    rows = tuple(
        tuple(min(peak_bps, min(q, parallel) * s / (latency_s + s / peak_bps)) for q in DEFAULT_DEPTHS)
        for s in DEFAULT_SIZES
    )
    return StorageProfile(
        name=name, kind="analytic", device=device, sizes_bytes=DEFAULT_SIZES, queue_depths=DEFAULT_DEPTHS,
        read_bps=rows, latency_s=latency_s + DEFAULT_SIZES[0] / peak_bps, write_bps=write_bps, read_w=read_w,
        sources=sources,
        measurements={"form": {"peak_bps": peak_bps, "latency_s": latency_s, "parallel": parallel}},
    )  # fmt: skip


def builtin_storage_names() -> list[str]:
    folder = resources.files("sparkv") / "data" / "storage"
    return sorted(p.name[: -len(".json")] for p in folder.iterdir() if p.name.endswith(".json"))


def load_storage(name_or_path: str) -> StorageProfile:
    """A built-in storage profile by name, or a storage profile JSON file; bad input is a UserError."""
    path = Path(name_or_path)
    if path.suffix == ".json" or "/" in name_or_path:
        if not path.is_file():
            raise UserError(f"storage profile {name_or_path} does not exist")
        try:
            text = path.read_text()
        except OSError as exc:
            raise UserError(f"cannot read storage profile {name_or_path}: {exc.strerror}") from exc
    else:
        res = resources.files("sparkv") / "data" / "storage" / f"{name_or_path}.json"
        if not res.is_file():
            raise UserError(
                f"unknown storage profile {name_or_path!r}; built-in: {', '.join(builtin_storage_names())} "
                "(or give a storage profile .json path)"
            )
        text = res.read_text()
    try:
        return StorageProfile.from_dict(json.loads(text))
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"storage profile {name_or_path} is malformed: {exc}") from exc
