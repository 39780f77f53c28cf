"""The oracle is a bound: on random scenarios no policy's simulated TTFT is below the oracle's (by more
than 0.1 %), the fluid lower bound is never above it, and the oracle's predicted TTFT is its simulated one.

Scenarios mix real traces (from ../shared/traces, when present) and synthetic ones, offsets into them
and looping, receive contention (profile copies with other `compute_slowdown` values, and one whose slowdown
follows the delivered rate) on and off,
device availability, round trips and per-transfer costs, a KV server shared with other clients,
compute noise, codecs, context lengths and chunk sizes. They are small so that the suite stays fast;
`test_oracle_bounds_larger_requests` (slow) runs 8k-token requests.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from sparkv.core.config import LinkConfig, Scenario
from sparkv.core.paths import shared_path
from sparkv.cost_models.profiles import load_profile
from sparkv.policies import make_policy
from sparkv.policies.bounds import fluid_bound_for
from sparkv.policies.oracle import foresight_of, oracle_options
from sparkv.sim import SimulationStalled, World, build_world, simulate
from sparkv.traces import Trace, get_trace
from sparkv.traces.expand import expand_traces

POLICIES = ("local", "stream", "cake", "static", "sparkv")
BEAT_TOLERANCE = 1e-3  # a policy may come within 0.1 % of the oracle, not further below it
SCENARIOS = 200
SLOWDOWNS = (1.0, 1.0, 1.2, 1.5, "curve")  # besides the profile's own (cpu-smollm2: 1.058)
# "curve": a slowdown that grows with the delivered rate (bytes/s, factor), steeper than measured
CURVE = [[0.5e6, 1.05], [3e6, 1.3], [20e6, 1.9]]
DEVICES = (("smollm2-135m", "cpu-smollm2"), ("smollm2-135m", "analytic-cpu-2core"),
           ("llama-3.2-1b", "jetson-orin-nano-15w"))  # fmt: skip


@lru_cache(maxsize=1)
def real_traces() -> tuple[str, ...]:
    root = shared_path("traces")
    return tuple(expand_traces([str(root)])) if root else ()


@lru_cache(maxsize=64)
def cached_trace(name: str) -> Trace:
    return get_trace(name)


def _tag(slow: float | str) -> str:
    return slow if isinstance(slow, str) else f"{slow:g}"


@pytest.fixture(scope="module")
def profile_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Copies of the device profiles with other receive slowdowns."""
    out = tmp_path_factory.mktemp("profiles")
    for _, device in DEVICES:
        data = load_profile(device).to_dict()
        for slow in SLOWDOWNS:
            if slow == "curve":
                link = {**data.get("link", {}), "compute_slowdown_curve": CURVE}
            else:
                link = {**data.get("link", {}), "compute_slowdown": slow}
            copy = {**data, "name": f"{device}-slow{_tag(slow)}", "link": link}
            (out / f"{device}-slow{_tag(slow)}.json").write_text(json.dumps(copy))
    return out


def synthetic_trace(rng: np.random.Generator) -> str:
    kind = int(rng.integers(5))
    mbps = float(np.exp(rng.uniform(np.log(2.0), np.log(40.0))))
    if kind == 0:
        return f"const:{mbps:.3g}mbps,{rng.uniform(5, 60):.3g}s"  # short: it loops within a request
    if kind == 1:
        a, b = rng.uniform(1, 8, 2)
        return f"steps:{a:.3g}s@{mbps:.3g}mbps,{b:.3g}s@{mbps * rng.uniform(0.0, 0.3):.4f}mbps"
    if kind == 2:
        return f"ge:seed={int(rng.integers(100))},good={mbps:.3g}mbps,bad={mbps * 0.1:.3g}mbps,dur=60"
    return f"lte:seed={int(rng.integers(100))},dur={int(rng.integers(20, 120))},mean={mbps:.3g}mbps"


