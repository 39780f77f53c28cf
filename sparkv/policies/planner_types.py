"""The inputs and outputs of a predicted timeline: link and compute models, a request's state, the result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from sparkv.core.costs import BandwidthForecast
from sparkv.core.progress import RequestProgress
from sparkv.core.request import CellBlock

if TYPE_CHECKING:
    from sparkv.policies.foresight import ServerForecast

_MISSING, _FETCHING = 0, 1


class LinkModel(Protocol):
    def transfer_end(self, t_s: float, n_bytes: float) -> float:
        """Time a transfer of `n_bytes` wire bytes issued at `t_s` is installed."""
        ...


@dataclass(frozen=True)
class ConstantLink:
    """Steady goodput: fixed cost + bytes / bandwidth + install, as `CostTable.fetch_s`."""

    bandwidth_bps: float  # goodput, bytes/s
    fixed_s: float  # per transfer: round trip, server, install fixed part
    install_s_per_byte: float

    def transfer_end(self, t_s: float, n_bytes: float) -> float:
        return t_s + self.fixed_s + n_bytes / max(self.bandwidth_bps, 1e-9) + n_bytes * self.install_s_per_byte


@dataclass(frozen=True)
class ForecastLink:
    """A known future (the oracle): the simulator's own transfer arithmetic on a trace."""

    forecast: BandwidthForecast  # trace rates in bytes/s (already scaled)
    offset_s: float  # request time 0 is this trace time
    efficiency: float  # goodput / trace rate
    pre_s: float  # before the first payload byte: server service + round trip
    post_s: float  # after the last payload byte, fixed part of installation
    install_s_per_byte: float
    # a KV server shared with other clients: the slot is granted as if this were the request's only
    # transfer (an estimate: its own earlier transfers also delay the others), then its service and
    # `rtt_s`; `pre_s` is then unused
    server: ServerForecast | None = None
    rtt_s: float = 0.0

    def transfer_end(self, t_s: float, n_bytes: float) -> float:
        server = self.server
        if server is None:
            start = t_s + self.pre_s
        else:
            grant = server.grant_alone_s(t_s)
            start = (grant + server.service_s if server.service_s > 0 else t_s) + self.rtt_s
        end = self.forecast.time_to_deliver(start + self.offset_s, n_bytes / self.efficiency) - self.offset_s
        return end + n_bytes * self.install_s_per_byte + self.post_s


@dataclass(frozen=True)
class ComputeSpeed:
    """Wall time of compute work: `scale` x predicted, optionally on a device shared over time, and
    `receive_slowdown` x longer for work started while a transfer is in flight (see `Evaluator.predict`)."""

    scale: float = 1.0  # measured / predicted
    availability: BandwidthForecast | None = None  # fraction of the device available (as "bytes/s")
    receive_slowdown: float = 1.0  # the receive path's share of the device, as the simulator applies it

    def end(self, t_s: float, work_s: float) -> float:
        if self.availability is None:
            return t_s + work_s * self.scale
        return self.availability.time_to_deliver(t_s, work_s * self.scale)


@dataclass
class Snapshot:
    """A request in progress, as far as planning needs it."""

    now_s: float
    prefix: list[int]  # per chunk: layers computed or being computed
    state: list[list[int]]  # [C][L] CellState values (read only)
    link_free_s: float  # when the link can start its next transfer
    fetching: CellBlock | None  # in flight; its cells land at link_free_s
    compute_free_s: float  # when the compute lane frees up
    query_next: int  # next query layer to run (one running counts as done)
    _stops: list[list[int]] | None = field(default=None, repr=False)
    # per target bytes: [C][L+1] each chunk's transfers from a layer on (`Evaluator._pieces`), None until built
    pieces: dict[float, list[list[list[tuple[int, int, int]] | None]]] = field(default_factory=dict, repr=False)
    # reads from local disk still to land: (chunk_lo, chunk_hi, layer_lo, layer_hi, predicted end); their cells
    # (and every other cell on local disk) show in `state` as not missing, so no plan streams or computes them
    disk: tuple[tuple[int, int, int, int, float], ...] = ()

    @classmethod
    def fresh(cls, num_chunks: int, num_layers: int, t_s: float = 0.0) -> Snapshot:
        state = [[_MISSING] * num_layers for _ in range(num_chunks)]
        return cls(t_s, [0] * num_chunks, state, t_s, None, t_s, 0)

    @classmethod
    def of(cls, progress: RequestProgress, now_s: float, link_free_s: float, fetching: CellBlock | None,
           compute_free_s: float, query_next: int) -> Snapshot:  # fmt: skip
        return cls(now_s, list(progress.computed_prefix), progress.state, link_free_s, fetching,
                   compute_free_s, query_next)  # fmt: skip

    def stops(self) -> list[list[int]]:
        """Per chunk and layer: the first layer at or after it whose cell is not missing (cached)."""
        if self._stops is None:
            out = []
            for row in self.state:
                nxt, stop = len(row), [len(row)] * len(row)
                for layer in range(len(row) - 1, -1, -1):
                    if row[layer] != _MISSING:
                        nxt = layer
                    stop[layer] = nxt
                out.append(stop)
            self._stops = out
        return self._stops

    def piece_table(self, target_bytes: float, num_chunks: int, num_layers: int
                    ) -> list[list[list[tuple[int, int, int]] | None]]:  # fmt: skip
        """The cache of `Evaluator._pieces` for one transfer size: per chunk and layer, None until built."""
        table = self.pieces.get(target_bytes)
        if table is None:
            empty: list[tuple[int, int, int]] = []
            table = self.pieces[target_bytes] = [[*([None] * num_layers), empty] for _ in range(num_chunks)]
        return table

    def k_bounds(self) -> tuple[list[int], list[int]]:
        """Per chunk, the least and greatest k a plan may give (never compute over an in-flight fetch)."""
        hi = []
        for c, row in enumerate(self.state):
            p = self.prefix[c]
            hi.append(row.index(_FETCHING, p) if _FETCHING in row[p:] else len(row))
        return list(self.prefix), hi


@dataclass(frozen=True)
class Prediction:
    ttft_s: float
    link_end_s: float  # last planned transfer installed
    compute_end_s: float  # last planned compute command done
    energy_j: float = math.nan  # joules from the snapshot on, where an objective needs it (`planner_energy`)
