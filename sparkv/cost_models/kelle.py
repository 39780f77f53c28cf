"""Modelled Kelle memory system: eDRAM retention, refresh policies (uniform, 2DRP), and an energy ledger per
generated token for the on-chip KV tier (SRAM or eDRAM) and the off-chip DRAM (LPDDR4).

Everything here is **modelled** from figures of Kelle (Xia and Zhang, MICRO'25, arXiv 2510.16040; Table 1 from
Destiny at 65 nm for 4 MB arrays, section 8 for the system) plus declared assumptions, each named in SOURCES.

Retention: a cell fails (loses its charge: a stored 1 reads 0) when its retention time is shorter than the
time its data waits without a refresh, i.e. min(refresh interval, the data's lifetime). Retention times follow
a Weibull law P(t) = 1 - exp(-(t/tau)^beta); the retention curve in the paper is an image, so tau and beta are
fitted to its two stated anchors: a 45 us refresh is error-free (taken as P = 1e-9) and 2DRP's four intervals
(0.36 / 5.4 ms for the high-score tokens' bits 15-8 / 7-0, 1.44 / 7.2 ms for the low-score ones, half the
tokens in each) give a mean failure rate of 2e-3.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from sparkv.core.model import ModelSpec

MIB4 = 4 << 20  # the 4 MB arrays of Kelle's Table 1
SAFE_INTERVAL_S = 45e-6  # Table 1: the eDRAM retention time (refresh at 45 us is error-free)
SAFE_FAILURE = 1e-9  # assumption: "error-free" at 45 us, as a per-cell failure probability
TWO_DRP_MEAN_FAILURE = 2e-3  # section 7.1: 2DRP's averaged retention failure rate
BUCKETS = (("high", "msb"), ("high", "lsb"), ("low", "msb"), ("low", "lsb"))
TWO_DRP_INTERVALS_S = {("high", "msb"): 0.36e-3, ("high", "lsb"): 5.4e-3, ("low", "msb"): 1.44e-3,
                       ("low", "lsb"): 7.2e-3}  # fmt: skip

SOURCES: dict[str, str] = {
    "sram": "Kelle Table 1 (Destiny, 65 nm, 4 MB): SRAM 7.3 mm^2, 2.6 ns, 185.9 pJ/byte, 415 mW leakage",
    "edram": "Kelle Table 1: eDRAM 3.2 mm^2, 1.9 ns, 84.8 pJ/byte, 154 mW leakage, refresh 1.14 mJ, retention 45 us",
    "refresh_energy": "assumption: Table 1's 1.14 mJ is one refresh of the whole 4 MB array (272 pJ per byte "
                      "refreshed; a read and a write back cost 170 pJ/B at the access energy)",
    "bandwidth": "Kelle section 8: SRAM 128 GB/s, eDRAM 256 GB/s; LPDDR4 16 GB at 64 GB/s (CACTI 7)",
    "dram_energy": "derived: Kelle section 8's 11.74 W DRAM power at its 64 GB/s, i.e. 183 pJ/byte moved "
                   "(assumption: the power is drawn at full bandwidth; CACTI gives no per-bit figure in the paper)",
    "compute": "Kelle section 8: 4.13 INT8 TOPS (a MAC is 2 ops); weights INT8 (1 byte per parameter)",
    "2drp": "Kelle section 7.1: intervals 0.36/5.4 ms (high-score tokens, bits 15-8/7-0), 1.44/7.2 ms "
            "(low-score), mean retention 1.05 ms, mean failure rate 2e-3",
    "batch": "Kelle section 8: batch 16 (weights read once per batch step)",
}


# ---- retention and refresh ----


@dataclass(frozen=True)
class RetentionModel:
    """Weibull retention: P(cell failed after waiting t seconds unrefreshed) = 1 - exp(-(t/tau)^beta). Modelled."""

    tau_s: float
    beta: float

    def failure(self, wait_s: float) -> float:
        if wait_s <= 0:
            return 0.0
        return -math.expm1(-((wait_s / self.tau_s) ** self.beta))

    def interval_for(self, failure: float) -> float:
        """The refresh interval whose failure rate is `failure`."""
        return self.tau_s * (-math.log1p(-failure)) ** (1.0 / self.beta)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kind": "modelled Weibull, fitted to Kelle's 45 us and 2DRP anchors"}


def fit_retention(high_fraction: float = 0.5) -> RetentionModel:
    """tau, beta such that P(45 us) = 1e-9 and 2DRP's mean failure over its buckets is 2e-3 (bisection on beta)."""
    x_safe = -math.log1p(-SAFE_FAILURE)

    def model(beta: float) -> RetentionModel:
        return RetentionModel(SAFE_INTERVAL_S / x_safe ** (1.0 / beta), beta)

    def excess(beta: float) -> float:
        plan = two_drp(high_fraction)
        return plan.mean_failure(model(beta)) - TWO_DRP_MEAN_FAILURE

    lo, hi = 0.5, 20.0  # mean failure rises with beta here (the anchor at 45 us is far below the intervals)
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if excess(mid) > 0:
            hi = mid
        else:
            lo = mid
    return model(0.5 * (lo + hi))


