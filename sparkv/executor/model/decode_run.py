"""The real decode world: the same decode policy and engine as the simulator, on a real model and real disk.

Per step: layer 0 is scored from the embedding and planned, its reads submitted to the O_DIRECT reader;
for each layer l, the compute thread waits for l's reads, then (one layer ahead) scores and plans l+1 and
submits its reads, which run on the reader's threads while l's attention and FFN run here. Every time is
measured (`time.perf_counter`); the scores each plan saw are recorded as a score trace, so the simulator
can replay exactly the same decisions.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparkv.core.decode import DecodeGeometry, DecodeScenario, decode_geometry
from sparkv.core.errors import UserError
from sparkv.core.model import ModelSpec
from sparkv.core.result import Result
from sparkv.cost_models.smartssd import get_smartssd
from sparkv.engine.decode import DecodeEngine
from sparkv.executor.model.decode import (
    CacheBuild,
    SlotPool,
    SparseDecoder,
    append_filled_group,
    build_cache,
    calibrate_projections,
    load_cache,
    save_cache,
)
from sparkv.executor.model.decode import prefill_keys as _prefill_keys
from sparkv.executor.model.gcpause import frozen_gc
from sparkv.executor.model.kvfile import LAYOUT_FILE, GroupReader, KVFiles, KVLayout, ReaderKind
from sparkv.executor.model.models import LoadedModel
from sparkv.policies.decode.base import DecodeContext, DecodePolicy
from sparkv.policies.decode.storage_scoring import StorageScoring
from sparkv.traces.scores import ScoreTrace


@dataclass(eq=False)
class RealDecodeSetup:
    """A context prefilled once, its KV on disk and its metadata in memory, shared by several policy runs."""

    loaded: LoadedModel
    scenario: DecodeScenario
    geometry: DecodeGeometry
    files: KVFiles
    cache: CacheBuild
    first_token: int  # greedy token after the context
    build_s: float  # seconds to prefill, write and project (not part of any decode step)
    reused: bool = False  # the files and metadata of an earlier build of the same context were reused
    reader: ReaderKind = "threads"  # how the decode reads are issued (kvfile.GroupReader)


def prepare_real_decode(
    loaded: LoadedModel,
    ids: torch.Tensor,
    calib_ids: torch.Tensor | None,
    scenario: DecodeScenario,
    folder: Path,
    projections: list[torch.Tensor] | None = None,
) -> RealDecodeSetup:
    """Prefill the context `ids`, write its KV files under `folder`, calibrate U on `calib_ids` (or reuse
    `projections` calibrated earlier)."""
    spec = loaded.spec
    if int(ids.shape[0]) != scenario.context_tokens:
        raise UserError(f"the context has {int(ids.shape[0])} tokens, the scenario {scenario.context_tokens}")
    geo = decode_geometry(spec_for_disk(loaded), scenario)
    t0 = time.perf_counter()
    reserve = scenario.steps + scenario.group_tokens
    capacity = (scenario.context_tokens + scenario.steps) // scenario.group_tokens + 1
    tag = _digest(loaded.model_id, ids, calib_ids, projections, scenario)
    reused = _reuse(folder, tag, capacity, reserve)
    if reused is not None:
        files, cache = reused
        first = int(SparseDecoder(loaded, files.layout, cache).logits(cache.last_hidden[None]).argmax())
        return RealDecodeSetup(loaded, scenario, geo, files, cache, first, time.perf_counter() - t0, reused=True)
    if projections is None:
        if calib_ids is None:
            raise ValueError("prepare_real_decode needs calibration ids or projections")
        calib_keys, _, _ = _prefill_keys(loaded, calib_ids)
        projections = calibrate_projections(calib_keys, scenario.rank)
    layout = KVLayout(spec.num_layers, scenario.group_tokens, spec.num_kv_heads, spec.head_dim,
                      capacity_groups=capacity, tag="")  # fmt: skip
    files = KVFiles.create(folder, layout)
    cache = build_cache(loaded, ids, files, projections, reserve_tokens=reserve)
    save_cache(folder, cache, scenario.context_tokens)
    files.layout = replace(files.layout, tag=tag)
    files.save_layout()  # tagged last: a build cut short is never reused
    first = int(SparseDecoder(loaded, layout, cache).logits(cache.last_hidden[None]).argmax())
    return RealDecodeSetup(loaded, scenario, geo, files, cache, first, time.perf_counter() - t0)


def _digest(model_id: str, ids: torch.Tensor, calib: torch.Tensor | None, projections: list[torch.Tensor] | None,
            scenario: DecodeScenario) -> str:  # fmt: skip
    """What a build depends on: model, context, calibration, rank and G."""
    h = hashlib.sha256(f"{model_id}|{scenario.rank}|{scenario.group_tokens}".encode())
    h.update(ids.numpy().tobytes())
    if calib is not None:
        h.update(calib.numpy().tobytes())
    for u in projections or []:
        h.update(u.numpy().tobytes())
    return h.hexdigest()[:16]


def _reuse(folder: Path, tag: str, capacity: int, reserve: int) -> tuple[KVFiles, CacheBuild] | None:
    """The files and cache of an earlier build with this tag and enough room, if any."""
    meta = folder / LAYOUT_FILE
    if not meta.is_file():
        return None
    try:
        saved = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("tag") != tag or int(saved.get("capacity_groups", 0)) < capacity:
        return None
    cache = load_cache(folder, reserve)
    return (KVFiles.open(folder), cache) if cache is not None else None


def spec_for_disk(loaded: LoadedModel) -> ModelSpec:
    """The model's spec with the KV dtype on disk (float16), whatever the model computes in."""
    return replace(loaded.spec, dtype="float16")


