"""Predicted costs of one request, as plain numbers: what a policy plans with.

A `CostTable` is built by `sparkv.cost_models` from a device profile, a model spec, a codec and a link
model; policies read it and never import the cost models themselves, so a policy stays pure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from sparkv.core.readcurve import ReadCurve
from sparkv.core.request import CellBlock


class BandwidthForecast(Protocol):
    """What an oracle may know about the future link (a `sparkv.traces.Trace` satisfies it)."""

    def time_to_deliver(self, t0_s: float, n_bytes: float) -> float: ...

    def bytes_between(self, t0_s: float, t1_s: float) -> float: ...

    def rate_at(self, t_s: float) -> float: ...


@dataclass(frozen=True, eq=False)
class LocalCosts:
    """The disk lane's predictions: which chunks are on local disk and what reading a block of them costs.

    A read of chunks [a, b) x layers [lo, hi) is one request per layer (a layer's chunks are contiguous on
    disk), issued together at `queue_depth`; each request's seconds come from the storage profile's curve,
    then the block's bytes are installed (fp16 into the cache) at `install_s_per_byte`."""

    chunks: tuple[int, ...]  # whole chunks, every layer, ascending
    cell_bytes: np.ndarray  # [C, L] bytes read per cell (fp16 K and V, padded to the O_DIRECT alignment); 0 off disk
    curve: ReadCurve
    queue_depth: int
    install_s_per_byte: float
    read_w: float = 0.0  # disk power while reading, W (0: not modelled)
    _read_s: dict[tuple[int, int, int, int], float] = field(init=False, repr=False, default_factory=dict)

    def on_disk(self, block: CellBlock) -> bool:
        return all(c in self.chunks for c in range(block.chunk_lo, block.chunk_hi))

    def block_bytes(self, block: CellBlock) -> int:
        return int(self.cell_bytes[block.chunk_lo : block.chunk_hi, block.layer_lo : block.layer_hi].sum())

    def requests(self, block: CellBlock) -> list[int]:
        """Bytes of each read request of `block`: one per layer."""
        per_layer = self.cell_bytes[block.chunk_lo : block.chunk_hi, block.layer_lo : block.layer_hi].sum(axis=0)
        return [int(n) for n in per_layer]

    def read_s(self, block: CellBlock) -> float:
        """Predicted seconds to read `block` from disk and install it."""
        seconds = self._read_s.get(block.key)
        if seconds is None:
            requests = self.requests(block)
            seconds = self.curve.batch_s(requests, self.queue_depth) + sum(requests) * self.install_s_per_byte
            self._read_s[block.key] = seconds
        return seconds

    def runs(self) -> list[tuple[int, int]]:
        """The local chunks as maximal runs [a, b) of consecutive chunks."""
        out: list[tuple[int, int]] = []
        for c in self.chunks:
            if out and out[-1][1] == c:
                out[-1] = (out[-1][0], c + 1)
            else:
                out.append((c, c + 1))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"chunks": list(self.chunks), "cell_bytes": self.cell_bytes.tolist(), "curve": self.curve.to_dict(),
                "queue_depth": self.queue_depth, "install_s_per_byte": self.install_s_per_byte,
                "read_w": self.read_w}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LocalCosts:
        return cls(tuple(int(c) for c in data["chunks"]), np.asarray(data["cell_bytes"], dtype=np.int64),
                   ReadCurve.from_dict(data["curve"]), int(data["queue_depth"]), float(data["install_s_per_byte"]),
                   float(data.get("read_w", 0.0)))  # fmt: skip