@dataclass(frozen=True)
class RefreshPlan:
    """Refresh interval per (token importance, bit half) bucket; `high_fraction` of tokens are high-score."""

    name: str
    intervals_s: dict[tuple[str, str], float]
    high_fraction: float = 0.5

    def share(self, bucket: tuple[str, str]) -> float:
        """Fraction of stored bits in a bucket (each half of a 16-bit value is 8 bits)."""
        return 0.5 * (self.high_fraction if bucket[0] == "high" else 1.0 - self.high_fraction)

    def refreshes_per_byte_s(self) -> float:
        """Refreshes per second per stored byte, averaged over the buckets."""
        return sum(self.share(b) / self.intervals_s[b] for b in BUCKETS)

    def mean_interval_s(self) -> float:
        """The uniform interval with the same refresh work (the harmonic mean: Kelle's 'mean retention')."""
        return 1.0 / self.refreshes_per_byte_s()

    def failure(self, model: RetentionModel, bucket: tuple[str, str], lifetime_s: float = math.inf) -> float:
        """Failure probability of a cell of `bucket` holding data for `lifetime_s`."""
        return model.failure(min(self.intervals_s[bucket], lifetime_s))

    def mean_failure(self, model: RetentionModel) -> float:
        return sum(self.share(b) * self.failure(model, b) for b in BUCKETS)

    def describe(self, model: RetentionModel) -> dict[str, Any]:
        return {"name": self.name, "intervals_ms": {f"{a}-{b}": self.intervals_s[(a, b)] * 1e3 for a, b in BUCKETS},
                "failure_by_bucket": {f"{a}-{b}": self.failure(model, (a, b)) for a, b in BUCKETS},
                "mean_failure": self.mean_failure(model), "mean_interval_ms": self.mean_interval_s() * 1e3,
                "high_fraction": self.high_fraction}  # fmt: skip


def equal_error_uniform(plan: RefreshPlan, model: RetentionModel) -> RefreshPlan:
    """The uniform refresh with `plan`'s mean failure rate. It refreshes no more often than `plan` (Jensen):
    the failure rate as a function of the refresh rate, F(1/r), is convex wherever F(t) grows slower than
    1/t falls (t F''/F' > -2; any Weibull shape, and every realistic low tail), so of all plans with one
    mean failure rate the uniform one does the least refresh work. 2DRP's gain is where its errors land
    (low bits, low-score tokens), i.e. quality at that rate, not refresh energy at that rate."""
    return uniform_refresh(model.interval_for(plan.mean_failure(model)))


def uniform_refresh(interval_s: float) -> RefreshPlan:
    return RefreshPlan(f"uniform {interval_s * 1e6:.0f} us", {b: interval_s for b in BUCKETS})


def two_drp(high_fraction: float = 0.5) -> RefreshPlan:
    return RefreshPlan("2DRP", dict(TWO_DRP_INTERVALS_S), high_fraction)


# ---- tiers and the ledger ----


@dataclass(frozen=True)
class KelleTier:
    """One memory of the modelled system (all figures from SOURCES)."""

    name: str
    capacity_bytes: int
    bandwidth_bps: float
    pj_per_byte: float  # read or write
    leakage_w: float
    refresh_j_per_byte: float = 0.0  # one refresh of one byte (eDRAM)


SRAM = KelleTier("sram", MIB4, 128e9, 185.9, 0.415)
EDRAM = KelleTier("edram", MIB4, 256e9, 84.8, 0.154, refresh_j_per_byte=1.14e-3 / MIB4)
DRAM = KelleTier("lpddr4", 16 << 30, 64e9, 11.74 / 64e9 * 1e12, 0.0)
TOPS = 4.13e12


@dataclass(frozen=True)
class MemoryConfig:
    """Where the kept KV lives: an on-chip tier (what does not fit spills to DRAM), and its refresh."""

    name: str
    onchip: KelleTier
    refresh: RefreshPlan | None = None


