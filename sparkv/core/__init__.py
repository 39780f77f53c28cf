"""Plain data shared by every part: model spec, request and cells, costs, events, progress, results."""

from sparkv.core.costs import BandwidthForecast, CostTable
from sparkv.core.errors import UserError
from sparkv.core.events import (
    BandwidthSample,
    Cancel,
    Command,
    Compute,
    ComputeDone,
    Event,
    Fetch,
    QueryLayerDone,
    ReadDone,
    ReadLocal,
    RequestStarted,
    Resource,
    Tick,
    TransferCancelled,
    TransferDone,
    TransferFailed,
)
from sparkv.core.model import BUILTIN_SPECS, ModelSpec, resolve_model_spec
from sparkv.core.progress import CellState, RequestProgress
from sparkv.core.request import CellBlock, Request
from sparkv.core.result import Result, Span

__all__ = [
    "BUILTIN_SPECS",
    "BandwidthForecast",
    "BandwidthSample",
    "Cancel",
    "CellBlock",
    "CellState",
    "Command",
    "Compute",
    "ComputeDone",
    "CostTable",
    "Event",
    "Fetch",
    "ModelSpec",
    "QueryLayerDone",
    "ReadDone",
    "ReadLocal",
    "Request",
    "RequestProgress",
    "RequestStarted",
    "Resource",
    "Result",
    "Span",
    "Tick",
    "TransferCancelled",
    "TransferDone",
    "TransferFailed",
    "UserError",
    "resolve_model_spec",
]