@dataclass(frozen=True, eq=False)
class CostTable:
    """Per-cell predictions for one (request, model, device, codec, link)."""

    compute_cell_s: np.ndarray  # [C, L] seconds to compute cell (c, l) with its chunk's past
    compute_launch_s: float  # fixed seconds per compute command (launch, cache bookkeeping)
    cell_bytes: np.ndarray  # [C, L] bytes on the wire for cell (c, l) after the codec
    transfer_fixed_s: float  # fixed seconds per transfer: request round trip, server service, framing
    install_s_per_byte: float  # receiver seconds per wire byte: decode, dequantise, copy into the cache
    query_layer_s: np.ndarray  # [L] seconds to prefill the query at each layer
    first_token_s: float  # final norm, LM head and sampling of the first token
    bandwidth_prior_bps: float  # link goodput expected before any sample, bytes/s
    link_efficiency: float = 1.0  # goodput / trace rate (protocol headers, ACK clocking)
    local: LocalCosts | None = None  # cells kept on local disk, a third source (None: none)
    # Per-block answers, computed once (the table is read-only by convention; simulators ask again and again):
    # caches by `CellBlock.key`
    _compute_s: dict[tuple[int, int, int, int], float] = field(init=False, repr=False, default_factory=dict)
    _block_bytes: dict[tuple[int, int, int, int], int] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.compute_cell_s.shape != self.cell_bytes.shape or self.compute_cell_s.ndim != 2:
            raise ValueError(
                f"compute_cell_s {self.compute_cell_s.shape} and cell_bytes {self.cell_bytes.shape} "
                "must both be [chunks, layers]"
            )
        if self.query_layer_s.shape != (self.compute_cell_s.shape[1],):
            raise ValueError(f"query_layer_s must have one entry per layer, got {self.query_layer_s.shape}")
        if self.bandwidth_prior_bps <= 0:
            raise ValueError(f"bandwidth_prior_bps must be positive, got {self.bandwidth_prior_bps}")

    @property
    def num_chunks(self) -> int:
        return int(self.compute_cell_s.shape[0])

    @property
    def num_layers(self) -> int:
        return int(self.compute_cell_s.shape[1])

    def compute_s(self, block: CellBlock) -> float:
        """Predicted seconds to compute `block` as one command."""
        seconds = self._compute_s.get(block.key)
        if seconds is None:
            cells = self.compute_cell_s[block.chunk_lo : block.chunk_hi, block.layer_lo : block.layer_hi]
            seconds = self._compute_s[block.key] = float(cells.sum()) + self.compute_launch_s
        return seconds

    def block_bytes(self, block: CellBlock) -> int:
        n = self._block_bytes.get(block.key)
        if n is None:
            cells = self.cell_bytes[block.chunk_lo : block.chunk_hi, block.layer_lo : block.layer_hi]
            n = self._block_bytes[block.key] = int(cells.sum())
        return n

    def fetch_s(self, block: CellBlock, bandwidth_bps: float) -> float:
        """Predicted seconds to fetch and install `block` at a steady goodput of `bandwidth_bps`."""
        n = self.block_bytes(block)
        return self.transfer_fixed_s + n / max(bandwidth_bps, 1e-9) + n * self.install_s_per_byte

    def to_dict(self) -> dict[str, Any]:
        return {
            "compute_cell_s": self.compute_cell_s.tolist(),
            "compute_launch_s": self.compute_launch_s,
            "cell_bytes": self.cell_bytes.tolist(),
            "transfer_fixed_s": self.transfer_fixed_s,
            "install_s_per_byte": self.install_s_per_byte,
            "query_layer_s": self.query_layer_s.tolist(),
            "first_token_s": self.first_token_s,
            "bandwidth_prior_bps": self.bandwidth_prior_bps,
            "link_efficiency": self.link_efficiency,
        } | ({"local": self.local.to_dict()} if self.local is not None else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostTable:
        return cls(
            compute_cell_s=np.asarray(data["compute_cell_s"], dtype=np.float64),
            compute_launch_s=float(data["compute_launch_s"]),
            cell_bytes=np.asarray(data["cell_bytes"], dtype=np.int64),
            transfer_fixed_s=float(data["transfer_fixed_s"]),
            install_s_per_byte=float(data["install_s_per_byte"]),
            query_layer_s=np.asarray(data["query_layer_s"], dtype=np.float64),
            first_token_s=float(data["first_token_s"]),
            bandwidth_prior_bps=float(data["bandwidth_prior_bps"]),
            link_efficiency=float(data.get("link_efficiency", 1.0)),
            local=LocalCosts.from_dict(data["local"]) if data.get("local") else None,
        )