def kelle_configs(uniform_s: float = SAFE_INTERVAL_S, high_fraction: float = 0.5) -> list[MemoryConfig]:
    return [MemoryConfig("SRAM", SRAM), MemoryConfig(f"eDRAM (uniform {uniform_s * 1e6:.0f} us)", EDRAM,
                                                       uniform_refresh(uniform_s)),
            MemoryConfig("eDRAM+2DRP", EDRAM, two_drp(high_fraction))]  # fmt: skip


@dataclass
class TokenTraffic:
    """One sequence's KV traffic per generated token (means over the run's steps), from a decode run."""

    kv_read_bytes: float  # kept K/V read by attention, all layers
    x_read_bytes: float  # stored inputs read for recomputation
    written_bytes: float  # the new token's K/V (or x), all layers
    held_bytes: float  # kept cache (K/V + x), all layers
    recomputed_tokens: float  # tokens whose K/V were rebuilt (all layers)
    source: str = ""

    @classmethod
    def from_stats(cls, stats: dict[str, Any], source: str = "") -> TokenTraffic:
        def mean(key: str) -> float:
            values = stats[key][1:] or stats[key]  # step 0 admits nothing: it is not a steady step
            return sum(values) / len(values) if values else 0.0

        return cls(mean("kv_read_bytes_by_step"), mean("x_read_bytes_by_step"), mean("written_bytes_by_step"),
                   mean("held_bytes_by_step"), mean("recomputed_tokens_by_step"), source)  # fmt: skip

    @classmethod
    def full_cache(cls, spec: ModelSpec, tokens: int) -> TokenTraffic:
        """The original model: every cached token's K/V read each step, nothing evicted."""
        kv = spec.kv_bytes_per_token * tokens
        return cls(kv, 0.0, spec.kv_bytes_per_token, kv, 0.0, f"full cache of {tokens} tokens")


@dataclass
class EnergyLine:
    tier: str
    read_j: float = 0.0
    write_j: float = 0.0
    leakage_j: float = 0.0
    refresh_j: float = 0.0

    @property
    def total_j(self) -> float:
        return self.read_j + self.write_j + self.leakage_j + self.refresh_j


@dataclass
class TokenEnergy:
    """Modelled energy of one generated token (one sequence's share of a batch step), by tier."""

    config: str
    lines: list[EnergyLine]
    token_s: float  # modelled time per generated token
    onchip_fraction: float  # share of the kept KV that fits on chip
    bound: str  # what limits the batch step: "dram", "onchip" or "compute"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def total_j(self) -> float:
        return sum(line.total_j for line in self.lines)

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "modelled": True, "total_j": self.total_j, "token_s": self.token_s,
                "onchip_fraction": self.onchip_fraction, "bound": self.bound,
                "lines": [{**asdict(x), "total_j": x.total_j} for x in self.lines], **self.extra}  # fmt: skip


def token_energy(spec: ModelSpec, traffic: TokenTraffic, config: MemoryConfig, batch: int = 16) -> TokenEnergy:
    """Modelled energy per generated token: the kept KV of `batch` sequences fills the on-chip tier first (the
    rest spills to DRAM, as Kelle keeps a subset of layers on chip); weights (INT8) stream from DRAM once per
    batch step. Time per batch step = max(DRAM, on-chip, compute); leakage and refresh accrue over it."""
    on = config.onchip
    held = traffic.held_bytes * batch
    frac = min(1.0, on.capacity_bytes / held) if held > 0 else 1.0
    moved = traffic.kv_read_bytes + traffic.x_read_bytes
    weights = float(spec.num_layers * spec.layer_params + spec.vocab_size * spec.hidden_size)  # 1 byte each
    dram_bytes = weights + batch * (1 - frac) * (moved + traffic.written_bytes)
    onchip_bytes = batch * frac * (moved + traffic.written_bytes)
    attn_macs = traffic.kv_read_bytes / spec.dtype_bytes  # one MAC per K or V value read
    recompute_macs = traffic.recomputed_tokens * spec.hidden_size * 2 * spec.num_kv_heads * spec.head_dim
    macs = batch * (weights + attn_macs + recompute_macs)
    times = {"dram": dram_bytes / DRAM.bandwidth_bps, "onchip": onchip_bytes / on.bandwidth_bps,
             "compute": 2 * macs / TOPS}  # fmt: skip
    bound = max(times, key=lambda k: times[k])
    step_s = times[bound]
    share = 1.0 / batch
    chip = EnergyLine(on.name)
    chip.read_j = frac * moved * on.pj_per_byte * 1e-12
    chip.write_j = frac * traffic.written_bytes * on.pj_per_byte * 1e-12
    chip.leakage_j = on.leakage_w * step_s * share
    if config.refresh is not None:
        stored = min(held, on.capacity_bytes)
        chip.refresh_j = stored * config.refresh.refreshes_per_byte_s() * on.refresh_j_per_byte * step_s * share
    dram = EnergyLine(DRAM.name)
    dram.read_j = (weights * share + (1 - frac) * moved) * DRAM.pj_per_byte * 1e-12
    dram.write_j = (1 - frac) * traffic.written_bytes * DRAM.pj_per_byte * 1e-12
    return TokenEnergy(config.name, [chip, dram], step_s * share, frac, bound,
                       {"batch": batch, "traffic_source": traffic.source})  # fmt: skip