def run_real_decode(
    setup: RealDecodeSetup, policy: DecodePolicy, log: bool = False, token_scores: TokenScores | None = None
) -> tuple[Result, ScoreTrace, DecodeEngine, list[int]]:
    """One decode run of `policy`: (Result, the scores its plans saw, the engine, the generated tokens).

    With `token_scores`, every (step, layer) also records both kinds of score for every cached token (for
    recall and group-size studies; it costs time, so such a run is not a timing run)."""
    if isinstance(policy, StorageScoring):  # scoring partly in storage (HillInfer): its own world loop
        from sparkv.executor.model.decode_storage import run_real_storage_decode

        if token_scores is not None:
            raise ValueError(f"{policy.name}: per-token score recording is not supported")
        return run_real_storage_decode(setup, policy, get_smartssd("samsung-smartssd"), log=log)
    sc, geo, lay = setup.scenario, setup.geometry, setup.files.layout
    spec = setup.loaded.spec
    ctx = DecodeContext(geometry=geo, model=spec.name)
    engine = DecodeEngine(ctx, policy, sc.max_request_bytes, record_spans=True, record_log=log)
    decoder = SparseDecoder(setup.loaded, lay, setup.cache)
    pools = [SlotPool(lay, capacity=max(16, len(r))) for r in engine.resident]
    for layer, pool in enumerate(pools):  # what a policy holds at the start is in memory, untimed
        _load_untimed(setup.files, layer, pool, sorted(engine.resident[layer]))
    reader = GroupReader(setup.files, sc.queue_depth, setup.reader)
    kind, ahead = policy.score_kind, policy.lookahead_layers
    groups_max = (sc.context_tokens + sc.steps) // sc.group_tokens
    shape = (sc.steps, geo.num_layers, groups_max)
    pred_arr = np.full(shape, np.nan, np.float32) if kind == "predicted" else None
    exact_arr = np.full(shape, np.nan, np.float32) if kind == "exact" else None
    tokens = [setup.first_token]
    origin = time.perf_counter()

    def now() -> float:
        return time.perf_counter() - origin

    def issue(step: int, layer: int, pred: np.ndarray | None, exact: np.ndarray | None) -> Any:
        if pred is not None and pred_arr is not None:
            pred_arr[step, layer, : pred.shape[0]] = pred
        if exact is not None and exact_arr is not None:
            exact_arr[step, layer, : exact.shape[0]] = exact
        plan, job = engine.plan(engine.scores_for(step, layer, now(), pred, exact))
        pool = pools[layer]
        pool.retain(engine.resident[layer])
        pool.reserve(job.groups)
        requests = [(first, [pool.view(g) for g in range(first, first + n)]) for first, n in job.requests]
        batch = reader.submit(layer, requests) if requests else None
        return plan, job, batch

    try:
        with torch.inference_mode(), frozen_gc():
            for step in range(sc.steps):
                engine.step_begin(step, now())
                pos = sc.context_tokens + step
                x = decoder.math.embed(torch.tensor([tokens[-1]]), pos)  # [1, D]
                full = engine.full_groups
                pending = None
                if ahead:
                    pred = decoder.predicted_scores(0, x, pos, full) if kind == "predicted" else None
                    pending = issue(step, 0, pred, None)
                for layer in range(geo.num_layers):
                    if pending is None:
                        exact = None
                        if kind == "exact":
                            q = decoder.math.query(layer, x, pos)
                            exact = decoder.exact_scores(layer, q, full)
                        pending = issue(step, layer, None, exact)
                    if token_scores is not None:
                        token_scores.record(decoder, step, layer, x, pos, sc.context_tokens + step)
                    plan, job, batch = pending
                    ready = now()
                    if batch is not None:
                        r0, r1 = batch.wait()
                        engine.read_done(job, r0 - origin, r1 - origin)
                    c0 = now()
                    pending = None
                    if ahead and layer + 1 < geo.num_layers:
                        pred = decoder.predicted_scores(layer + 1, x, pos, full) if kind == "predicted" else None
                        pending = issue(step, layer + 1, pred, None)
                    x = decoder.layer(layer, x, pos, pools[layer], plan.attend)
                    engine.layer_done(step, layer, c0, now(), stall_s=c0 - ready)
                    pools[layer].retain(set(plan.keep))
                tokens.append(int(decoder.logits(x).argmax()))
                if engine.appends_at_step_end:
                    append_filled_group(decoder, setup.files, pools, engine.full_groups)
                engine.step_end(step, now())
    finally:
        reader.close()
    summary = engine.summary(metadata_bytes=_metadata_bytes(engine, sc.rank, kind))
    trace = ScoreTrace(sc.context_tokens, sc.group_tokens, geo.num_layers, sc.steps, pred_arr, exact_arr,
                       source=f"recorded: real {policy.name} run, {setup.loaded.model_id}")  # fmt: skip
    result = Result(world="real", policy=policy.name, ttft_s=0.0, energy_j={}, spans=[],
                    config={"decode_scenario": sc.to_dict(), "model_spec": spec.to_dict(), "geometry": geo.to_dict(),
                            "model_id": setup.loaded.model_id, "kv_folder": str(setup.files.folder),
                            "reader": setup.reader, "policy": {"name": policy.name, **policy.config()}},
                    decode=summary.to_dict(), extra={"tokens": tokens})  # fmt: skip
    return result, trace, engine, tokens


