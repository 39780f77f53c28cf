"""The decode-policy contract shared by the simulator and the real executor.

A decode policy is pure Python (numpy allowed): no clock, no threads, no I/O, no SimPy or torch. A driver calls

    policy.begin(ctx)                           once, before anything else
    policy.initial_resident(layer)              once per layer: groups in memory when decoding starts
    policy.plan(scores) -> LayerPlan            once per (step, layer), in step then layer order
    policy.update(event)                        for every ReadDone, LayerDone, GroupAppended, in order

`plan` for layer l is asked when its scores are ready: one layer ahead (during layer l-1's compute) when
`lookahead_layers` is 1, at the start of layer l when it is 0; layer 0 at the start of the step. The
driver delivers `ReadDone` for a layer just before that layer's compute, then `LayerDone` after it, so the
order of calls is the same in both worlds. Same calls in, same plans out: that is what replay checks.

A policy tracks what is resident from its own plans (`keep`) and from `GroupAppended` (a new group is
resident in every layer until a plan drops it); the engine checks every plan against its own copy.
New tiers plug in through `LayerPlan.source` and `DecodeContext.tiers`: a hot/cold split (HillInfer) keeps
the hot pool in `keep` and reads the rest from its cold tier, whose in-storage scores arrive as `predicted`;
a per-head budget with recompute (Kelle) fills `recompute` and keeps per-head state in the policy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from sparkv.core.decode import DecodeEvent, DecodeGeometry, GroupAppended, LayerDone, LayerPlan, ReadDone, ScoresReady


@dataclass(frozen=True, eq=False)
class DecodeContext:
    """Everything a decode policy knows when decoding starts."""

    geometry: DecodeGeometry
    model: str  # model name, for the record
    tiers: tuple[str, ...] = ("memory", "disk")  # tiers the driver can read from and hold in
    start_s: float = 0.0
    prefill: Any = None  # what the prefill left a per-head policy (Kelle/H2O: importance per head), or None


@runtime_checkable
class DecodePolicy(Protocol):
    name: str
    score_kind: str  # "none", "predicted" or "exact": what `plan` needs in its ScoresReady
    lookahead_layers: int  # 1: layer l+1 is planned (and its reads issued) while layer l computes
    bounded: bool  # True: the engine holds the policy to the budget
    ignored_events: frozenset[type]  # event types `update` ignores (not built when no log is kept)

    def begin(self, ctx: DecodeContext) -> None: ...

    def initial_resident(self, layer: int) -> tuple[int, ...]: ...

    def plan(self, scores: ScoresReady) -> LayerPlan: ...

    def update(self, event: DecodeEvent) -> None: ...

    def config(self) -> dict[str, Any]: ...

    def run_stats(self) -> dict[str, Any]: ...


class DecodePolicyBase:
    """Defaults for every hook, and the residency bookkeeping all policies share."""

    name = "base"
    score_kind = "none"
    lookahead_layers = 1
    bounded = True
    # Event types `update` does nothing with: a driver that keeps no log need not build them.
    ignored_events: frozenset[type] = frozenset({ReadDone, LayerDone})

    def __init__(self) -> None:
        self.ctx: DecodeContext | None = None
        self.resident: list[set[int]] = []
        self.full_groups = 0
        self._sinks: tuple[int, ...] = ()
        self._select = 0

    @property
    def geometry(self) -> DecodeGeometry:
        if self.ctx is None:
            raise RuntimeError(f"decode policy {self.name!r} used before begin()")
        return self.ctx.geometry

    def begin(self, ctx: DecodeContext) -> None:
        """Start a decode run: remember the geometry; nothing is resident yet."""
        self.ctx = ctx
        self.full_groups = ctx.geometry.context_groups
        self.resident = [set() for _ in range(ctx.geometry.num_layers)]
        self._sinks = tuple(range(min(ctx.geometry.sink_groups, self.full_groups)))
        self._select = self._select_groups()

    def initial_resident(self, layer: int) -> tuple[int, ...]:
        """Groups of `layer` in memory when decoding starts (default: none; all on disk). Recorded as kept."""
        return ()

    def plan(self, scores: ScoresReady) -> LayerPlan:
        """The plan of one (step, layer); default: attend only sinks, read what of them is missing."""
        sinks = self.sinks()
        return self.make_plan(scores.step, scores.layer, attend=sinks, keep=sinks)

    def update(self, event: DecodeEvent) -> None:
        """An observation; the default records appended groups as resident in every layer."""
        if isinstance(event, GroupAppended):
            self.full_groups = max(self.full_groups, event.group + 1)
            for res in self.resident:
                res.add(event.group)

    def config(self) -> dict[str, Any]:
        """Settings only (what rebuilds the policy): the dataclass fields of `self.settings` if present."""
        settings = getattr(self, "settings", None)
        if settings is None or not is_dataclass(settings) or isinstance(settings, type):
            return {}
        return asdict(settings)

    def run_stats(self) -> dict[str, Any]:
        """Statistics of the run so far (not settings); default none."""
        return {}

    # ---- helpers for subclasses ----

    def select_groups(self) -> int:
        """M/G: groups selected beyond the sinks, from the policy's M (or the scenario's), within the budget."""
        return self._select

    def _select_groups(self) -> int:
        geo = self.geometry
        own = getattr(getattr(self, "settings", None), "select_tokens", 0)
        if not own:
            return geo.select_groups
        return max(0, min(own // geo.group_tokens, geo.free_groups))

    def sinks(self) -> tuple[int, ...]:
        """The sink groups (the context always holds them: a scenario has at least sinks + one group)."""
        return self._sinks

    def make_plan(self, step: int, layer: int, attend: tuple[int, ...], keep: tuple[int, ...]) -> LayerPlan:
        """A plan that reads whatever of `attend` is not resident, and records `keep` as the new residency."""
        res = self.resident[layer]
        read = tuple([g for g in attend if g not in res]) if res else attend
        self.resident[layer] = set(keep)
        return LayerPlan(step=step, layer=layer, read=read, attend=attend, keep=keep)


def top_groups(scores: np.ndarray, first: int, count: int) -> tuple[int, ...]:
    """The `count` highest-scoring groups at index >= `first`, ascending (ties: numpy's argpartition order)."""
    n = scores.shape[0] - first
    if count <= 0 or n <= 0:
        return ()
    if count >= n:
        return tuple(range(first, scores.shape[0]))
    idx = np.argpartition(scores[first:], n - count)[n - count :]
    idx.sort()
    idx += first
    return tuple(idx.tolist())


@dataclass(frozen=True)
class SelectSettings:
    """Settings of a policy that attends sinks plus M selected tokens."""

    select_tokens: int = 0  # M; 0: the scenario's (capped by the budget)


@dataclass
class ReuseCounter:
    """Hits and selections per layer: the reuse rate KVSwap logs."""

    hits: list[int] = field(default_factory=list)
    selected: list[int] = field(default_factory=list)

    def add(self, layer: int, hits: int, selected: int) -> None:
        while len(self.hits) <= layer:
            self.hits.append(0)
            self.selected.append(0)
        self.hits[layer] += hits
        self.selected[layer] += selected

    def rates(self) -> list[float]:
        return [h / s if s else 1.0 for h, s in zip(self.hits, self.selected, strict=True)]
