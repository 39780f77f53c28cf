"""Plain data of the decode phase: the scenario, the events a decode policy is given, the plan it returns,
and the per-step statistics both worlds write.

The KV cache of the context lives in **token groups** of G consecutive tokens (the unit of a read). Group g
holds tokens [g*G, (g+1)*G). The unfinished last group (the **tail**) and the token being decoded stay in
memory; when the tail fills it is appended to the disk file and becomes a full group that may be read.
The first groups (**sinks**, ceil(sink_tokens / G) of them) are attended at every step.

A decode policy sees, for each (step, layer), one `ScoresReady` (importance per full group, as data) and
returns one `LayerPlan`: which groups to read, which to attend, which to keep resident afterwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sparkv.core.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from sparkv.core.model import ModelSpec

SCORE_KINDS = ("none", "predicted", "exact")  # what a policy needs to plan a layer
DISK = "disk"  # the tier every full group is on
MEMORY = "memory"  # the tier groups are attended from
DIRECT_ALIGN = 512  # bytes: offsets and sizes of O_DIRECT reads are multiples of the logical block


@dataclass(frozen=True)
class DecodeScenario:
    """One decode run: a context already in the KV cache, then `steps` generated tokens."""

    model: str = "smollm2-135m"  # built-in model spec or Hugging Face model directory
    context_tokens: int = 8192  # tokens in the KV cache when decoding starts
    group_tokens: int = 4  # G: tokens per group (the unit of a read)
    steps: int = 32  # tokens decoded
    budget_bytes: int = 0  # KV bytes a bounded policy may hold in memory; 0: budget_fraction of the KV
    budget_fraction: float = 0.125  # used when budget_bytes is 0
    sink_tokens: int = 4  # first tokens attended at every step
    select_tokens: int = 400  # M: tokens selected beyond sinks and tail, capped by the budget; 0: all it allows
    rank: int = 24  # r: columns of the low-rank key metadata (KVSwap)
    storage: str = "this-vm"  # storage profile name or JSON path (this-vm: measured by sparkv profile --disk)
    device: str = "cpu-smollm2"  # device profile (compute) name or JSON path
    queue_depth: int = 16  # reads in flight at once
    max_request_bytes: int = 1 << 20  # adjacent groups are merged into requests up to this size
    scores: str = "synthetic:seed=0"  # score trace: "synthetic:..." spec or a recorded .npz path
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("context_tokens", "group_tokens", "steps", "queue_depth", "max_request_bytes", "rank"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DecodeScenario.{name} must be positive, got {getattr(self, name)}")
        for name in ("budget_bytes", "sink_tokens", "select_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"DecodeScenario.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.budget_fraction <= 1.0:
            raise ValueError(f"DecodeScenario.budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if self.context_tokens < self.sink_tokens + self.group_tokens:
            raise ValueError(
                f"context of {self.context_tokens} tokens is shorter than sinks ({self.sink_tokens}) + one group "
                f"({self.group_tokens})"
            )

    def with_(self, **changes: Any) -> DecodeScenario:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecodeScenario:
        return cls(**data)


@dataclass(frozen=True)
class DecodeGeometry:
    """Sizes derived from a scenario and a model: bytes per group, groups per layer, the budget in groups."""

    num_layers: int
    group_tokens: int
    group_bytes: int  # K and V of one group at one layer
    slot_bytes: int  # a group's slot on disk: group_bytes rounded up to the 512 B block O_DIRECT needs
    token_bytes: int  # K and V of one token at one layer
    context_groups: int  # full groups when decoding starts
    context_tail_tokens: int  # tokens of the context in the unfinished last group
    sink_groups: int
    budget_bytes: int  # resolved: KV bytes a bounded policy may hold in memory, all layers
    select_tokens: int  # resolved M (a multiple of G), beyond sinks and tail
    metadata_bytes_per_token: int  # low-rank key metadata of one token at one layer (fp16)

    @property
    def budget_tokens_per_layer(self) -> int:
        return self.budget_bytes // (self.num_layers * self.token_bytes)

    @property
    def free_groups(self) -> int:
        """Groups per layer the budget leaves beyond the sinks, the tail group and the token being decoded."""
        return max(0, (self.budget_tokens_per_layer - 1) // self.group_tokens - self.sink_groups - 1)

    @property
    def select_groups(self) -> int:
        return self.select_tokens // self.group_tokens

    @property
    def kv_bytes(self) -> int:
        """The context's whole KV cache, all layers."""
        return self.context_groups * self.group_bytes * self.num_layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def min_budget_bytes(spec: ModelSpec, scenario: DecodeScenario) -> int:
    """The smallest budget a bounded policy can run with, every layer: the sink groups, one tail group, and the
    token being decoded (a full tail stays resident until the next plan for its layer drops it)."""
    g = scenario.group_tokens
    sink_groups = -(-scenario.sink_tokens // g)
    return ((sink_groups + 1) * g + 1) * spec.kv_bytes_per_token_layer * spec.num_layers


def decode_geometry(spec: ModelSpec, scenario: DecodeScenario) -> DecodeGeometry:
    """Resolve the scenario's budget and M against a model; a budget below sinks + tail is a UserError."""
    g = scenario.group_tokens
    token_bytes = spec.kv_bytes_per_token_layer
    group_bytes = g * token_bytes
    context_groups = scenario.context_tokens // g
    sink_groups = -(-scenario.sink_tokens // g)
    kv_bytes = context_groups * group_bytes * spec.num_layers
    budget = scenario.budget_bytes or int(kv_bytes * scenario.budget_fraction)
    floor = min_budget_bytes(spec, scenario)
    if budget < floor:
        raise UserError(
            f"decode budget of {budget} bytes is below sinks + tail: the minimum is {floor} bytes "
            f"({sink_groups} sink group(s) + 1 tail group of {g} tokens + the current token, x {token_bytes} B "
            f"x {spec.num_layers} layers)"
        )
    free_groups = (budget // (spec.num_layers * token_bytes) - 1) // g - sink_groups - 1
    select = free_groups * g
    if scenario.select_tokens:
        select = min(select, scenario.select_tokens // g * g)
    return DecodeGeometry(
        num_layers=spec.num_layers,
        group_tokens=g,
        group_bytes=group_bytes,
        slot_bytes=-(-group_bytes // DIRECT_ALIGN) * DIRECT_ALIGN,
        token_bytes=token_bytes,
        context_groups=context_groups,
        context_tail_tokens=scenario.context_tokens % g,
        sink_groups=sink_groups,
        budget_bytes=budget,
        select_tokens=select,
        metadata_bytes_per_token=2 * scenario.rank,
    )


# ---- events (driver -> decode policy) ----


@dataclass(frozen=True, eq=False)
class ScoresReady:
    """Importance of every full group for one (step, layer), handed to `plan`.

    `predicted` is what a real system can know before the layer runs (KVSwap: low-rank key metadata scored
    against the query predicted from the previous layer); `exact` is the layer's true attention mass per
    group (a reference). Either is None when the policy did not ask for it (`score_kind`).
    """

    t_s: float  # when the scores were ready, driver's clock
    step: int
    layer: int
    full_groups: int  # groups 0..full_groups-1 are on disk and may be read
    predicted: np.ndarray | None = None  # float32 [full_groups]
    exact: np.ndarray | None = None  # float32 [full_groups]


@dataclass(frozen=True)
class ReadDone:
    """The reads of one layer plan finished."""

    t_s: float
    step: int
    layer: int
    groups: int  # groups read
    bytes: int
    duration_s: float  # first request issued to last request complete


@dataclass(frozen=True)
class LayerDone:
    """One layer of one step finished its attention and FFN."""

    t_s: float
    step: int
    layer: int


@dataclass(frozen=True)
class GroupAppended:
    """The tail filled at the end of `step`: group `group` was written to disk (every layer) and is resident."""

    t_s: float
    step: int
    group: int


@dataclass(frozen=True, eq=False)
class HeadAttention:
    """The attention one layer's query gave, per KV head, at `step` (per-head eviction: H2O, Kelle's AERP).

    `weights[h]` holds the softmax attention (summed over the query heads sharing KV head h) of each token of
    the plan's `heads[h]`, in that order, then the current token's own weight last."""

    t_s: float
    step: int
    layer: int
    weights: tuple[np.ndarray, ...]  # float per KV head: [len(plan.heads[h]) + 1]


DecodeEvent = ReadDone | LayerDone | GroupAppended | HeadAttention


# ---- the plan (decode policy -> driver) ----


@dataclass(frozen=True)
class LayerPlan:
    """What one layer of one step attends to and where it comes from.

    Before the read, resident groups in neither `attend` nor `keep` are dropped (their slots are reused).
    `read` must not hold resident groups; `attend` must lie in resident + read; after the layer, exactly
    `keep` stays resident. The tail group and the current token are always attended and need no entry.
    """

    step: int
    layer: int
    read: tuple[int, ...] = ()  # groups to read from disk, ascending
    attend: tuple[int, ...] = ()  # groups the attention covers, ascending (sinks included)
    keep: tuple[int, ...] = ()  # groups resident after the layer (the reuse buffer), ascending
    recompute: tuple[int, ...] = ()  # groups rebuilt from stored inputs instead of read (Kelle); none yet
    source: str = DISK  # tier the reads come from (a computational-storage tier for HillInfer)
    heads: tuple[tuple[int, ...], ...] = ()  # per KV head, the groups it attends (each within attend); (): all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- per-step statistics and the decode part of a Result ----


@dataclass(frozen=True)
class DecodeSpan:
    """One interval of decode work: a layer's reads on the storage lane, or a layer's compute."""

    lane: str  # "storage" or "compute"
    kind: str  # "read", "layer", "append"
    step: int
    layer: int
    start_s: float
    end_s: float
    bytes: int = 0


@dataclass(frozen=True)
class StepStats:
    """One decode step, all layers."""

    step: int
    start_s: float
    end_s: float
    bytes_read: int
    groups_read: int
    groups_attended: int  # selected groups (sinks excluded), summed over layers
    hits: int  # selected groups already resident, summed over layers
    read_s: float  # storage lane busy time
    stall_s: float  # compute waiting for reads

    @property
    def step_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def hit_rate(self) -> float:
        return self.hits / self.groups_attended if self.groups_attended else 1.0


@dataclass
class DecodeSummary:
    """The decode part of a `Result`: steps, spans, totals, the memory high-water mark."""

    geometry: dict[str, Any]
    steps: list[StepStats] = field(default_factory=list)
    spans: list[DecodeSpan] = field(default_factory=list)
    memory_hwm_bytes: int = 0  # KV in memory (resident + in flight + tail), all layers
    metadata_bytes: int = 0  # low-rank key metadata held in memory at the end
    policy_stats: dict[str, Any] = field(default_factory=dict)

    def totals(self) -> dict[str, float]:
        """Flat statistics over steps (step times in seconds; the first step, which starts cold, included)."""
        import statistics

        times = sorted(s.step_s for s in self.steps)
        n = len(times)
        total_s = sum(times)
        attended = sum(s.groups_attended for s in self.steps)
        return {
            "steps": n,
            "step_median_s": statistics.median(times) if n else 0.0,
            "step_p90_s": times[min(n - 1, int(0.9 * n))] if n else 0.0,
            "step_max_s": times[-1] if n else 0.0,
            "tokens_per_s": n / total_s if total_s > 0 else 0.0,
            "bytes_read": float(sum(s.bytes_read for s in self.steps)),
            "hit_rate": sum(s.hits for s in self.steps) / attended if attended else 1.0,
            "read_s": sum(s.read_s for s in self.steps),
            "stall_s": sum(s.stall_s for s in self.steps),
            "memory_hwm_bytes": float(self.memory_hwm_bytes),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "geometry": self.geometry,
            "steps": [asdict(s) for s in self.steps],
            "spans": [asdict(s) for s in self.spans],
            "memory_hwm_bytes": self.memory_hwm_bytes,
            "metadata_bytes": self.metadata_bytes,
            "policy_stats": self.policy_stats,
            "totals": self.totals(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecodeSummary:
        return cls(
            geometry=data["geometry"],
            steps=[StepStats(**s) for s in data.get("steps", [])],
            spans=[DecodeSpan(**s) for s in data.get("spans", [])],
            memory_hwm_bytes=int(data.get("memory_hwm_bytes", 0)),
            metadata_bytes=int(data.get("metadata_bytes", 0)),
            policy_stats=dict(data.get("policy_stats", {})),
        )
