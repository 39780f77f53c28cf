"""The same requests in both worlds: a tiny model behind a real KV server and the pacing link, and the SimPy model
of the same scenario. The event streams must agree in types, in order per lane and in cells; link events in time
within a stated tolerance (the pacing link replays the trace, so transfers take what the trace says)."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sparkv.core.config import LinkConfig, Scenario
from sparkv.core.result import Result
from sparkv.executor.model.models import load_model, tiny_model_dir
from sparkv.executor.session import RealSession
from sparkv.policies import make_policy
from sparkv.policies.base import Policy
from sparkv.policies.baselines import StreamOnly
from sparkv.sim import simulate

# link event times: |real - sim| <= REL x sim + ABS_S. On a quiet machine the two agree within about 2 %
# (loopback round trips, frame headers, thread hand-offs); the bound is wide so that a busy machine, whose
# pacing sender and control thread run late, cannot fail it, while a wrong link model (a missing round trip
# or install phase, a rate off by half) still does.
REL, ABS_S = 0.5, 0.5
TEXT = "The radio hut door code is 4417. " * 40
LINK_EVENTS = ("TransferDone", "TransferCancelled", "TransferFailed")
COMPUTE_EVENTS = ("ComputeDone", "QueryLayerStarted", "QueryLayerDone")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return load_model(str(tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m", num_layers=3, tokenizer=True)))


def scenario(trace: str, **link: Any) -> Scenario:
    # loopback constants: sub-millisecond round trips; the pacing link paces wire bytes at the trace's rate
    base = {"rtt_s": 0.002, "per_transfer_s": 0.001, "efficiency": 1.0, **link}
    return Scenario(context_tokens=192, chunk_tokens=64, trace=trace, device="analytic-cpu-2core",
                    link=LinkConfig(**base))  # fmt: skip


class TickingStream(StreamOnly):
    """Stream-only with ticks: in-flight bandwidth samples in both worlds."""

    tick_s = 0.1


def make(policy: str) -> Policy:
    return TickingStream() if policy == "ticking-stream" else make_policy(policy)


def both(loaded: Any, tmp: Path, sc: Scenario, policy: str, kill_at_s: float | None = None) -> tuple[Result, Result]:
    """(real, simulated) results of `policy` on `sc`; `kill_at_s`: SIGKILL the real server then (the simulator
    models the same with `server_fails_at_s`)."""
    with RealSession(sc, (TEXT, "What is the door code?", "4417"), link_kind="pacing", loaded=loaded,
                     store_root=tmp) as session:  # fmt: skip
        timer = None
        if kill_at_s is not None:
            timer = threading.Timer(kill_at_s, session._link.server.kill)
            timer.start()
        real = session.run(make(policy), max_new_tokens=1)
        if timer is not None:
            timer.cancel()
        world = session.world
        if kill_at_s is not None:
            world = session.world_with(server_fails_at_s=kill_at_s)
        sim = simulate(world, make(policy))
    return real, sim


def lane(result: Result, kinds: tuple[str, ...]) -> list[tuple[str, Any]]:
    out = []
    for entry in result.log:
        if entry["call"] == "update" and entry["event"]["type"] in kinds:
            e = entry["event"]
            out.append((e["type"], e.get("block", e.get("layer")), e["t_s"]))
    return out


def assert_same_streams(real: Result, sim: Result, timed: bool) -> None:
    for kinds in (LINK_EVENTS, COMPUTE_EVENTS):
        r, s = lane(real, kinds), lane(sim, kinds)
        assert [x[:2] for x in r] == [x[:2] for x in s], f"{kinds}: real {r} vs sim {s}"
        if timed and kinds is LINK_EVENTS:
            for (kind, block, t_real), (_, _, t_sim) in zip(r, s, strict=True):
                why = f"{kind} {block}: real {t_real:.3f} s, sim {t_sim:.3f} s"
                assert abs(t_real - t_sim) <= REL * t_sim + ABS_S, why
    types_real = Counter(e["event"]["type"] for e in real.log if e["call"] == "update")
    types_sim = Counter(e["event"]["type"] for e in sim.log if e["call"] == "update")
    assert set(types_real) == set(types_sim), (types_real, types_sim)


def test_constant_trace_stream_and_local(loaded: Any, tmp_path: Path) -> None:
    sc = scenario("const:0.4mbps,600s")
    for policy, timed in (("stream", True), ("local", False)):
        real, sim = both(loaded, tmp_path, sc, policy)
        assert_same_streams(real, sim, timed)
        assert real.cells_streamed == sim.cells_streamed and real.cells_computed == sim.cells_computed


def test_step_trace_with_an_outage(loaded: Any, tmp_path: Path) -> None:
    sc = scenario("steps:0.3s@0.4mbps,0.8s@0mbps,600s@0.4mbps")
    real, sim = both(loaded, tmp_path, sc, "stream")
    assert_same_streams(real, sim, timed=True)
    # a ticking policy sees the outage as zero-byte samples in both worlds
    real, sim = both(loaded, tmp_path, sc, "ticking-stream")
    assert_same_streams(real, sim, timed=True)
    for result in (real, sim):
        zero = [e for e in result.log if e["call"] == "update" and e["event"]["type"] == "BandwidthSample"
                and e["event"]["bytes"] == 0]  # fmt: skip
        assert zero, f"{result.world}: no zero-byte sample during the outage"


def test_a_server_killed_mid_stream(loaded: Any, tmp_path: Path) -> None:
    sc = scenario("const:0.4mbps,600s")
    real, sim = both(loaded, tmp_path, sc, "stream", kill_at_s=0.75)
    assert_same_streams(real, sim, timed=False)
    for result in (real, sim):
        assert result.faults and "server gone" in result.faults[0], result.world
        assert result.cells_computed > 0
