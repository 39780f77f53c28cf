"""The request engine: the policy's mirror, the events both worlds send, command checks, and modelled faults."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from sparkv.core.config import LinkConfig, Scenario
from sparkv.core.events import Command, Compute, Event, Resource
from sparkv.core.request import CellBlock
from sparkv.engine.request import MirrorMismatch
from sparkv.policies import BASELINES, make_policy
from sparkv.policies.base import Policy, policy_hooks
from sparkv.policies.oracle import oracle_options
from sparkv.policies.tracking import TrackingPolicy
from sparkv.sim import build_world, simulate

TRACES = ["const:8mbps,600s", "steps:2s@12mbps,3s@0mbps,600s@4mbps", "lte:seed=5,mean=6mbps"]
ALL = [*BASELINES, "sparkv", "oracle"]


def world(trace: str, **link: Any):  # type: ignore[no-untyped-def]
    return build_world(Scenario(context_tokens=2048, chunk_tokens=256, trace=trace,
                                link=LinkConfig(**link)))  # fmt: skip


def policy_for(name: str, w: Any) -> Policy:
    return make_policy(name, **(oracle_options(w) if name == "oracle" else {}))


def events(result: Any) -> list[dict[str, Any]]:
    return [e["event"] for e in result.log if e["call"] == "update"]


@pytest.mark.parametrize("trace", TRACES)
@pytest.mark.parametrize("name", ALL)
def test_every_policy_mirrors_the_engine_after_every_event(name: str, trace: str) -> None:
    w = world(trace)
    result = simulate(w, policy_for(name, w), check_mirror=True)
    assert result.ttft_s > 0


class _Forgetful(TrackingPolicy):
    """Streams layer by layer but forgets one arrival: its picture of the request goes wrong."""

    name = "forgetful"

    def on_begin(self, ctx: Any) -> None:
        self.arrived = 0

    def on_event(self, event: Event) -> None:
        if type(event).__name__ == "TransferDone":
            self.arrived += 1
            if self.arrived == 2:
                self._progress().computed_prefix[0] = 1  # a wrong belief

    def next_fetch(self, now_s: float) -> CellBlock | None:
        progress = self._progress()
        for layer in range(progress.num_layers):
            block = CellBlock(0, progress.num_chunks, layer, layer + 1)
            try:
                progress.check_fetch(block)
            except ValueError:
                continue
            return block
        return None


def test_a_policy_whose_picture_drifts_is_caught() -> None:
    with pytest.raises(MirrorMismatch, match="forgetful"):
        simulate(world("const:8mbps,600s"), _Forgetful(), check_mirror=True)


def test_query_layers_are_announced_and_tracked_by_the_policy() -> None:
    w = world("const:8mbps,600s")
    policy = make_policy("cake")
    result = simulate(w, policy)
    kinds = Counter(e["type"] for e in events(result))
    layers = w.spec.num_layers
    assert kinds["QueryLayerStarted"] == layers and kinds["QueryLayerDone"] == layers
    assert policy.progress is not None and policy.progress.query_layers_done == layers
    started = [e for e in events(result) if e["type"] == "QueryLayerStarted"]
    assert [e["layer"] for e in started] == list(range(layers))


def test_a_stalled_transfer_sends_zero_byte_samples_from_its_first_byte_on() -> None:
    w = world("steps:1s@12mbps,3s@0mbps,600s@4mbps")
    result = simulate(w, make_policy("sparkv"))
    samples = [e for e in events(result) if e["type"] == "BandwidthSample"]
    zero = [s for s in samples if s["bytes"] == 0]
    assert len(zero) >= 8  # the 3 s outage at 0.25 s ticks
    assert all(1.0 <= s["t_s"] <= 4.0 + 0.26 for s in zero)
    first_fetch = next(e for e in result.log if e["call"] == "schedule" and any(c["type"] == "Fetch"
                                                                                 for c in e["commands"]))  # fmt: skip
    first_sample = samples[0]
    # the first window starts at the first payload byte: after the round trip and the service time
    assert first_sample["t_s"] - first_sample["duration_s"] >= first_fetch["now_s"] + w.scenario.link.rtt_s - 1e-9


def test_ticks_come_only_at_the_policy_period() -> None:
    w = world("const:8mbps,600s")
    assert policy_hooks(make_policy("stream")).tick_s is None
    stream = simulate(w, make_policy("stream"))
    assert not any(e["type"] == "Tick" for e in events(stream))
    sparkv = simulate(w, make_policy("sparkv"))
    ticks = [e["t_s"] for e in events(sparkv) if e["type"] == "Tick"]
    assert ticks and ticks[0] == pytest.approx(0.25) and len(ticks) == int(sparkv.ttft_s / 0.25)


def test_a_server_that_dies_fails_the_transfer_then_every_fetch() -> None:
    w = world("const:2mbps,600s", server_fails_at_s=0.5)
    result = simulate(w, make_policy("stream"))
    failed = [e for e in events(result) if e["type"] == "TransferFailed"]
    assert len(failed) == 2  # the one in flight, then one refused: the link is given up
    assert failed[0]["t_s"] == pytest.approx(0.5) and failed[0]["bytes"] > 0
    assert failed[1]["bytes"] == 0 and "refused" in failed[1]["reason"]
    assert result.faults and "server gone" in result.faults[0]
    assert result.cells_computed > 0 and result.ttft_s > 0


class _Twice(TrackingPolicy):
    """Computes two blocks at once."""

    name = "twice"

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]:
        return (Compute(CellBlock(0, 1, 0, 1)), Compute(CellBlock(1, 2, 0, 1))) if now_s == 0 else ()


@pytest.mark.parametrize(("policy", "message"), [(_Twice(), "while compute is busy")])
def test_commands_that_break_the_lanes_are_refused(policy: Policy, message: str) -> None:
    with pytest.raises(RuntimeError, match=message):
        simulate(world("const:8mbps,600s"), policy)


def test_policy_hooks_refuse_a_bad_tick() -> None:
    class Bad(TrackingPolicy):
        name = "bad"
        tick_s = -1.0

    with pytest.raises(ValueError, match="tick_s"):
        policy_hooks(Bad())


def test_config_holds_settings_and_stats_hold_the_run() -> None:
    w = world("lte:seed=5,mean=6mbps")
    result = simulate(w, make_policy("sparkv"))
    assert "stats" not in result.config["policy"] and "plan_k" in result.extra["policy_stats"]
    rebuilt = make_policy("sparkv", **{k: v for k, v in result.config["policy"].items() if k != "name"})
    assert rebuilt.config() == result.config["policy"]
