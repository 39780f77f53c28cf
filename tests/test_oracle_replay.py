"""The oracle's replica of the simulator (`oracle_replay`) and what it is told (`foresight`): each part of the
simulator's arithmetic, one scenario at a time, and the modules' purity."""

from __future__ import annotations

import ast
import inspect
import math
from pathlib import Path

import numpy as np
import pytest

from sparkv import policies as policies_pkg
from sparkv.core.config import LinkConfig, Scenario
from sparkv.core.request import CellBlock
from sparkv.policies import make_policy
from sparkv.policies.foresight import Foresight, NoiseDraws, ServerForecast
from sparkv.policies.oracle import foresight_of
from sparkv.policies.oracle_replay import Replayer, Schedule
from sparkv.policies.oracle_search import baseline_schedules
from sparkv.sim import build_world, simulate

FORBIDDEN = {"time", "datetime", "threading", "multiprocessing", "asyncio", "random", "simpy", "torch", "os", "socket"}


CASES = {
    "contention": Scenario(context_tokens=2048, trace="lte:seed=3,mean=6mbps"),  # cpu-smollm2: slowdown 1.058
    "offset and looping": Scenario(
        context_tokens=2048, trace="steps:2s@8mbps,1.5s@0.2mbps", link=LinkConfig(trace_offset_s=7.3, rtt_s=0.08)
    ),
    "availability": Scenario(
        context_tokens=2048, trace="lte:seed=4,mean=5mbps", availability="steps:2s@1B/s,3s@0.4B/s"
    ),
    "noise": Scenario(context_tokens=2048, trace="lte:seed=5,mean=5mbps", compute_noise=0.15, seed=11),
    "shared server": Scenario(
        context_tokens=2048,
        trace="lte:seed=6,mean=8mbps",
        link=LinkConfig(server_concurrency=2, server_background_rps=30, per_transfer_s=0.04),
    ),
    "codec": Scenario(context_tokens=2048, chunk_tokens=256, trace="ge:seed=2,good=6mbps,bad=1mbps", codec="int4-g32"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_replayed_schedules_take_their_simulated_time(case: str) -> None:
    """Each baseline's schedule, replayed, lands where the baseline's own simulated run does."""
    world = build_world(CASES[case])
    replayer = Replayer(world.costs, foresight_of(world))
    names = {"local": "local", "stream": "stream"}
    for schedule in baseline_schedules(world.request.num_chunks, world.spec.num_layers):
        if schedule.label in names:
            simulated = simulate(world, make_policy(names[schedule.label]), record=False).ttft_s
            assert replayer.run(schedule).ttft_s == simulated, schedule.label


@pytest.mark.parametrize("case", sorted(CASES))
def test_oracle_predicts_its_own_simulated_ttft(case: str) -> None:
    world = build_world(CASES[case])
    result = simulate(world, make_policy("oracle", foresight=foresight_of(world)), record=False)
    assert result.ttft_s == result.extra["policy_stats"]["predicted_ttft_s"]


def test_cake_is_one_of_the_meeting_points() -> None:
    world = build_world(CASES["contention"])
    replayer = Replayer(world.costs, foresight_of(world))
    meets = [replayer.run(s).ttft_s for s in baseline_schedules(world.request.num_chunks, world.spec.num_layers)
             if s.label.startswith("meet@")]  # fmt: skip
    assert simulate(world, make_policy("cake"), record=False).ttft_s in meets


def test_a_schedule_that_fetches_computed_cells_is_refused() -> None:
    world = build_world(CASES["contention"])
    block = CellBlock(0, 1, 0, 2)
    with pytest.raises(ValueError, match="already started"):
        Replayer(world.costs, foresight_of(world)).run(Schedule((block,), (block,), "bad"))


def test_a_schedule_that_never_finishes_takes_forever() -> None:
    world = build_world(CASES["contention"])
    replayer = Replayer(world.costs, foresight_of(world))
    assert math.isinf(replayer.run(Schedule((CellBlock(0, 1, 0, 3),), (), "half")).ttft_s)


def test_server_queue_is_fifo_over_slots() -> None:
    """A heap of slot-free times, filled in arrival order, agrees with a plain scan of the slots."""
    server = ServerForecast(service_s=0.3, concurrency=2, background_rps=5.0, seed=4)
    queue = server.queue()
    own = [0.1, 0.9, 1.7, 2.0, 4.4]
    grants = [queue.grant_s(t) for t in own]
    arrivals = [a for a in server.arrivals_s if a < own[-1]]
    slots = [0.0, 0.0]
    expected = {}
    for t, is_own in sorted([(a, False) for a in arrivals] + [(t, True) for t in own]):
        i = min(range(2), key=lambda j: slots[j])
        start = max(t, slots[i])
        slots[i] = start + 0.3
        if is_own:
            expected[t] = start
    assert grants == [expected[t] for t in own]
    assert all(g >= t for g, t in zip(grants, own, strict=True))


def test_server_draws_the_simulators_arrivals() -> None:
    server = ServerForecast(service_s=0.1, concurrency=1, background_rps=8.0, seed=3)
    server.grant_alone_s(20.0)
    rng = np.random.default_rng(3 + 7919)
    now, expected = 0.0, []
    for _ in range(len(server.arrivals_s)):
        now = now + float(rng.exponential(1.0 / 8.0))
        expected.append(now)
    assert server.arrivals_s == expected


def test_alone_grant_never_beats_the_queue() -> None:
    server = ServerForecast(service_s=0.2, concurrency=1, background_rps=10.0, seed=1)
    queue = server.queue()
    for t in np.linspace(0.05, 10.0, 25):
        alone = server.grant_alone_s(float(t))
        assert queue.grant_s(float(t)) >= alone - 1e-12


def test_noise_draws_follow_the_seed_and_floor() -> None:
    draws = NoiseDraws(0.5, seed=9)
    rng = np.random.default_rng(9)
    z = rng.standard_normal(300)
    assert [draws.factor(i) for i in range(300)] == [max(0.05, 1.0 + 0.5 * float(x)) for x in z]
    assert draws.smallest(300) == min(draws.factor(i) for i in range(300))
    assert NoiseDraws(0.0, seed=9).factor(5) == 1.0


def test_foresight_rejects_bad_values() -> None:
    world = build_world(CASES["contention"])
    with pytest.raises(ValueError, match="receive_slowdown"):
        Foresight(world.trace, receive_slowdown=0.0)
    with pytest.raises(ValueError, match="concurrency"):
        Foresight(world.trace, server_concurrency=0)


@pytest.mark.parametrize("module", ["foresight", "oracle_replay", "oracle_search"])
def test_oracle_modules_are_pure(module: str) -> None:
    source = Path(inspect.getfile(policies_pkg)).parent / f"{module}.py"
    imported = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
            if node.module.startswith("sparkv."):
                assert node.module.split(".")[1] in ("core", "policies"), f"{module} imports {node.module}"
    assert not imported & FORBIDDEN, f"{module} imports {imported & FORBIDDEN}"