# ---- compute of the per-head decode on the machine that runs it (what the simulator charges) ----


@dataclass(frozen=True)
class HeadDecodeCompute:
    """One layer of per-head decode: fixed + per attended (head, token) entry + per recomputed token; plus a
    fixed part per step. Derived from a decode compute model, or calibrated on real runs (the kind says)."""

    layer_fixed_s: float
    per_head_token_s: float
    per_recompute_token_s: float
    step_fixed_s: float
    kind: str = "derived"
    source: str = ""

    def layer_s(self, head_tokens: int, recomputed: int) -> float:
        return self.layer_fixed_s + self.per_head_token_s * head_tokens + self.per_recompute_token_s * recomputed

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def derive(cls, layer_fixed_s: float, per_attended_token_s: float, step_fixed_s: float, spec: ModelSpec,
               source: str) -> HeadDecodeCompute:  # fmt: skip
        """From a group-level decode compute: an attended token covers all KV heads; recomputing one token
        costs its K/V projection (D x 2 x KV x hd MACs) against attention's 2 x H x hd per attended token."""
        per_entry = per_attended_token_s / spec.num_kv_heads
        kv_width = 2 * spec.num_kv_heads * spec.head_dim
        ratio = spec.hidden_size * kv_width / (2 * spec.num_attention_heads * spec.head_dim)
        return cls(layer_fixed_s, per_entry, per_attended_token_s * ratio, step_fixed_s, "derived", source)


# The paper's main model, from its config.json (Llama-2-7b-hf): MHA, 32 layers, d_model 4096, 32 heads of 128.
LLAMA2_7B = ModelSpec("llama-2-7b", 32, 4096, 32, 32, 128, 11008, 32000)

# Kelle section 8's hardware workloads: (task, context tokens, decoded tokens, N' of section 7.1 for the task)
PAPER_WORKLOADS = (("LAMBADA", 128, 512, 128), ("TriviaQA", 512, 2048, 1024), ("Qasper", 1024, 5120, 1024),
                   ("PG19", 512, 8192, 2048))  # fmt: skip


def paper_workloads(spec: ModelSpec, batch: int = 16) -> list[dict[str, Any]]:
    """Modelled: Original+SRAM (full cache, mean length over the decode) against AERP on eDRAM+2DRP (N' per
    head once full) and on SRAM, for Kelle's four workloads on `spec`'s dimensions; recompute per `spec`'s rule."""
    rows = []
    per_token = spec.kv_bytes_per_token
    for task, ctx, dec, budget in PAPER_WORKLOADS:
        mean_tokens = ctx + dec / 2
        base = token_energy(spec, TokenTraffic.full_cache(spec, int(mean_tokens)), MemoryConfig("SRAM", SRAM), batch)
        kept = min(budget, mean_tokens) * per_token
        traffic = TokenTraffic(kept, 0.0, per_token, kept, 0.0, f"AERP N'={budget}")
        sram = token_energy(spec, traffic, MemoryConfig("SRAM", SRAM), batch)
        kelle = token_energy(spec, traffic, MemoryConfig("eDRAM+2DRP", EDRAM, two_drp()), batch)
        rows.append({"task": task, "context": ctx, "decoded": dec, "budget": budget,
                     "original_sram_mj": base.total_j * 1e3, "aerp_sram_mj": sram.total_j * 1e3,
                     "kelle_mj": kelle.total_j * 1e3, "ratio": base.total_j / kelle.total_j,
                     "modelled": True})  # fmt: skip
    return rows