def random_scenario(i: int, profiles: Path, contexts: tuple[int, int] = (512, 2560)) -> Scenario:
    """Scenario `i` of the property test (seeded by `i`: a failure names its scenario)."""
    rng = np.random.default_rng(20_000 + i)
    real = real_traces()
    trace = str(real[int(rng.integers(len(real)))]) if real and rng.random() < 0.4 else synthetic_trace(rng)
    model, device = DEVICES[int(rng.integers(len(DEVICES)))]
    if rng.random() < 0.75:  # else the profile as shipped
        device = str(profiles / f"{device}-slow{_tag(SLOWDOWNS[int(rng.integers(len(SLOWDOWNS)))])}.json")
    chunk = int(rng.choice([256, 384, 512, 1024]))
    context = int(rng.integers(contexts[0], contexts[1] + 1))
    contended = rng.random() < 0.3
    link = LinkConfig(
        rtt_s=float(rng.uniform(0.0, 0.1)), per_transfer_s=float(rng.uniform(0.0, 0.03)),
        efficiency=float(rng.uniform(0.8, 1.0)), trace_offset_s=float(rng.uniform(0.0, 300.0)),
        server_concurrency=int(rng.integers(1, 4)) if contended else 1,
        server_background_rps=float(rng.uniform(0.0, 40.0)) if contended else 0.0,
    )  # fmt: skip
    availability = None
    if rng.random() < 0.3:
        a, b = rng.uniform(0.5, 6.0, 2)
        availability = f"steps:{a:.3g}s@1B/s,{b:.3g}s@{rng.uniform(0.2, 0.9):.2f}B/s"
    noise = float(rng.uniform(0.02, 0.2)) if rng.random() < 0.3 else 0.0
    codec = str(rng.choice(["fp16", "fp16", "int8", "int4-g32"]))
    scenario = Scenario(model=model, context_tokens=context, chunk_tokens=chunk, trace=trace, device=device,
                        codec=codec, link=link, availability=availability, compute_noise=noise,
                        seed=int(rng.integers(1000)))  # fmt: skip
    # a bandwidth scale that puts stream-only between a quarter and four times local prefill
    world = build_world(scenario, trace=cached_trace(trace))
    ratio = float(np.exp(rng.uniform(np.log(0.25), np.log(4.0))))
    goodput = float(world.costs.cell_bytes.sum()) / (ratio * float(world.costs.compute_cell_s.sum()))
    return scenario.with_(bandwidth_scale=goodput / (world.trace.mean_bps * link.efficiency))


def ttft(world: World, name: str) -> float:
    try:
        return simulate(world, make_policy(name), record=False).ttft_s
    except SimulationStalled:
        return math.inf


def check_bound(scenario: Scenario) -> list[str]:
    """What is wrong with the oracle on `scenario` (nothing: an empty list)."""
    world = build_world(scenario, trace=cached_trace(scenario.trace))
    foresight = foresight_of(world)
    result = simulate(world, make_policy("oracle", foresight=foresight), record=False)
    oracle, predicted = result.ttft_s, result.extra["policy_stats"]["predicted_ttft_s"]
    problems = []
    if not math.isclose(oracle, predicted, rel_tol=1e-9):
        problems.append(f"oracle predicted {predicted:.6f} s, simulated {oracle:.6f} s")
    bound = fluid_bound_for(world.costs, foresight)
    if bound > oracle * (1 + 1e-9):
        problems.append(f"fluid bound {bound:.6f} s above the oracle's {oracle:.6f} s")
    for name in POLICIES:
        t = ttft(world, name)
        if t < oracle * (1 - BEAT_TOLERANCE):
            problems.append(f"{name} {t:.6f} s beats the oracle's {oracle:.6f} s by {1 - t / oracle:.3%}")
    return problems


@pytest.mark.parametrize("i", range(SCENARIOS))
def test_no_policy_beats_the_oracle(i: int, profile_dir: Path) -> None:
    scenario = random_scenario(i, profile_dir)
    problems = check_bound(scenario)
    assert not problems, f"scenario {i} {json.dumps(scenario.to_dict())}: {problems}"


@pytest.mark.slow
@pytest.mark.parametrize("i", range(40))
def test_oracle_bounds_larger_requests(i: int, profile_dir: Path) -> None:
    scenario = random_scenario(10_000 + i, profile_dir, contexts=(6144, 8192)).with_(chunk_tokens=512)
    problems = check_bound(scenario)
    assert not problems, f"scenario {i} {json.dumps(scenario.to_dict())}: {problems}"


def test_oracle_beats_local_on_a_slow_link_with_contention() -> None:
    """1 Mbit/s and the shipped profile's receive slowdown: streaming anything slows all compute that
    overlaps it, and local prefill wins; an oracle that ignored the slowdown streamed and lost."""
    world = build_world(Scenario(trace="const:1mbps,600s"))
    assert float(world.profile.link.get("compute_slowdown", 1.0)) > 1.0  # the case needs contention
    oracle = simulate(world, make_policy("oracle", **oracle_options(world))).ttft_s
    local = simulate(world, make_policy("local")).ttft_s
    assert oracle <= local * (1 + 1e-9)


@pytest.mark.skipif(not real_traces(), reason="no real traces under ../shared/traces")
def test_property_scenarios_include_real_traces(profile_dir: Path) -> None:
    used = {random_scenario(i, profile_dir).trace for i in range(40)}
    assert used & set(real_traces())
