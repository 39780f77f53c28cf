"""The simulated decode world for policies that score importance partly in storage (HillInfer).

As `sim.decode`, plus a scoring phase before each layer's plan (one layer ahead; layer 0 at the step's
start), charged the way the real world spends it: the host's share of cold keys is read on the storage
lane (the storage profile, aligned key-plane spans at the scenario's queue depth) while the host scores
the hot pool (`HostScoring`), then the host scores its share; the drive's share costs the SmartSSD
profile's time (MODELLED), in parallel; the scores are ready when both are done. Scores are replayed from
the score trace, so the same splits and plans follow as in the real run.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Protocol

import simpy

from sparkv.core.decode import DecodeGeometry, DecodeScenario, DecodeSpan, ScoresReady
from sparkv.core.errors import UserError
from sparkv.core.keyplane import plane_span, runs
from sparkv.core.model import ModelSpec
from sparkv.core.result import Result
from sparkv.cost_models.decode_compute import DecodeCompute
from sparkv.cost_models.smartssd import MODELLED, HostScoring, SmartSSDProfile, get_smartssd
from sparkv.cost_models.storage import StorageProfile
from sparkv.engine.decode import DecodeEngine, ReadJob
from sparkv.policies.decode.base import DecodeContext, DecodePolicy
from sparkv.policies.decode.storage_scoring import StorageScoring
from sparkv.sim.storage_lane import StorageLane
from sparkv.traces.scores import ScoreTrace


class DecodeWorldParts(Protocol):
    """What this world reads of `sparkv.sim.decode.DecodeWorld` (which dispatches here)."""

    @property
    def scenario(self) -> DecodeScenario: ...
    @property
    def spec(self) -> ModelSpec: ...
    @property
    def geometry(self) -> DecodeGeometry: ...
    @property
    def storage(self) -> StorageProfile: ...
    @property
    def compute(self) -> DecodeCompute: ...
    @property
    def scores(self) -> ScoreTrace: ...

    def config(self) -> dict[str, Any]: ...


def default_host_scoring(policy: DecodePolicy) -> HostScoring:
    """The host kernel's cost as the policy declares it (f_c), when nothing measured is given."""
    f = float(getattr(getattr(policy, "settings", None), "cpu_tokens_per_s", 2e6))
    return HostScoring(per_token_s=1.0 / f, source=f"the policy's declared f_c = {f:g} tokens/s")


def run_storage_decode_sim(
    world: DecodeWorldParts,
    policy: DecodePolicy,
    ssd: SmartSSDProfile | None = None,
    host: HostScoring | None = None,
    record: bool = True,
    log: bool = False,
) -> tuple[Result, DecodeEngine]:
    """One decode run of a storage-scoring policy in the simulator, and its engine."""
    if not isinstance(policy, StorageScoring):
        raise TypeError(f"decode policy {policy.name!r} has no split hook (not a storage-scoring policy)")
    sc, geo, spec = world.scenario, world.geometry, world.spec
    ssd = ssd or get_smartssd("samsung-smartssd")
    host = host or default_host_scoring(policy)
    ctx = DecodeContext(geometry=geo, model=spec.name, tiers=("memory", "disk", "smartssd"))
    engine = DecodeEngine(ctx, policy, sc.max_request_bytes, record_spans=record, record_log=log)
    env = simpy.Environment()
    storage, compute, trace = world.storage, world.compute, world.scores
    if trace.predicted is None:
        raise UserError(f"score trace {trace.source} holds no predicted scores, which {policy.name} needs")
    pred_arr = trace.predicted
    num_layers, slot, depth, g = geo.num_layers, geo.slot_bytes, sc.queue_depth, geo.group_tokens
    macs = spec.num_attention_heads * spec.head_dim
    lane = StorageLane(storage, depth)
    totals = {"ssd_modelled_s": 0.0, "host_score_s": 0.0, "key_read_s": 0.0}

    def score(step: int, layer: int, t0: float) -> float:
        """Book one layer's scoring phase from `t0`: when its scores are ready."""
        sp = policy.split(step, layer, engine.full_groups)
        rec = sp.record_bytes
        h1 = t0 + host.hot_s(len(sp.hot) * g)
        c1 = h1
        if sp.cpu:
            sizes = [plane_span(first, n, rec)[1] for first, n in runs(sp.cpu)]
            k0, k1 = lane.book(sizes, t0)
            c1 = max(h1, k1) + host.cpu_s(len(sp.cpu) * g)
            totals["key_read_s"] += k1 - k0
            if record:
                engine.spans.append(DecodeSpan("storage", "keys", step, layer, k0, k1, sum(sizes)))
        ssd_s = ssd.score_s(len(sp.storage) * g, rec / g, macs, sp.result_bytes)
        end = max(c1, t0 + ssd_s)
        totals["ssd_modelled_s"] += ssd_s
        totals["host_score_s"] += c1 - t0
        if record:
            engine.spans.append(DecodeSpan("compute", "score", step, layer, t0, end))
            if sp.storage:
                engine.spans.append(DecodeSpan("smartssd", "score-modelled", step, layer, t0, t0 + ssd_s))
        return end

    def issue(step: int, layer: int, at_s: float) -> tuple[int, ReadJob, float, float]:
        full = engine.full_groups
        plan, job = engine.plan(ScoresReady(at_s, step, layer, full, pred_arr[step, layer, :full], None))
        start, end = lane.book([n * slot for _, n in job.requests], at_s)
        return len(plan.attend), job, start, end

    def run() -> Generator[simpy.events.Event, Any, None]:
        for step in range(sc.steps):
            engine.step_begin(step, env.now)
            ready_at = score(step, 0, env.now)
            yield env.timeout(ready_at - env.now)
            pending = issue(step, 0, env.now)
            for layer in range(num_layers):
                attend_groups, job, r0, r1 = pending
                ready = env.now
                if r1 > ready:
                    yield env.timeout(r1 - ready)
                if job.requests:
                    engine.read_done(job, r0, r1)
                c0 = env.now
                if layer + 1 < num_layers:
                    ready_at = score(step, layer + 1, c0)
                    yield env.timeout(ready_at - c0)
                    pending = issue(step, layer + 1, env.now)
                c1 = env.now
                attended = attend_groups * g + engine.tail_tokens + 1
                yield env.timeout(compute.layer_s(attended))
                engine.layer_done(step, layer, c1, env.now, stall_s=c0 - ready)
            end_s = compute.step_fixed_s
            if engine.appends_at_step_end:
                end_s += (compute.append_layer_s or storage.write_s(slot)) * num_layers
            yield env.timeout(end_s)
            engine.step_end(step, env.now)

    env.process(run())
    env.run()
    hot_groups = sum(len(r) for r in engine.resident)
    rec_bytes = int(getattr(policy, "record_bytes", 0))
    summary = engine.summary(metadata_bytes=hot_groups * rec_bytes)
    summary.policy_stats["world_scoring"] = {**totals, "label": MODELLED}
    result = Result(world="sim", policy=policy.name, ttft_s=0.0, energy_j={}, spans=[],
                    config={**world.config(), "policy": {"name": policy.name, **policy.config()},
                            "smartssd": ssd.to_dict(), "host_scoring": host.to_dict()},
                    decode=summary.to_dict(),
                    extra={"clock": f"simulated; the drive's scoring {MODELLED}"})  # fmt: skip
    return result, engine
