"""The one configuration tree of a scenario, saved beside every result so it can be reproduced.

Only names and numbers live here (a trace spec, a profile name, a codec name); the parts that turn
them into objects live in `sim`, `executor` and `cost_models`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class LinkConfig:
    """The wireless link on top of a bandwidth trace."""

    rtt_s: float = 0.03  # request round trip before the first byte of each transfer
    per_transfer_s: float = 0.002  # server service + framing per transfer
    efficiency: float = 0.95  # goodput / trace rate (TCP/IP headers, ACK clocking)
    bandwidth_scale: float = 1.0  # multiply the trace's rates
    trace_offset_s: float = 0.0  # where in the trace the request starts
    radio: str = "lte"  # radio power model: lte, wifi, 5g, 3g
    server_concurrency: int = 1  # transfers the KV server serves at once
    server_background_rps: float = 0.0  # other clients' transfers per second at the same server (Poisson)
    server_fails_at_s: float | None = None  # the KV server dies at this request time and stays down (a fault)
    # seconds the receive path spends per byte after the wire (socket copies, framing, installing the payload),
    # serial with the wire: a link of rate r delivers r x efficiency / (1 + r x efficiency x this). Measured on
    # real links by `sparkv profile --link`; 0 (the default) is a receiver that keeps up with any rate.
    receive_s_per_byte: float = 0.0

    def __post_init__(self) -> None:
        if self.server_fails_at_s is not None and not self.server_fails_at_s >= 0:
            raise ValueError(f"server_fails_at_s must be >= 0 or None, got {self.server_fails_at_s}")
        if not self.receive_s_per_byte >= 0:
            raise ValueError(f"receive_s_per_byte must be >= 0, got {self.receive_s_per_byte}")
        if self.rtt_s < 0 or self.per_transfer_s < 0:
            raise ValueError(f"rtt_s and per_transfer_s must be >= 0, got {self.rtt_s}, {self.per_transfer_s}")
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"efficiency must be in (0, 1], got {self.efficiency}")
        if self.bandwidth_scale <= 0:
            raise ValueError(f"bandwidth_scale must be positive, got {self.bandwidth_scale}")


@dataclass(frozen=True)
class LocalKV:
    """Cells of the context whose KV a previous session kept on this device's disk: a third source for loading.

    Whole chunks, every layer (what a context seen before leaves behind), stored fp16 as written by
    `sparkv run --local-chunks`; read with O_DIRECT, timed by the named storage profile in the simulator."""

    chunks: int | tuple[int, ...] = 0  # the first N chunks, or these chunks
    storage: str = "this-vm"  # storage profile (built-in name or JSON path) of the local disk
    queue_depth: int = 1  # reads in flight at once (one request per layer of a read block)

    def __post_init__(self) -> None:
        if isinstance(self.chunks, list):
            object.__setattr__(self, "chunks", tuple(self.chunks))
        if isinstance(self.chunks, int):
            if self.chunks < 0:
                raise ValueError(f"local chunks must be >= 0, got {self.chunks}")
        elif any(not isinstance(c, int) or c < 0 for c in self.chunks) or len(set(self.chunks)) != len(self.chunks):
            raise ValueError(f"local chunks must be distinct chunk indices >= 0, got {list(self.chunks)}")
        if self.queue_depth < 1:
            raise ValueError(f"local queue_depth must be >= 1, got {self.queue_depth}")

    def chunk_set(self, num_chunks: int) -> tuple[int, ...]:
        """The local chunks of a context of `num_chunks` chunks, ascending."""
        if isinstance(self.chunks, int):
            if self.chunks > num_chunks:
                raise ValueError(f"{self.chunks} local chunks asked for, the context has {num_chunks}")
            return tuple(range(self.chunks))
        bad = [c for c in self.chunks if c >= num_chunks]
        if bad:
            raise ValueError(f"local chunks {bad} outside the context's {num_chunks} chunks")
        return tuple(sorted(self.chunks))


@dataclass(frozen=True)
class Scenario:
    """One request on one device over one link."""

    model: str = "smollm2-135m"  # built-in spec name or a Hugging Face model directory
    context_tokens: int = 8192
    query_tokens: int = 64
    chunk_tokens: int = 512
    trace: str = "lte:seed=0"  # a trace file or a synthetic spec (grammar in sparkv.traces.specs)
    device: str = "cpu-smollm2"  # device profile name (built-in) or path to a profile JSON
    codec: str = "fp16"  # KV codec on the wire
    attention: str = "dense"  # attention of locally computed chunks (grammar in sparkv.core.attention)
    link: LinkConfig = field(default_factory=LinkConfig)
    availability: str | None = None  # trace of the available fraction of the device, as "B/s" (1B/s = all)
    compute_noise: float = 0.0  # relative std-dev of simulated compute times around the profile
    seed: int = 0
    local: LocalKV | None = None  # KV kept on local disk by an earlier session (None: none)

    def to_dict(self) -> dict[str, Any]:
        """Plain data; `local` and the link's `receive_s_per_byte` only when set, so a scenario without them
        reads as it always did."""
        out = asdict(self)
        if not self.link.receive_s_per_byte:
            del out["link"]["receive_s_per_byte"]
        if self.local is None:
            del out["local"]
        else:
            chunks = self.local.chunks
            out["local"]["chunks"] = chunks if isinstance(chunks, int) else list(chunks)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown scenario keys {sorted(unknown)}")
        link = LinkConfig(**data.get("link", {}))
        local = data.get("local")
        return cls(**{**data, "link": link, "local": LocalKV(**local) if isinstance(local, dict) else local})

    def with_(self, **changes: Any) -> Scenario:
        """A copy with top-level or link fields changed (link fields by their own names)."""
        link_names = {f.name for f in fields(LinkConfig)}
        link_changes = {k: v for k, v in changes.items() if k in link_names}
        top = {k: v for k, v in changes.items() if k not in link_names}
        return replace(self, link=replace(self.link, **link_changes), **top)
