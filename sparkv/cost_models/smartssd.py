"""A computational-storage drive that scores token importance next to the data (HillInfer's SmartSSD): MODELLED.

This machine has no SmartSSD, so its in-storage scoring runs the same numpy kernel on the host (same
results), and the time charged for it comes from this profile: an FPGA's INT8 throughput, the internal
bandwidth from the flash to the FPGA, and the host link that carries the selected tokens back. Every figure
names its source; estimates say so. `scaled` builds the x0.5-x2 what-if variants.
The layout of the quantised keys it scores is `sparkv.core.keyplane`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sparkv.core.errors import UserError

MODELLED = "modelled (no SmartSSD on this machine: the same kernel runs on the host, the time is charged)"


@dataclass(frozen=True)
class SmartSSDProfile:
    """Declared speeds of a computational-storage drive's scoring path (kind is always "modelled")."""

    name: str
    fpga_macs_per_s: float  # sustained INT8 multiply-accumulates per second of the scoring kernel
    internal_bps: float  # flash -> FPGA (peer-to-peer inside the drive), bytes/s
    host_link_bps: float  # drive -> host, bytes/s (the selected groups' ids and scores come back this way)
    command_s: float  # fixed cost of one scoring command (submission, kernel start, completion)
    kind: str = "modelled"
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("fpga_macs_per_s", "internal_bps", "host_link_bps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SmartSSD profile {self.name!r}: {name} must be positive, got {getattr(self, name)}")
        if self.command_s < 0:
            raise ValueError(f"SmartSSD profile {self.name!r}: command_s must be >= 0, got {self.command_s}")

    def tokens_per_s(self, macs_per_token: int) -> float:
        """f_s: tokens the FPGA scores per second (compute only)."""
        return self.fpga_macs_per_s / macs_per_token

    def score_s(self, tokens: int, bytes_per_token: float, macs_per_token: int, result_bytes: int) -> float:
        """Modelled seconds to score `tokens` in storage and return `result_bytes`: the latency model's
        M_s/f_s + alpha*M_s/B_s, plus a command and the result over the host link. 0 when nothing is scored."""
        if tokens <= 0:
            return 0.0
        compute = tokens * macs_per_token / self.fpga_macs_per_s
        internal = tokens * bytes_per_token / self.internal_bps
        return self.command_s + compute + internal + result_bytes / self.host_link_bps

    def scaled(self, fpga: float = 1.0, internal: float = 1.0, link: float = 1.0) -> SmartSSDProfile:
        """A what-if variant: each speed multiplied by its factor (named in the profile's name)."""
        if min(fpga, internal, link) <= 0:
            raise ValueError(f"scale factors must be positive, got {fpga}, {internal}, {link}")
        return replace(self, name=f"{self.name} x(fpga {fpga:g}, internal {internal:g}, link {link:g})",
                       fpga_macs_per_s=self.fpga_macs_per_s * fpga, internal_bps=self.internal_bps * internal,
                       host_link_bps=self.host_link_bps * link)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": MODELLED}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SmartSSDProfile:
        return cls(**{k: v for k, v in data.items() if k != "label"})


_ANAND = "AnandTech 16245 (Xilinx and Samsung launch SmartSSD CSD)"
SMARTSSD_PROFILES: dict[str, SmartSSDProfile] = {
    "samsung-smartssd": SmartSSDProfile(
        name="samsung-smartssd",
        fpga_macs_per_s=0.59e12,
        internal_bps=3.2e9,
        host_link_bps=3.2e9,
        command_s=20e-6,
        sources={
            "device": f"{_ANAND}: a PCIe Gen3 enterprise SSD, the second-largest Kintex UltraScale+ FPGA (KU15P), "
                      "4 GB DDR4 for the FPGA; the FPGA acts as a PCIe switch, so host traffic passes through it",
            "fpga_macs_per_s": "estimate: KU15P 1968 DSP48E2 slices (Xilinx DS890) x 2 INT8 MACs per slice per "
                               "cycle (Xilinx WP486 packing) x 300 MHz = 1.18e12 peak, half of it sustained",
            "internal_bps": "estimate: flash -> FPGA peer-to-peer over the drive's PCIe Gen3 x4 switch "
                            "(3.94 GB/s raw), ~3.2 GB/s usable, about a Gen3 enterprise SSD's sequential read",
            "host_link_bps": "estimate: PCIe Gen3 x4 to the host, ~3.2 GB/s usable",
            "command_s": "estimate: one NVMe-style command plus an FPGA kernel start and completion, 20 us",
            "paper": "HillInfer (arXiv 2602.18750): RTX 4090 PC with a Samsung SmartSSD (abstract only)",
        },
    ),
}  # fmt: skip


def get_smartssd(name: str) -> SmartSSDProfile:
    if name not in SMARTSSD_PROFILES:
        raise UserError(f"unknown SmartSSD profile {name!r}; built-in: {', '.join(SMARTSSD_PROFILES)} (modelled)")
    return SMARTSSD_PROFILES[name]


@dataclass(frozen=True)
class HostScoring:
    """The host's side of the scoring (measured or fitted on this machine): a fixed cost per layer for the
    hot pool's scores (the query included), a fixed cost when a cold share is scored, and a cost per token."""

    hot_fixed_s: float = 0.0
    cpu_fixed_s: float = 0.0
    per_token_s: float = 5e-7
    source: str = "default: 2e6 tokens/s"

    def hot_s(self, tokens: int) -> float:
        return self.hot_fixed_s + self.per_token_s * tokens

    def cpu_s(self, tokens: int) -> float:
        return self.cpu_fixed_s + self.per_token_s * tokens if tokens else 0.0

    def scaled(self, factor: float, why: str = "") -> HostScoring:
        """Every cost times `factor` (the host computing `factor` times slower than when measured)."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"host scoring scale factor must be finite and > 0, got {factor!r}")
        note = f"; scaled x{factor:.4f}" + (f" ({why})" if why else "")
        return HostScoring(self.hot_fixed_s * factor, self.cpu_fixed_s * factor, self.per_token_s * factor,
                           self.source + note)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HostScoring:
        return cls(**data)
