"""Per-head KV eviction by accumulated attention: H2O (Zhang et al., NeurIPS 2023) and Kelle's AERP
(Xia and Zhang, MICRO'25, arXiv 2510.16040), with AERP's recomputation rule.

Both work per token (run with G = 1) and per KV head, on a cache of N' tokens per head that nothing is read
back into: an evicted token is gone. A token's importance in a head is the attention it has received there,
accumulated over the prefill's queries and every decode step (with GQA, summed over the query heads that
share the KV head). When the current token joins a head's N' kept tokens, the lowest-scoring evictable token
leaves. The recent window (N'/2 tokens) is always kept; AERP also always keeps 10 initial (sink) tokens and the
prefill keeps each head's top N' (sinks and window first). H2O here: recent window N'/2, heavy hitters N'/2,
no forced sinks, no recomputation.

Recomputation (AERP): a token kept in at least theta = 50 % of the heads is stored as its layer input x
(d_model values) instead of its K and V, fixed until no head keeps it, and K, V are recomputed from x when
attended. It saves memory only when d_model < (heads keeping it) x 2 x head_dim; `recompute_rule` says when.

Decisions are pure Python on the `HeadAttention` events a world delivers after each layer; the same events
in give the same plans out, so the simulator replaying a real run's attention decides identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sparkv.core.decode import DecodeEvent, GroupAppended, HeadAttention, LayerPlan, ScoresReady
from sparkv.policies.decode.base import DecodeContext, DecodePolicyBase

KELLE_SINKS = 10  # initial tokens AERP always keeps (Kelle section 7.1)
THETA = 0.5  # popularity at which AERP stores a token's input x (Kelle section 4.1.2)


@dataclass(frozen=True, eq=False)
class HeadPrefill:
    """What the prefill leaves a per-head policy: model widths and each layer's per-head importance
    (attention received from every prefill query) over the context tokens."""

    kv_heads: int
    head_dim: int
    hidden_size: int  # d_model: the width of a stored input x
    dtype_bytes: int  # bytes per stored value (2: fp16)
    importance: list[np.ndarray]  # per layer, [kv_heads, context tokens] float
    source: str = ""  # "real prefill of ..." or "synthetic:..."


@dataclass(frozen=True)
class RecomputeRule:
    """When storing x instead of K and V saves memory: kept-in-heads x 2 x head_dim > d_model."""

    hidden_size: int
    kv_heads: int
    head_dim: int
    theta: float = THETA

    @property
    def break_even_fraction(self) -> float:
        """The fraction of KV heads a token must be kept in for x to be smaller than its K and V."""
        return self.hidden_size / (2 * self.kv_heads * self.head_dim)

    @property
    def ever_saves(self) -> bool:
        """Whether a token kept in every head is cheaper as x (d_model < 2 x H_kv x head_dim)."""
        return self.hidden_size < 2 * self.kv_heads * self.head_dim

    def stores_x(self, kept_heads: int) -> bool:
        """The rule: popular (>= theta of the heads) and cheaper as x than as its kept K and V."""
        return kept_heads >= self.theta * self.kv_heads and self.hidden_size < kept_heads * 2 * self.head_dim

    def describe(self) -> str:
        kv = 2 * self.kv_heads * self.head_dim
        verdict = (f"saves memory for tokens kept in > {self.break_even_fraction:.0%} of the heads"
                   if self.ever_saves else "never saves memory: recomputation is off")  # fmt: skip
        return (f"recompute rule: x is {self.hidden_size} values, K+V of all {self.kv_heads} KV heads {kv}; "
                f"storing x {verdict} (break-even at {self.break_even_fraction:.2f} of the heads, theta "
                f"{self.theta:.2f})")  # fmt: skip


@dataclass(frozen=True)
class HeadBudgetSettings:
    budget_tokens: int = 512  # N': tokens kept per KV head and layer
    sink_tokens: int = KELLE_SINKS  # initial tokens always kept
    recent_tokens: int = 0  # recent window always kept; 0: N'/2
    recompute: bool = True  # AERP's rule (applied only where it saves memory)
    score: str = "attention"  # "attention" (accumulated); "none": sinks + recent only (StreamingLLM per head)


@dataclass
class _Head:
    tokens: np.ndarray  # int64, ascending
    scores: np.ndarray  # float64, aligned


@dataclass
class _StepBytes:
    """Bytes the kept cache moves per step (all layers), for the energy ledger; equal in both worlds."""

    kv_read: list[int] = field(default_factory=list)
    x_read: list[int] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    held: list[int] = field(default_factory=list)
    recomputed: list[int] = field(default_factory=list)  # tokens whose K, V were rebuilt from x


class HeadBudget(DecodePolicyBase):
    """N' tokens per KV head, evicted by accumulated attention; the shared machinery of AERP and H2O."""

    name = "head-budget"
    score_kind = "none"  # its scores arrive after each layer, as HeadAttention events
    lookahead_layers = 0
    bounded = False  # the engine counts whole groups (all heads); the per-head budget is held here
    ignored_events = frozenset()

    def __init__(self, budget_tokens: int = 512, sink_tokens: int = KELLE_SINKS, recent_tokens: int = 0,
                 recompute: bool = True, score: str = "attention") -> None:  # fmt: skip
        super().__init__()
        recent = recent_tokens or budget_tokens // 2
        if budget_tokens <= 0 or sink_tokens < 0 or recent < 1 or sink_tokens + recent > budget_tokens:
            raise ValueError(f"{self.name}: need N' > 0 and sinks + recent window <= N', got N'={budget_tokens}, "
                             f"sinks {sink_tokens}, recent {recent}")  # fmt: skip
        if score not in ("attention", "none"):
            raise ValueError(f"{self.name}: score must be 'attention' or 'none', got {score!r}")
        self.settings = HeadBudgetSettings(budget_tokens, sink_tokens, recent_tokens, recompute, score)
        self.recent = recent
        self.heads: list[list[_Head]] = []
        self.x_tokens: list[set[int]] = []  # per layer: tokens stored as their input x
        self.pending: list[np.ndarray | None] = []  # per layer: the current token's own weight per head
        self.rule: RecomputeRule | None = None
        self.prefill: HeadPrefill | None = None
        self.bytes = _StepBytes()
        self.evictions = 0
        self._step = -1

    # ---- setup ----

    def begin(self, ctx: DecodeContext) -> None:
        """Start: G must be 1 (the policy works per token); the prefill's per-head importance is required."""
        super().begin(ctx)
        if ctx.geometry.group_tokens != 1:
            raise ValueError(f"{self.name} evicts single tokens: run it with group_tokens (G) = 1")
        prefill = ctx.prefill
        if not isinstance(prefill, HeadPrefill):
            raise ValueError(f"{self.name} needs the prefill's per-head importance (DecodeContext.prefill)")
        if len(prefill.importance) != ctx.geometry.num_layers:
            raise ValueError(f"{self.name}: prefill importance for {len(prefill.importance)} layers, "
                             f"model has {ctx.geometry.num_layers}")  # fmt: skip
        self.prefill = prefill
        self.rule = RecomputeRule(prefill.hidden_size, prefill.kv_heads, prefill.head_dim)
        layers = ctx.geometry.num_layers
        self.heads = [[] for _ in range(layers)]
        self.x_tokens = [set() for _ in range(layers)]
        self.pending = [None] * layers
        self.bytes = _StepBytes()
        self.evictions = 0
        self._step = -1

    def _recomputes(self) -> bool:
        return self.settings.recompute and self.rule is not None and self.rule.ever_saves

    def initial_resident(self, layer: int) -> tuple[int, ...]:
        """Per head: sinks, the recent window, then the top prefill importance up to N'. Returns the union."""
        assert self.prefill is not None
        imp = np.asarray(self.prefill.importance[layer], dtype=np.float64)  # [KV, T]
        total = self.full_groups
        if imp.shape != (self.prefill.kv_heads, total):
            raise ValueError(f"{self.name}: prefill importance of layer {layer} is {imp.shape}, expected "
                             f"({self.prefill.kv_heads}, {total})")  # fmt: skip
        n = self.settings.budget_tokens
        heads = []
        for h in range(imp.shape[0]):
            if total <= n:
                keep = np.arange(total)
            else:
                forced = self._protected(np.arange(total), total)
                rest = np.flatnonzero(~forced)
                room = n - int(forced.sum())
                score = imp[h, rest] if self.settings.score == "attention" else -rest.astype(np.float64)
                top = rest[np.argsort(-score, kind="stable")[:room]] if room > 0 else rest[:0]
                keep = np.sort(np.concatenate([np.flatnonzero(forced), top]))
            heads.append(_Head(keep.astype(np.int64), imp[h, keep].copy()))
        self.heads[layer] = heads
        union = self._union(heads)
        if self._recomputes():
            counts = self._counts(heads)
            self.x_tokens[layer] = {t for t, c in counts.items() if self.rule is not None and self.rule.stores_x(c)}
        self.resident[layer] = set(union)
        return union

    def _protected(self, tokens: np.ndarray, full: int) -> np.ndarray:
        """Sinks and the recent window (the `recent` newest tokens of the `full` that exist)."""
        return (tokens < self.settings.sink_tokens) | (tokens >= full - self.recent)

    @staticmethod
    def _union(heads: list[_Head]) -> tuple[int, ...]:
        if not heads:
            return ()
        return tuple(np.unique(np.concatenate([h.tokens for h in heads])).tolist())

    @staticmethod
    def _counts(heads: list[_Head]) -> dict[int, int]:
        tokens, counts = np.unique(np.concatenate([h.tokens for h in heads]), return_counts=True)
        return dict(zip(tokens.tolist(), counts.tolist(), strict=True))

    # ---- decisions ----

    def plan(self, scores: ScoresReady) -> LayerPlan:
        """Admit last step's token (with the weight it gave itself), evict down to N' per head, attend the rest."""
        layer, full = scores.layer, scores.full_groups
        heads = self.heads[layer]
        if scores.step != self._step:
            self._step = scores.step
            for series in (self.bytes.kv_read, self.bytes.x_read, self.bytes.written, self.bytes.held,
                           self.bytes.recomputed):  # fmt: skip
                series.append(0)
        newest = full - 1
        admitted = bool(heads) and heads[0].tokens.size > 0 and bool(heads[0].tokens[-1] < newest)
        if admitted:
            own = self.pending[layer]
            for h, head in enumerate(heads):
                w = float(own[h]) if own is not None else 0.0
                head.tokens = np.append(head.tokens, newest)
                head.scores = np.append(head.scores, w)
            self.pending[layer] = None
            self._evict(heads, full)
            if self._recomputes() and self.rule is not None and self.rule.stores_x(
                sum(int(h.tokens[-1] == newest) for h in heads)
            ):
                self.x_tokens[layer].add(newest)
        per_head = tuple(tuple(h.tokens.tolist()) for h in heads)
        union = self._union(heads)
        xs = self.x_tokens[layer]
        if xs:
            xs.intersection_update(union)  # x is freed when no head keeps the token
        self._account(layer, per_head, admitted, newest)
        plan = self.make_plan(scores.step, layer, attend=union, keep=union)
        recompute = tuple(sorted(xs)) if xs else ()
        return LayerPlan(step=plan.step, layer=layer, read=plan.read, attend=union, keep=union,
                         recompute=recompute, heads=per_head)  # fmt: skip

    def _evict(self, heads: list[_Head], full: int) -> None:
        n = self.settings.budget_tokens
        for head in heads:
            while head.tokens.size > n:
                free = ~self._protected(head.tokens, full)
                cand = np.flatnonzero(free)
                if not cand.size:
                    break
                # by score; without scores the oldest token outside the sinks (StreamingLLM's window)
                victim = cand[int(np.argmin(head.scores[cand]))] if self.settings.score == "attention" else cand[0]
                head.tokens = np.delete(head.tokens, victim)
                head.scores = np.delete(head.scores, victim)
                self.evictions += 1

    def _account(self, layer: int, per_head: tuple[tuple[int, ...], ...], admitted: bool, newest: int) -> None:
        assert self.prefill is not None
        p = self.prefill
        kv_tok = 2 * p.head_dim * p.dtype_bytes  # K and V of one token in one head
        x_tok = p.hidden_size * p.dtype_bytes
        xs = self.x_tokens[layer]
        kv_entries = sum(len(h) for h in per_head) - (sum(sum(t in xs for t in h) for h in per_head) if xs else 0)
        b = self.bytes
        b.kv_read[-1] += kv_entries * kv_tok
        b.x_read[-1] += len(xs) * x_tok
        b.recomputed[-1] += len(xs)
        b.held[-1] += kv_entries * kv_tok + len(xs) * x_tok
        if admitted:
            b.written[-1] += x_tok if newest in xs else p.kv_heads * kv_tok

    def update(self, event: DecodeEvent) -> None:
        """Accumulate each head's attention; appended tokens are admitted at the next plan of each layer."""
        if isinstance(event, HeadAttention):
            heads = self.heads[event.layer]
            if len(event.weights) != len(heads):
                raise ValueError(f"{self.name}: attention for {len(event.weights)} heads, policy has {len(heads)}")
            own = np.zeros(len(heads))
            for h, (head, w) in enumerate(zip(heads, event.weights, strict=True)):
                w = np.asarray(w, dtype=np.float64)
                if w.shape[0] != head.tokens.size + 1:
                    raise ValueError(f"{self.name}: step {event.step} layer {event.layer} head {h}: "
                                     f"{w.shape[0]} weights for {head.tokens.size} tokens + the current")  # fmt: skip
                head.scores += w[:-1]
                own[h] = w[-1]
            self.pending[event.layer] = own
        elif isinstance(event, GroupAppended):
            super().update(event)

    # ---- what the worlds read ----

    def head_state(self, layer: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per head (tokens, accumulated scores) now: for refresh buckets by importance."""
        return [(h.tokens, h.scores) for h in self.heads[layer]]

    def run_stats(self) -> dict[str, Any]:
        b = self.bytes
        steps = max(1, len(b.held))
        return {
            "budget_tokens_per_head": self.settings.budget_tokens,
            "evictions": self.evictions,
            "x_tokens_end": sum(len(x) for x in self.x_tokens),
            "recompute_rule": self.rule.describe() if self.rule else "",
            "recompute_active": self._recomputes(),
            "kv_read_bytes_by_step": list(b.kv_read),
            "x_read_bytes_by_step": list(b.x_read),
            "written_bytes_by_step": list(b.written),
            "held_bytes_by_step": list(b.held),
            "recomputed_tokens_by_step": list(b.recomputed),
            "held_bytes_mean": sum(b.held) / steps,
            "prefill_source": self.prefill.source if self.prefill else "",
        }


class AERP(HeadBudget):
    """Kelle's attention-based eviction and recomputation policy: 10 sinks, N'/2 recent, recompute by rule."""

    name = "aerp"

    def __init__(self, budget_tokens: int = 512, sink_tokens: int = KELLE_SINKS, recent_tokens: int = 0,
                 recompute: bool = True) -> None:  # fmt: skip
        super().__init__(budget_tokens, sink_tokens, recent_tokens, recompute, "attention")


class H2O(HeadBudget):
    """H2O: heavy hitters by accumulated attention (N'/2) plus the recent window (N'/2); no sinks, no recompute."""

    name = "h2o"

    def __init__(self, budget_tokens: int = 512, recent_tokens: int = 0) -> None:
        super().__init__(budget_tokens, 0, recent_tokens, False, "attention")


class HeadStreaming(HeadBudget):
    """StreamingLLM in the per-head machinery: the same sinks and window in every head, no scores (the
    same tokens the `streaming` policy attends at G = 1, for comparisons at an equal N')."""

    name = "streaming-heads"

    def __init__(self, budget_tokens: int = 512, sink_tokens: int = KELLE_SINKS) -> None:
        super().__init__(budget_tokens, sink_tokens, budget_tokens - sink_tokens, False, "none")


HEAD_POLICIES = ("aerp", "h2o", "streaming-heads")
