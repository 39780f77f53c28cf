"""Exact optima of small planning instances, to measure the planner against.

`exact_plan` scores every k vector on the same timeline the planner uses (`Evaluator.predict`):
all of them ((G + 1)^C) when `monotone=False`, or every non-increasing one (C(C + G, C)) when
`monotone=True`, which makes 8 chunks x 8 layer groups (12,870 vectors) cheap. `random_instance`
draws cost tables with compute growing with position and varying chunk to chunk, uneven chunk bytes,
launch and per-transfer costs, and a bandwidth that puts stream-only within 4x of local-only.
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from sparkv.core.costs import CostTable
from sparkv.core.model import BUILTIN_SPECS
from sparkv.policies.oracle import monotone_vectors
from sparkv.policies.planner import Plan, Planner
from sparkv.policies.planner_model import ComputeSpeed, ConstantLink, Evaluator, Snapshot


@dataclass(frozen=True)
class Instance:
    costs: CostTable
    link: ConstantLink
    target_bytes: float
    group_layers: int


def random_instance(rng: np.random.Generator, chunks: int = 8, groups: int = 8, group_layers: int = 1) -> Instance:
    layers = groups * group_layers
    cell = 0.05  # seconds for the first chunk's cell
    slope = rng.uniform(0.0, 0.5)  # attention over the past: later chunks cost more
    per_chunk = cell * (1 + slope * np.arange(chunks)) * rng.lognormal(0.0, 0.25, chunks)
    compute = per_chunk[:, None] * rng.lognormal(0.0, 0.1, (chunks, layers))
    size = rng.uniform(0.7, 1.3, chunks)
    size[-1] *= rng.uniform(0.3, 1.0)  # a short last chunk
    nbytes = np.round(100_000 * size[:, None] * np.ones((1, layers))).astype(np.int64)
    fixed = rng.uniform(0.0, 2.0) * cell
    launch = rng.uniform(0.0, 0.2) * cell
    query = np.full(layers, rng.uniform(0.05, 0.3) * cell)
    local = compute.sum() + launch * chunks + query.sum()
    ratio = math.exp(rng.uniform(math.log(0.25), math.log(4.0)))  # stream-only / local-only
    bandwidth = nbytes.sum() / max(ratio * local - layers * fixed, 0.1 * ratio * local)
    costs = CostTable(compute, launch, nbytes, fixed, 0.0, query, 0.2 * cell, bandwidth)
    target = float(rng.choice([1.0, 2.0, 4.0, math.inf])) * 100_000
    return Instance(costs, ConstantLink(bandwidth, fixed, 0.0), target, group_layers)



def model_instance(rng: np.random.Generator, chunks: int = 5, groups: int = 6) -> Instance:
    """A request on a built-in model with roofline compute costs (core.model FLOPs) and codec-sized cells."""
    spec = list(BUILTIN_SPECS.values())[int(rng.integers(len(BUILTIN_SPECS)))]
    chunk_tokens = int(rng.choice([256, 512, 1024]))
    last = int(chunk_tokens * rng.uniform(0.3, 1.0))
    lens = [chunk_tokens] * (chunks - 1) + [last]
    flops_s = rng.uniform(20e9, 400e9)  # achieved FLOP/s of the device
    per_layer = rng.uniform(0.0, 2e-3)  # framework overhead per layer and command
    noise = rng.lognormal(0.0, 0.05, (chunks, spec.num_layers))  # measured costs vary cell to cell
    compute = np.array(
        [[spec.layer_flops(n, sum(lens[:c])) / flops_s + per_layer for _ in range(spec.num_layers)]
         for c, n in enumerate(lens)]
    ) * noise  # fmt: skip
    wire = float(rng.choice([1.0, 0.53, 0.28]))  # fp16, int8, int4 bytes relative to fp16
    nbytes = np.array([[int(spec.kv_bytes_per_token_layer * n * wire)] * spec.num_layers for n in lens])
    query = np.full(spec.num_layers, spec.layer_flops(64, sum(lens)) / flops_s + per_layer)
    fixed = rng.uniform(0.005, 0.08)
    local = compute.sum() + query.sum()
    ratio = math.exp(rng.uniform(math.log(0.25), math.log(4.0)))
    bandwidth = nbytes.sum() / max(ratio * local - spec.num_layers * fixed, 0.1 * ratio * local)
    costs = CostTable(compute, per_layer, nbytes, fixed, 0.0, query, 2e-3, bandwidth)
    target = float(rng.choice([1.0, 2.0, 4.0])) * bandwidth
    return Instance(costs, ConstantLink(bandwidth, fixed, 0.0), target, -(-spec.num_layers // groups))


def exact_plan(inst: Instance, monotone: bool = True) -> Plan:
    """The best k by exhaustive scoring (every vector, or every non-increasing one)."""
    ev = Evaluator(inst.costs, inst.group_layers)
    snap = Snapshot.fresh(ev.C, ev.L)
    speed = ComputeSpeed()
    vectors = monotone_vectors(ev.C, ev.bounds) if monotone else map(list, itertools.product(ev.bounds, repeat=ev.C))
    best: Plan | None = None
    n = 0
    for k in vectors:
        n += 1
        pred = ev.predict(k, snap, inst.link, speed, inst.target_bytes)
        if best is None or pred.ttft_s < best.prediction.ttft_s - 1e-12:
            best = Plan(tuple(k), pred, n)
    assert best is not None
    return Plan(best.k, best.prediction, n)


def planner_plan(inst: Instance, window: int | None = None) -> Plan:
    ev = Evaluator(inst.costs, inst.group_layers)
    planner = Planner(ev, window=ev.C if window is None else window)
    return planner.plan(Snapshot.fresh(ev.C, ev.L), inst.link, ComputeSpeed(), inst.target_bytes)


def study(
    instances: int = 200, seed: int = 0, chunks: int = 8, groups: int = 8, monotone: bool = True,
    kind: str = "model",
) -> dict[str, Any]:  # fmt: skip
    """Planner vs exact on random instances ("model" or "synthetic"): share within 2 %, worst ratio, times."""
    rng = np.random.default_rng(seed)
    ratios, t_plan, t_exact, evals = [], [], [], []
    make = model_instance if kind == "model" else random_instance
    for _ in range(instances):
        inst = make(rng, chunks, groups)
        t0 = time.perf_counter()
        plan = planner_plan(inst)
        t1 = time.perf_counter()
        best = exact_plan(inst, monotone)
        t2 = time.perf_counter()
        ratios.append(plan.prediction.ttft_s / best.prediction.ttft_s)
        t_plan.append(t1 - t0)
        t_exact.append(t2 - t1)
        evals.append(plan.evaluations)
    return {
        "kind": kind, "instances": instances, "chunks": chunks, "groups": groups,
        "exact": "monotone" if monotone else "all",
        "within_2pct": sum(r <= 1.02 for r in ratios) / instances, "within_0_1pct": sum(r <= 1.001 for r in ratios)
        / instances, "median_ratio": statistics.median(ratios), "worst_ratio": max(ratios),
        "better_than_exact": sum(r < 1 - 1e-9 for r in ratios), "planner_ms_median": statistics.median(t_plan) * 1e3,
        "exact_ms_median": statistics.median(t_exact) * 1e3, "planner_evaluations_median": statistics.median(evals),
    }  # fmt: skip