class TokenScores:
    """Predicted and exact scores of every cached token at every (step, layer): [steps, layers, tokens]."""

    def __init__(self, steps: int, num_layers: int, max_tokens: int) -> None:
        self.predicted = np.full((steps, num_layers, max_tokens), np.nan, np.float32)
        self.exact = np.full((steps, num_layers, max_tokens), np.nan, np.float32)

    def record(self, decoder: SparseDecoder, step: int, layer: int, x: torch.Tensor, pos: int, tokens: int) -> None:
        """x [1, D] enters `layer`: the exact mass from its true query; the prediction for layer+1 from x."""
        q = decoder.math.query(layer, x, pos)
        self.exact[step, layer, :tokens] = decoder.token_exact(layer, q, tokens).numpy()
        if layer == 0:
            self.predicted[step, 0, :tokens] = decoder.token_predicted(0, x, pos, tokens).numpy()
        if layer + 1 < self.predicted.shape[1]:
            self.predicted[step, layer + 1, :tokens] = decoder.token_predicted(layer + 1, x, pos, tokens).numpy()

    def trace(self, context_tokens: int, source: str) -> ScoreTrace:
        """As a per-token score trace (G=1); `sparkv.traces.scores.regroup` gives any group size."""
        steps, layers, _ = self.predicted.shape
        return ScoreTrace(context_tokens, 1, layers, steps, self.predicted, self.exact, source)


def _load_untimed(files: KVFiles, layer: int, pool: SlotPool, groups: list[int]) -> None:
    """Fill a pool with groups read from disk before decoding starts (the state loading left behind)."""
    if not groups:
        return
    pool.reserve(len(groups))
    reader = GroupReader(files, 4)
    try:
        reader.submit(layer, [(g, [pool.view(g)]) for g in groups]).wait()
    finally:
        reader.close()


def _metadata_bytes(engine: DecodeEngine, rank: int, kind: str) -> int:
    if kind != "predicted":
        return 0
    return engine.full_groups * engine.geo.group_tokens * 2 * rank * engine.geo.num_layers
