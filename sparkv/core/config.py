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

    def __post_init__(self) -> None:
        if self.server_fails_at_s is not None and not self.server_fails_at_s >= 0:
            raise ValueError(f"server_fails_at_s must be >= 0 or None, got {self.server_fails_at_s}")
        if self.rtt_s < 0 or self.per_transfer_s < 0:
            raise ValueError(f"rtt_s and per_transfer_s must be >= 0, got {self.rtt_s}, {self.per_transfer_s}")
        if not 0 < self.efficiency <= 1:
            raise ValueError(f"efficiency must be in (0, 1], got {self.efficiency}")
        if self.bandwidth_scale <= 0:
            raise ValueError(f"bandwidth_scale must be positive, got {self.bandwidth_scale}")


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown scenario keys {sorted(unknown)}")
        link = LinkConfig(**data.get("link", {}))
        return cls(**{**data, "link": link})

    def with_(self, **changes: Any) -> Scenario:
        """A copy with top-level or link fields changed (link fields by their own names)."""
        link_names = {f.name for f in fields(LinkConfig)}
        link_changes = {k: v for k, v in changes.items() if k in link_names}
        top = {k: v for k, v in changes.items() if k not in link_names}
        return replace(self, link=replace(self.link, **link_changes), **top)
