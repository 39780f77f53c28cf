"""Memory tiers a KV entry can live in during decode: capacity, read/write cost and energy per byte.

A tier here is a place with a capacity, a bandwidth and an energy per byte moved plus a static power.
Disks are described by a `StorageProfile` (bandwidth by request size and queue depth) and join a tier
list through `storage_tier`. Figures carry their sources; estimates say so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sparkv.core.errors import UserError
from sparkv.cost_models.storage import StorageProfile


@dataclass(frozen=True)
class MemoryTier:
    name: str
    capacity_bytes: int
    read_bps: float
    write_bps: float
    read_pj_per_byte: float = 0.0
    write_pj_per_byte: float = 0.0
    static_w: float = 0.0  # leakage / refresh / idle power while the tier holds data
    can_score: bool = False  # computes importance scores next to the data (computational storage)
    sources: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.capacity_bytes <= 0 or self.read_bps <= 0 or self.write_bps <= 0:
            raise ValueError(f"tier {self.name!r}: capacity and bandwidths must be positive")

    def read_s(self, nbytes: int) -> float:
        return nbytes / self.read_bps

    def energy_j(self, bytes_read: int, bytes_written: int, held_s: float) -> float:
        """Modelled energy: bytes moved at the tier's pJ/B plus static power over the time data is held."""
        moved = bytes_read * self.read_pj_per_byte + bytes_written * self.write_pj_per_byte
        return moved * 1e-12 + self.static_w * held_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def storage_tier(profile: StorageProfile, capacity_bytes: int = 1 << 40) -> MemoryTier:
    """A disk as a tier: its best bandwidth; the size- and depth-dependent cost stays in the profile."""
    best = max(v for row in profile.read_bps for v in row)
    return MemoryTier(
        name=f"disk:{profile.name}", capacity_bytes=capacity_bytes, read_bps=best, write_bps=profile.write_bps,
        sources={"read_bps": f"best entry of storage profile {profile.name!r}"},
    )  # fmt: skip


_KELLE = "Kelle (Destiny 65 nm, 4 MB arrays; tables at code-index id 47304719166)"
TIERS: dict[str, MemoryTier] = {
    t.name: t
    for t in (
        MemoryTier("orin-lpddr5", 64 << 30, 204.8e9, 204.8e9, read_pj_per_byte=40.0, write_pj_per_byte=40.0,
                   sources={"capacity_bytes": "Jetson AGX Orin 64GB: 64 GB LPDDR5 shared by CPU and GPU",
                            "read_bps": "256-bit LPDDR5 at 3200 MHz, 204.8 GB/s (Jetson AGX Orin Technical Brief)",
                            "read_pj_per_byte": "estimate: ~5 pJ/bit for LPDDR5 access and I/O"}),
        MemoryTier("kelle-edram", 4 << 20, 1 / 1.9e-9 * 64, 1 / 1.9e-9 * 64, read_pj_per_byte=84.8,
                   write_pj_per_byte=84.8, static_w=0.154,
                   sources={"all": f"{_KELLE}: eDRAM 1.9 ns, 84.8 pJ/B, 154 mW; 64 B per access is an estimate"}),
        MemoryTier("kelle-sram", 4 << 20, 1 / 2.6e-9 * 64, 1 / 2.6e-9 * 64, read_pj_per_byte=185.9,
                   write_pj_per_byte=185.9, static_w=0.415,
                   sources={"all": f"{_KELLE}: SRAM 2.6 ns, 185.9 pJ/B, 415 mW; 64 B per access is an estimate"}),
        MemoryTier("kelle-lpddr4", 16 << 30, 64e9, 64e9, read_pj_per_byte=40.0, write_pj_per_byte=40.0,
                   static_w=0.0,
                   sources={"read_bps": f"{_KELLE}: LPDDR4 16 GB, 64 GB/s (CACTI 7)",
                            "read_pj_per_byte": "assumption: 5 pJ/bit (the paper gives 11.74 W, no per-bit figure)"}),
        MemoryTier("smartssd-fpga-dram", 4 << 30, 19.2e9, 19.2e9, can_score=True,
                   sources={"capacity_bytes": "Samsung SmartSSD: Kintex UltraScale+ FPGA, 4 GB DDR4 (AnandTech 16245)",
                            "read_bps": "estimate: one DDR4-2400 x64 channel, 19.2 GB/s"}),
    )
}  # fmt: skip


def get_tier(name: str) -> MemoryTier:
    if name not in TIERS:
        raise UserError(f"unknown memory tier {name!r}; built-in: {', '.join(TIERS)}")
    return TIERS[name]
