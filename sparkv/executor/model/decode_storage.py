"""The real decode world for policies that score importance partly in storage (HillInfer), on a real model.

As `decode_run`, plus a scoring phase before each layer's plan (one layer ahead, layer 0 at the step's start):
the policy's `split` names the groups each side scores; the host scores the hot pool's quantised keys from
memory while its share of the cold keys is read from the key plane file with O_DIRECT, then scores those
(all measured); the drive's share is scored by the same kernel over the same file, but its wall time is
taken off this world's clock and the SmartSSD profile's time is charged instead (MODELLED): the scores
are ready when both sides are done. Only the selected groups' fp16 KV is then read from the KV files.

The clock is therefore perf_counter minus the emulation plus the modelled waits; every Result says so.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np
import torch

from sparkv.core.decode import DecodeGeometry, DecodeScenario, DecodeSpan
from sparkv.core.result import Result
from sparkv.cost_models.smartssd import MODELLED, SmartSSDProfile
from sparkv.engine.decode import DecodeEngine
from sparkv.executor.model.decode import CacheBuild, SlotPool, SparseDecoder, append_filled_group
from sparkv.executor.model.gcpause import frozen_gc
from sparkv.executor.model.keyplane_file import KeyPlane
from sparkv.executor.model.keyscore import dequantize_keys, quantize_query, score_records, token_scores
from sparkv.executor.model.kvfile import GroupReader, KVFiles
from sparkv.executor.model.models import LoadedModel
from sparkv.policies.decode.base import DecodeContext, DecodePolicy
from sparkv.policies.decode.storage_scoring import ScoreSplit, StorageScoring
from sparkv.traces.scores import ScoreTrace


class RealSetupParts(Protocol):
    """What this world reads of `decode_run.RealDecodeSetup` (which dispatches here)."""

    loaded: LoadedModel
    scenario: DecodeScenario
    geometry: DecodeGeometry
    files: KVFiles
    cache: CacheBuild
    first_token: int


def build_key_plane(setup: RealSetupParts, bits: int) -> KeyPlane:
    """The context's keys (fp16 on disk, as in the KV files) quantised into a fresh key plane (untimed)."""
    lay, sc = setup.files.layout, setup.scenario
    d = lay.kv_heads * lay.head_dim
    plane = KeyPlane(setup.files.folder, lay.num_layers, lay.group_tokens, d, bits, lay.capacity_groups)
    full = sc.context_tokens // lay.group_tokens
    for layer in range(lay.num_layers):
        k = setup.cache.keys[layer][:, : full * lay.group_tokens]  # [KV, T, hd]
        plane.write(layer, 0, _groups(k, lay.group_tokens))
    return plane


