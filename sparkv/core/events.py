"""Events a driver feeds a policy, and commands a policy returns: plain frozen dataclasses.

Both the SimPy model and the real executor speak exactly these types, so a policy cannot tell the
worlds apart, and a real run's log can be replayed through a fresh policy.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from sparkv.core.request import CellBlock

# The events a simulated request sends by the hundred set their fields in one step (as `Span` does): a
# frozen dataclass's generated __init__ makes one object.__setattr__ call per field.
_SET = object.__setattr__


class Resource(StrEnum):
    """The lanes a request uses on the device (the disk only where some of its KV is on local disk)."""

    LINK = "link"  # the receiver: one transfer at a time, fetch then install
    COMPUTE = "compute"  # the accelerator: one prefill command at a time
    DISK = "disk"  # the local disk: one read at a time, read then install


# ---- events (driver -> policy) ----


@dataclass(frozen=True)
class RequestStarted:
    t_s: float  # time the request arrived


@dataclass(frozen=True, init=False)
class TransferDone:
    t_s: float  # time the block was installed in the cache
    block: CellBlock  # cells now present
    bytes: int  # wire bytes received
    duration_s: float  # from the fetch command to installation

    def __init__(self, t_s: float, block: CellBlock, bytes: int, duration_s: float) -> None:
        _SET(self, "__dict__", {"t_s": t_s, "block": block, "bytes": bytes, "duration_s": duration_s})


@dataclass(frozen=True)
class TransferCancelled:
    t_s: float  # time the cancel took effect
    block: CellBlock  # cells that are missing again
    bytes: int  # wire bytes received before the cancel (wasted)


@dataclass(frozen=True)
class TransferFailed:
    t_s: float  # time the failure was seen
    block: CellBlock  # cells that are missing again
    bytes: int  # wire bytes received before the failure
    reason: str  # e.g. "server closed", "checksum", "deadline"
    # parts of `block` that did arrive whole and are installed before the failure (present now; the rest
    # is missing again); only a real link delivers part of a block, the simulator's transfers are atomic
    delivered: tuple[CellBlock, ...] = ()


@dataclass(frozen=True)
class ReadDone:
    t_s: float  # time the block read from local disk was installed in the cache
    block: CellBlock  # cells now present
    bytes: int  # bytes read from disk
    duration_s: float  # from the read command to installation


@dataclass(frozen=True)
class ComputeDone:
    t_s: float  # time the cells were written to the cache
    block: CellBlock  # cells now present
    duration_s: float  # measured compute time


@dataclass(frozen=True, init=False)
class QueryLayerStarted:
    t_s: float  # the engine started the query's prefill of this layer (every cell of it is present)
    layer: int

    def __init__(self, t_s: float, layer: int) -> None:
        _SET(self, "__dict__", {"t_s": t_s, "layer": layer})


@dataclass(frozen=True, init=False)
class QueryLayerDone:
    t_s: float
    layer: int  # query prefill has passed this layer
    duration_s: float

    def __init__(self, t_s: float, layer: int, duration_s: float) -> None:
        _SET(self, "__dict__", {"t_s": t_s, "layer": layer, "duration_s": duration_s})


@dataclass(frozen=True, init=False)
class BandwidthSample:
    t_s: float  # end of the observation window
    bytes: int  # bytes received in the window
    duration_s: float  # window length

    def __init__(self, t_s: float, bytes: int, duration_s: float) -> None:
        _SET(self, "__dict__", {"t_s": t_s, "bytes": bytes, "duration_s": duration_s})


@dataclass(frozen=True)
class Tick:
    t_s: float  # periodic wake-up so a waiting policy can act


Event = (
    RequestStarted
    | TransferDone
    | TransferCancelled
    | TransferFailed
    | ComputeDone
    | ReadDone
    | QueryLayerStarted
    | QueryLayerDone
    | BandwidthSample
    | Tick
)

# ---- commands (policy -> driver) ----


@dataclass(frozen=True)
class Fetch:
    block: CellBlock  # cells to stream as one transfer; all must be missing


@dataclass(frozen=True)
class Compute:
    block: CellBlock  # chunks' next layers; layer_lo must equal each chunk's computed prefix


@dataclass(frozen=True)
class Cancel:
    block: CellBlock  # the in-flight fetch to abandon


@dataclass(frozen=True)
class ReadLocal:
    block: CellBlock  # cells to read from local disk as one read; all must be on disk and missing


Command = Fetch | Compute | Cancel | ReadLocal

_TYPES: dict[str, type] = {
    cls.__name__: cls
    for cls in (
        RequestStarted,
        TransferDone,
        TransferCancelled,
        TransferFailed,
        ComputeDone,
        ReadDone,
        QueryLayerStarted,
        QueryLayerDone,
        BandwidthSample,
        Tick,
        Fetch,
        Compute,
        Cancel,
        ReadLocal,
    )
}


def to_dict(item: Event | Command) -> dict[str, Any]:
    """JSON-ready form: {"type": name, field: value}, blocks as [c0, c1, l0, l1]."""
    out: dict[str, Any] = {"type": type(item).__name__}
    for f in fields(item):
        value = getattr(item, f.name)
        if isinstance(value, CellBlock):
            value = value.to_list()
        elif f.name == "delivered":
            value = [b.to_list() for b in value]
        out[f.name] = value
    return out


def from_dict(data: dict[str, Any]) -> Any:
    """Inverse of `to_dict`."""
    cls = _TYPES.get(str(data.get("type")))
    if cls is None:
        raise ValueError(f"unknown event or command type {data.get('type')!r}")
    kwargs: dict[str, Any] = {k: (CellBlock.from_list(v) if k == "block" else v) for k, v in data.items()
                              if k != "type"}
    if "delivered" in data:
        kwargs["delivered"] = tuple(CellBlock.from_list(b) for b in data["delivered"])
    return cls(**kwargs)
