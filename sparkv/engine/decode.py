"""The decode state machine both worlds drive: step and layer progression, plan checks, residency and
memory accounting, spans, per-step statistics and the decode part of the Result.

A world (the SimPy model in `sparkv.sim.decode`, the real executor in `sparkv.executor.model.decode_run`)
owns a clock and carries out effects: it asks `plan` when a layer's scores are ready, performs the reads
`plan` returns, and reports `read_done`, `layer_done` and `step_end` with its own times.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from sparkv.core.decode import (
    DecodeSpan,
    DecodeSummary,
    GroupAppended,
    HeadAttention,
    LayerDone,
    LayerPlan,
    ReadDone,
    ScoresReady,
    StepStats,
)
from sparkv.policies.decode.base import DecodeContext, DecodePolicy


class PlanError(ValueError):
    """A decode policy returned a plan that breaks the contract (a bug in the policy)."""


class ReadJob(NamedTuple):
    """The reads of one accepted plan: runs of adjacent groups, split into requests (a named tuple: one per
    layer and step, built at C speed)."""

    step: int
    layer: int
    requests: tuple[tuple[int, int], ...]  # (first group, groups) per request, ascending
    groups: int
    bytes: int


def coalesce(groups: tuple[int, ...], max_groups: int) -> tuple[tuple[int, int], ...]:
    """Ascending groups -> (first, count) runs of adjacent groups, each at most `max_groups` long."""
    if not groups:
        return ()
    first, n = groups[0], len(groups)
    if groups[-1] - first + 1 == n:  # one contiguous range (a full reload): split it directly
        return tuple((g, min(max_groups, first + n - g)) for g in range(first, first + n, max_groups))
    out: list[tuple[int, int]] = []
    start = prev = first
    if max_groups >= n:  # no run can be too long: only the breaks between runs matter
        for g in groups:
            if g != prev + 1 and g != first:
                out.append((start, prev - start + 1))
                start = g
            prev = g
        out.append((start, prev - start + 1))
        return tuple(out)
    for g in groups[1:]:
        if g == prev + 1 and g - start < max_groups:
            prev = g
            continue
        out.append((start, prev - start + 1))
        start = prev = g
    out.append((start, prev - start + 1))
    return tuple(out)


class DecodeEngine:
    """One decode run of one policy: checks every plan, tracks residency and memory, writes the summary."""

    def __init__(
        self,
        ctx: DecodeContext,
        policy: DecodePolicy,
        max_request_bytes: int,
        record_spans: bool = True,
        record_log: bool = False,
    ) -> None:
        geo = ctx.geometry
        self.ctx, self.geo, self.policy = ctx, geo, policy
        self.max_request_groups = max(1, max_request_bytes // geo.slot_bytes)
        self.record_spans, self.record_log = record_spans, record_log
        self._skip: frozenset[type] = frozenset() if record_log else frozenset(getattr(policy, "ignored_events", ()))
        self.full_groups = geo.context_groups
        self.tail_tokens = geo.context_tail_tokens  # tokens in the unfinished group (the current one not counted)
        self.resident: list[set[int]] = []
        self.keep: list[tuple[int, ...]] = [() for _ in range(geo.num_layers)]
        self.mem_groups = 0
        self.memory_hwm_bytes = 0
        self.spans: list[DecodeSpan] = []
        self.steps: list[StepStats] = []
        self.log: list[tuple[str, Any]] = []  # ("plan", LayerPlan) and ("event", event), for replay
        self._step = -1
        self._step_start_s = 0.0
        self._acc = [0, 0, 0, 0, 0.0, 0.0]  # bytes, groups read, attended, hits, read_s, stall_s
        policy.begin(ctx)
        for layer in range(geo.num_layers):
            groups = tuple(policy.initial_resident(layer))
            bad = [g for g in groups if not 0 <= g < self.full_groups]
            if bad:
                raise PlanError(f"{policy.name}: initial residency of layer {layer} names missing groups {bad[:5]}")
            self.resident.append(set(groups))
            self.keep[layer] = groups
            self.mem_groups += len(groups)
        self._check_memory()

    # ---- memory ----

    @property
    def memory_bytes(self) -> int:
        """KV in memory now: resident and incoming groups, plus the tail and the current token, all layers."""
        geo = self.geo
        return self.mem_groups * geo.group_bytes + (self.tail_tokens + 1) * geo.token_bytes * geo.num_layers

    def _check_memory(self) -> None:
        mem = self.memory_bytes
        if mem > self.memory_hwm_bytes:
            self.memory_hwm_bytes = mem
        if self.policy.bounded and mem > self.geo.budget_bytes:
            raise PlanError(
                f"{self.policy.name} holds {mem} bytes of KV, over its budget of {self.geo.budget_bytes} bytes"
            )

    # ---- progression ----

    def step_begin(self, step: int, t_s: float) -> None:
        if step != self._step + 1:
            raise PlanError(f"decode step {step} began after step {self._step}")
        self._step, self._step_start_s = step, t_s
        self._acc = [0, 0, 0, 0, 0.0, 0.0]

    def scores_for(self, step: int, layer: int, t_s: float, predicted: Any = None, exact: Any = None) -> ScoresReady:
        return ScoresReady(t_s=t_s, step=step, layer=layer, full_groups=self.full_groups,
                           predicted=predicted, exact=exact)  # fmt: skip

    def plan(self, scores: ScoresReady) -> tuple[LayerPlan, ReadJob]:
        """Ask the policy for one layer's plan, check it, move residency to the working set, size the reads."""
        plan = self.policy.plan(scores)
        if self.record_log:
            self.log.append(("scores", scores))
            self.log.append(("plan", plan))
        layer, res = scores.layer, self.resident[scores.layer]
        if plan.step != scores.step or plan.layer != layer:
            raise PlanError(f"{self.policy.name}: asked for step {scores.step} layer {layer}, planned "
                            f"step {plan.step} layer {plan.layer}")  # fmt: skip
        read, attend, keep = plan.read, plan.attend, plan.keep
        full = self.full_groups
        if read and (read[0] < 0 or read[-1] >= full):
            raise PlanError(f"{self.policy.name}: step {scores.step} layer {layer} reads groups outside 0..{full - 1}")
        if not res.isdisjoint(read):
            raise PlanError(f"{self.policy.name}: step {scores.step} layer {layer} reads resident groups")
        working = res.intersection(attend)  # resident and attended: the hits (sinks included)
        hits = len(working)
        if keep is attend:  # the common case: what is attended is what stays
            working.update(read)
            valid = len(working) == len(attend) and working.issuperset(attend)
        else:
            working.update(res.intersection(keep))
            working.update(read)
            wanted = set(attend)
            wanted.update(keep)
            valid = working == wanted
        if not valid:  # working must be exactly attend + keep: nothing missing, nothing read for nothing
            raise PlanError(f"{self.policy.name}: step {scores.step} layer {layer}: attend and keep must come from "
                            "resident groups and reads, and every read must be attended or kept")  # fmt: skip
        if plan.heads and not all(set(h).issubset(attend) for h in plan.heads):
            raise PlanError(f"{self.policy.name}: step {scores.step} layer {layer}: a head attends groups outside "
                            "attend")  # fmt: skip
        sinks = self.geo.sink_groups
        sink_attended = 0
        for g in attend[:sinks]:
            if g < sinks:
                sink_attended += 1
                hits -= g in res
        selected = len(attend) - sink_attended
        self.mem_groups += len(working) - len(res)
        self.resident[layer] = working
        self.keep[layer] = keep
        self._check_memory()
        acc = self._acc
        acc[1] += len(read)
        acc[2] += selected
        acc[3] += hits
        requests = coalesce(read, self.max_request_groups)
        nbytes = len(read) * self.geo.slot_bytes
        acc[0] += nbytes
        return plan, ReadJob(scores.step, layer, requests, len(read), nbytes)

    def read_done(self, job: ReadJob, start_s: float, end_s: float) -> None:
        """The job's reads completed; told to the policy when the layer is about to compute."""
        self._acc[4] += end_s - start_s
        if self.record_spans:
            self.spans.append(DecodeSpan("storage", "read", job.step, job.layer, start_s, end_s, job.bytes))
        if ReadDone not in self._skip:
            self._event(ReadDone(end_s, job.step, job.layer, job.groups, job.bytes, end_s - start_s))

    def layer_done(self, step: int, layer: int, start_s: float, end_s: float, stall_s: float = 0.0) -> None:
        """A layer computed: exactly its plan's `keep` stays resident."""
        keep = self.keep[layer]
        self.mem_groups += len(keep) - len(self.resident[layer])
        self.resident[layer] = set(keep)
        self._acc[5] += stall_s
        if self.record_spans:
            self.spans.append(DecodeSpan("compute", "layer", step, layer, start_s, end_s))
        if LayerDone not in self._skip:
            self._event(LayerDone(end_s, step, layer))

    @property
    def appends_at_step_end(self) -> bool:
        """Whether this step's token completes the tail (the world writes the group before `step_end`)."""
        return self.tail_tokens + 1 >= self.geo.group_tokens

    def step_end(self, step: int, t_s: float) -> GroupAppended | None:
        """The step's token joined the tail; a full tail is appended to disk and stays resident in every layer."""
        acc = self._acc
        self.steps.append(StepStats(step, self._step_start_s, t_s, int(acc[0]), int(acc[1]), int(acc[2]),
                                    int(acc[3]), float(acc[4]), float(acc[5])))  # fmt: skip
        self.tail_tokens += 1
        if self.tail_tokens < self.geo.group_tokens:
            return None
        group = self.full_groups
        self.full_groups += 1
        self.tail_tokens = 0
        for res in self.resident:
            res.add(group)
        self.mem_groups += self.geo.num_layers
        event = GroupAppended(t_s, step, group)
        self._event(event)
        self._check_memory()
        return event

    def head_attention(self, event: HeadAttention) -> None:
        """A layer's per-head attention weights (after its compute), for policies that evict per head."""
        self._event(event)

    def _event(self, event: ReadDone | LayerDone | GroupAppended | HeadAttention) -> None:
        if self.record_log:
            self.log.append(("event", event))
        self.policy.update(event)

    def summary(self, metadata_bytes: int = 0) -> DecodeSummary:
        return DecodeSummary(
            geometry=self.geo.to_dict(),
            steps=list(self.steps),
            spans=list(self.spans),
            memory_hwm_bytes=self.memory_hwm_bytes,
            metadata_bytes=metadata_bytes,
            policy_stats=self.policy.run_stats(),
        )


def replay_decode(ctx: DecodeContext, policy: DecodePolicy, log: list[tuple[str, Any]]) -> list[str]:
    """Feed a fresh policy a recorded log; the differences between its plans and the recorded ones (none: equal)."""
    policy.begin(ctx)
    for layer in range(ctx.geometry.num_layers):
        policy.initial_resident(layer)
    diffs: list[str] = []
    scores: ScoresReady | None = None
    for kind, item in log:
        if kind == "scores":
            scores = item
        elif kind == "plan":
            if scores is None:
                raise ValueError("a replay log's plan must follow its scores")
            again = policy.plan(scores)
            if again != item:
                diffs.append(f"step {item.step} layer {item.layer}: recorded {item}, replayed {again}")
        else:
            policy.update(item)
    return diffs