def _groups(k: torch.Tensor, group_tokens: int) -> np.ndarray:
    """Keys [KV, n*G, hd] -> [n, G, d] float32 (all KV heads concatenated per token)."""
    heads, t, hd = k.shape
    return k.transpose(0, 1).reshape(t // group_tokens, group_tokens, heads * hd).float().numpy()


def run_real_storage_decode(
    setup: RealSetupParts, policy: DecodePolicy, ssd: SmartSSDProfile, log: bool = False, probe_overlap: bool = False
) -> tuple[Result, ScoreTrace, DecodeEngine, list[int]]:
    """One decode run: (Result, the scores its plans saw, the engine, the generated tokens). `probe_overlap`
    also compares, off the clock, each scoring's top 10 % of tokens with fp16 keys and the exact query."""
    if not isinstance(policy, StorageScoring):
        raise TypeError(f"decode policy {policy.name!r} has no split hook (not a storage-scoring policy)")
    sc, geo, lay = setup.scenario, setup.geometry, setup.files.layout
    spec = setup.loaded.spec
    ctx = DecodeContext(geometry=geo, model=spec.name, tiers=("memory", "disk", "smartssd"))
    engine = DecodeEngine(ctx, policy, sc.max_request_bytes, record_spans=True, record_log=log)
    decoder = SparseDecoder(setup.loaded, lay, setup.cache)
    bits = int(getattr(getattr(policy, "settings", None), "bits", 8))
    plane = build_key_plane(setup, bits)
    pools = [SlotPool(lay, capacity=max(16, len(r))) for r in engine.resident]

    def plane_append(layer: int, group: int, kv: torch.Tensor) -> None:
        """A group that filled during decoding joins the quantised key plane the drive scores."""
        plane.write(layer, group, kv[0].to(torch.float16).float().reshape(1, lay.group_tokens, -1).numpy())
    reader = GroupReader(setup.files, sc.queue_depth)  # threads: the key plane's reads share its pool
    assert reader.pool is not None
    read_pool = reader.pool
    for layer, pool in enumerate(pools):  # what the hot pool holds at the start is in memory, untimed
        groups = sorted(engine.resident[layer])
        pool.reserve(len(groups))
        reader.submit(layer, [(g, [pool.view(g)]) for g in groups]).wait()
    groups_max = (sc.context_tokens + sc.steps) // sc.group_tokens
    pred_arr = np.full((sc.steps, geo.num_layers, groups_max), np.nan, np.float32)
    tokens = [setup.first_token]
    macs = spec.num_attention_heads * spec.head_dim
    samples: list[dict[str, Any]] = []  # per scoring phase: tokens and seconds of each side
    origin = time.perf_counter()
    offset = [0.0]  # emulation taken off the clock, modelled waits added

    def now() -> float:
        return time.perf_counter() - origin + offset[0]

    def score(step: int, layer: int, x: torch.Tensor, pos: int, full: int) -> np.ndarray:
        sp = policy.split(step, layer, full)
        t0 = now()
        batch = plane.submit_direct(read_pool, sc.queue_depth, layer, sp.cpu) if sp.cpu else None
        q_exact = decoder.math.query(layer, x, pos)[:, 0].numpy()  # [H, hd]
        q = quantize_query(q_exact)
        out = np.full(full, -np.inf, np.float32)
        kernel = _kernel(q, lay.group_tokens, lay.kv_heads, bits, decoder.math.scaling(layer))
        if sp.hot:
            out[list(sp.hot)] = kernel(plane.from_memory(layer, sp.hot))
        h1 = now()
        k0 = k1 = c0 = c1 = h1
        if batch is not None:
            records, r0, r1 = batch.wait()
            k0, k1 = r0 - origin + offset[0], r1 - origin + offset[0]
            c0 = now()
            out[list(sp.cpu)] = kernel(records)
            c1 = now()
            engine.spans.append(DecodeSpan("storage", "keys", step, layer, k0, k1, batch.bytes))
        ssd_s = _drive(plane, layer, sp, kernel, out, ssd, macs, offset)
        end = max(c1, t0 + ssd_s)
        offset[0] += end - c1  # the host waits for the drive's result (modelled)
        engine.spans.append(DecodeSpan("compute", "score", step, layer, t0, end))
        if sp.storage:
            engine.spans.append(DecodeSpan("smartssd", "score-modelled", step, layer, t0, t0 + ssd_s))
        samples.append({"step": step, "layer": layer, "hot_tokens": len(sp.hot) * lay.group_tokens,
                        "hot_s": h1 - t0, "cpu_tokens": len(sp.cpu) * lay.group_tokens,
                        "cpu_s": c1 - c0 if batch is not None else 0.0, "key_read_s": k1 - k0,
                        "storage_tokens": len(sp.storage) * lay.group_tokens, "ssd_modelled_s": ssd_s})  # fmt: skip
        if probe_overlap:
            w0 = time.perf_counter()
            samples[-1]["overlap"] = _overlap(plane, setup.cache.keys[layer], layer, sp, q_exact, lay.kv_heads, bits)
            offset[0] -= time.perf_counter() - w0
        pred_arr[step, layer, :full] = out
        return out

    def issue(step: int, layer: int, pred: np.ndarray) -> Any:
        plan, job = engine.plan(engine.scores_for(step, layer, now(), pred, None))
        pool = pools[layer]
        pool.retain(engine.resident[layer])
        pool.reserve(job.groups)
        requests = [(first, [pool.view(g) for g in range(first, first + n)]) for first, n in job.requests]
        return plan, job, reader.submit(layer, requests) if requests else None

    try:
        with torch.inference_mode(), frozen_gc():
            for step in range(sc.steps):
                engine.step_begin(step, now())
                pos = sc.context_tokens + step
                x = decoder.math.embed(torch.tensor([tokens[-1]]), pos)  # [1, D]
                full = engine.full_groups
                pending = issue(step, 0, score(step, 0, x, pos, full))
                for layer in range(geo.num_layers):
                    plan, job, batch = pending
                    ready = now()
                    if batch is not None:
                        r0, r1 = batch.wait()
                        engine.read_done(job, r0 - origin + offset[0], r1 - origin + offset[0])
                    c0 = now()
                    c1 = c0
                    if layer + 1 < geo.num_layers:
                        pred = score(step, layer + 1, x, pos, full)
                        c1 = now()  # the plan and its read submission count as the layer's (as in the sim)
                        pending = issue(step, layer + 1, pred)
                    x = decoder.layer(layer, x, pos, pools[layer], plan.attend)
                    engine.layer_done(step, layer, c1, now(), stall_s=c0 - ready)
                    pools[layer].retain(set(plan.keep))
                tokens.append(int(decoder.logits(x).argmax()))
                if engine.appends_at_step_end:
                    append_filled_group(decoder, setup.files, pools, engine.full_groups, also=plane_append)
                engine.step_end(step, now())
    finally:
        reader.close()
        plane.close()
    hot_groups = sum(len(r) for r in engine.resident)
    summary = engine.summary(metadata_bytes=hot_groups * plane.record_bytes)
    trace = ScoreTrace(sc.context_tokens, sc.group_tokens, geo.num_layers, sc.steps, pred_arr, None,
                       source=f"recorded: real {policy.name} run, {setup.loaded.model_id}")  # fmt: skip
    result = Result(world="real", policy=policy.name, ttft_s=0.0, energy_j={}, spans=[],
                    config={"decode_scenario": sc.to_dict(), "model_spec": spec.to_dict(), "geometry": geo.to_dict(),
                            "model_id": setup.loaded.model_id, "kv_folder": str(setup.files.folder),
                            "reader": reader.kind, "policy": {"name": policy.name, **policy.config()},
                            "smartssd": ssd.to_dict()},
                    decode=summary.to_dict(),
                    extra={"tokens": tokens, "scoring_samples": samples, "clock": CLOCK})  # fmt: skip
    return result, trace, engine, tokens


CLOCK = ("measured (perf_counter) for the model, the O_DIRECT reads and the host's scoring; the drive's "
         f"in-storage scoring {MODELLED}")  # fmt: skip


def _overlap(plane: KeyPlane, keys: torch.Tensor, layer: int, sp: ScoreSplit, q: np.ndarray, kv_heads: int,
             bits: int, fraction: float = 0.1) -> float:  # fmt: skip
    """|top 10 % by the quantised kernel & top 10 % by fp16 keys and the fp32 query| / |top|, over the tokens
    of every scored group."""
    groups = tuple(sorted(sp.hot + sp.cpu + sp.storage))
    if not groups:
        return 1.0
    g = plane.group_tokens
    deq = dequantize_keys(plane.from_memory(layer, groups), g, plane.key_width, bits)
    idx = (np.asarray(groups)[:, None] * g + np.arange(g)[None, :]).reshape(-1)
    ref_keys = keys[:, idx].transpose(0, 1).reshape(idx.shape[0], -1).float().numpy()  # fp16 values, [T, d]
    got = token_scores(deq, quantize_query(q), kv_heads, 1.0)
    ref = token_scores(ref_keys, q.astype(np.float32), kv_heads, 1.0)
    k = max(1, round(fraction * idx.shape[0]))
    a = set(np.argpartition(-got, k - 1)[:k].tolist())
    return len(a.intersection(np.argpartition(-ref, k - 1)[:k].tolist())) / k


def _kernel(q: np.ndarray, group_tokens: int, kv_heads: int, bits: int, scaling: float) -> Any:
    def run(records: np.ndarray) -> np.ndarray:
        return score_records(records, q, group_tokens, kv_heads, bits, scaling)

    return run


def _drive(plane: KeyPlane, layer: int, sp: ScoreSplit, kernel: Any, out: np.ndarray, ssd: SmartSSDProfile,
           macs: int, offset: list[float]) -> float:  # fmt: skip
    """The drive's share: scored here by the same kernel, its wall time taken off the clock; the modelled
    seconds returned."""
    if not sp.storage:
        return 0.0
    w0 = time.perf_counter()
    out[list(sp.storage)] = kernel(plane.read_buffered(layer, sp.storage))
    offset[0] -= time.perf_counter() - w0
    tokens = len(sp.storage) * plane.group_tokens
    return ssd.score_s(tokens, plane.record_bytes / plane.group_tokens, macs, sp.result_bytes)
