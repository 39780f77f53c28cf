"""The simulated decode world: a storage lane and a compute lane in SimPy, driving any decode policy.

Per step: layer 0 is scored and planned at the step's start; for each layer l, the compute lane waits for
l's reads, then (one layer ahead) scores and plans l+1, whose reads start on the storage lane as soon as it
is free, then runs l's attention and FFN. A layer's reads are one `env.timeout` from the storage profile
(one batch at the scenario's queue depth); compute is one `env.timeout` from the decode compute model;
scores are replayed from a score trace. Policies without lookahead score and plan layer l at its start.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import simpy

from sparkv.core.decode import DecodeGeometry, DecodeScenario, ScoresReady, decode_geometry
from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec, resolve_model_spec
from sparkv.core.result import Result
from sparkv.cost_models.decode_compute import DecodeCompute, derive_decode_compute
from sparkv.cost_models.profiles import load_profile
from sparkv.cost_models.storage import StorageProfile, load_storage
from sparkv.engine.decode import DecodeEngine, ReadJob
from sparkv.policies.decode.base import DecodeContext, DecodePolicy
from sparkv.policies.decode.storage_scoring import StorageScoring
from sparkv.sim.decode_storage import run_storage_decode_sim
from sparkv.sim.storage_lane import StorageLane
from sparkv.traces.scores import ScoreTrace, get_score_trace


@dataclass(frozen=True, eq=False)
class DecodeWorld:
    """Everything a simulated decode run needs, built once from a scenario."""

    scenario: DecodeScenario
    spec: ModelSpec
    geometry: DecodeGeometry
    storage: StorageProfile
    compute: DecodeCompute
    scores: ScoreTrace

    def config(self) -> dict[str, Any]:
        return {
            "decode_scenario": self.scenario.to_dict(),
            "model_spec": self.spec.to_dict(),
            "geometry": self.geometry.to_dict(),
            "storage": {"name": self.storage.name, "kind": self.storage.kind, "device": self.storage.device},
            "decode_compute": self.compute.to_dict(),
            "scores": self.scores.source,
        }


def build_decode_world(
    scenario: DecodeScenario,
    compute: DecodeCompute | None = None,
    scores: ScoreTrace | None = None,
    storage: StorageProfile | None = None,
    spec: ModelSpec | None = None,
) -> DecodeWorld:
    """Resolve every name in the scenario; pass objects to reuse ones measured or loaded already."""
    spec = spec or resolve_model_spec(scenario.model)
    geo = decode_geometry(spec, scenario)
    storage = storage or load_storage(scenario.storage)
    if compute is None:
        profile = load_profile(scenario.device)
        compute = derive_decode_compute(profile.compute, spec, scenario.rank, profile.name)
    if scores is None:
        scores = get_score_trace(scenario.scores, scenario.context_tokens, scenario.group_tokens,
                                 spec.num_layers, scenario.steps)  # fmt: skip
    else:
        scores.check_covers(scenario.context_tokens, scenario.group_tokens, spec.num_layers, scenario.steps)
    return DecodeWorld(scenario, spec, geo, storage, compute, scores)


def simulate_decode(world: DecodeWorld, policy: DecodePolicy, record: bool = True) -> Result:
    """One decode run of `policy` in the simulator; `record` keeps the spans."""
    return run_decode_sim(world, policy, record=record)[0]


def run_decode_sim(
    world: DecodeWorld, policy: DecodePolicy, record: bool = True, log: bool = False
) -> tuple[Result, DecodeEngine]:
    """`simulate_decode`, also returning the engine (its `log` of policy calls when `log`, for replay)."""
    if isinstance(policy, StorageScoring):  # scoring partly in storage: its own scoring phase per layer
        return run_storage_decode_sim(world, policy, record=record, log=log)
    sc, geo = world.scenario, world.geometry
    ctx = DecodeContext(geometry=geo, model=world.spec.name)
    engine = DecodeEngine(ctx, policy, sc.max_request_bytes, record_spans=record, record_log=log)
    env = simpy.Environment()
    storage, compute, trace = world.storage, world.compute, world.scores
    kind, ahead = policy.score_kind, policy.lookahead_layers
    num_layers, slot, depth = geo.num_layers, geo.slot_bytes, sc.queue_depth
    score_cost = {"none": 0.0, "predicted": compute.per_scored_token_s, "exact": compute.per_exact_token_s}[kind]
    lane = StorageLane(storage, depth)
    pred_arr = trace.predicted if kind == "predicted" else None
    exact_arr = trace.exact if kind == "exact" else None
    if (kind == "predicted" and pred_arr is None) or (kind == "exact" and exact_arr is None):
        raise UserError(f"score trace {trace.source} holds no {kind!r} scores, which {policy.name} needs")

    def issue(step: int, layer: int, at_s: float) -> tuple[int, ReadJob, float, float]:
        """Plan one layer at `at_s` and book its reads on the storage lane: (groups attended, job, start, end)."""
        full = engine.full_groups
        pred = pred_arr[step, layer, :full] if pred_arr is not None else None
        exact = exact_arr[step, layer, :full] if exact_arr is not None else None
        plan, job = engine.plan(ScoresReady(at_s, step, layer, full, pred, exact))
        start, end = lane.book([n * slot for _, n in job.requests], at_s)
        return len(plan.attend), job, start, end

    def run() -> Generator[simpy.events.Event, Any, None]:
        group_tokens = geo.group_tokens
        for step in range(sc.steps):
            engine.step_begin(step, env.now)
            score_s = score_cost * engine.full_groups * group_tokens
            pending: tuple[int, ReadJob, float, float] | None = None
            if ahead:  # layer 0 is scored from the embeddings at the step's start
                if score_s:
                    yield env.timeout(score_s)
                pending = issue(step, 0, env.now)
            for layer in range(num_layers):
                if pending is None:  # no lookahead: score and plan the layer at its start
                    if score_s:
                        yield env.timeout(score_s)
                    pending = issue(step, layer, env.now)
                attend_groups, job, r0, r1 = pending
                ready = env.now
                if r1 > ready:
                    yield env.timeout(r1 - ready)
                if job.requests:
                    engine.read_done(job, r0, r1)
                c0 = env.now
                pending = None
                busy = 0.0
                if ahead and layer + 1 < num_layers:  # score and plan the next layer first, on the compute lane
                    busy = score_s
                    pending = issue(step, layer + 1, c0 + busy)
                attended = attend_groups * group_tokens + engine.tail_tokens + 1
                yield env.timeout(busy + compute.layer_s(attended))
                engine.layer_done(step, layer, c0, env.now, stall_s=c0 - ready)
            end_s = compute.step_fixed_s
            if engine.appends_at_step_end:
                append = compute.append_layer_s or storage.write_s(slot)
                end_s += append * num_layers
            yield env.timeout(end_s)
            engine.step_end(step, env.now)

    env.process(run())
    env.run()
    summary = engine.summary(metadata_bytes=_metadata_bytes(engine, sc.rank, kind))
    result = Result(world="sim", policy=policy.name, ttft_s=0.0, energy_j={}, spans=[],
                    config={**world.config(), "policy": {"name": policy.name, **policy.config()}},
                    decode=summary.to_dict())  # fmt: skip
    return result, engine


def _metadata_bytes(engine: DecodeEngine, rank: int, kind: str) -> int:
    """Low-rank key metadata in memory at the end (fp16, every full token, every layer) for policies using it."""
    if kind != "predicted":
        return 0
    return engine.full_groups * engine.geo.group_tokens * 2 * rank * engine.geo.num_layers
