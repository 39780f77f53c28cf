"""KV kept on local disk, a third source for loading: scenario, disk lane, storage timing, policies, real reads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparkv import api
from sparkv.core.config import LocalKV, Scenario
from sparkv.core.costs import CostTable
from sparkv.core.errors import UserError
from sparkv.core.events import Command, Fetch, ReadLocal, Resource
from sparkv.core.request import CellBlock
from sparkv.core.result import Result
from sparkv.cost_models.local import local_cell_bytes
from sparkv.cost_models.storage import load_storage
from sparkv.policies import DISK_POLICIES, make_policy
from sparkv.policies.base import RequestContext
from sparkv.policies.tracking import TrackingPolicy
from sparkv.sim import SimulationStalled, build_world, simulate

DISK_AWARE = [*DISK_POLICIES, "sparkv"]


def scenario(local: LocalKV | None, trace: str = "lte:seed=5,mean=6mbps", **fields: Any) -> Scenario:
    return Scenario(context_tokens=4096, chunk_tokens=512, trace=trace, local=local, **fields)


# ---- the scenario ----


def test_a_scenario_without_local_kv_reads_as_before_and_one_with_it_round_trips() -> None:
    plain = scenario(None)
    assert "local" not in plain.to_dict()
    assert Scenario.from_dict(plain.to_dict()) == plain
    with_local = scenario(LocalKV((1, 3), storage="jetson-orin-emmc", queue_depth=2))
    data = with_local.to_dict()
    assert data["local"] == {"chunks": [1, 3], "storage": "jetson-orin-emmc", "queue_depth": 2}
    assert Scenario.from_dict(data) == with_local


@pytest.mark.parametrize("local", [LocalKV(9), LocalKV((2, 8)), LocalKV(1, storage="no-such-disk")])
def test_local_chunks_outside_the_context_or_an_unknown_disk_are_refused(local: LocalKV) -> None:
    with pytest.raises(UserError):
        build_world(scenario(local))  # 8 chunks


def test_bad_local_settings_are_refused() -> None:
    for bad in ({"chunks": -1}, {"chunks": (1, 1)}, {"queue_depth": 0}):
        with pytest.raises(ValueError):
            LocalKV(**bad)


# ---- the engine's disk lane ----


class _Script(TrackingPolicy):
    """Returns the given commands at the request's start, then reads nothing more (a run to test the checks)."""

    name = "script"

    def __init__(self, commands: tuple[Command, ...]) -> None:
        super().__init__()
        self.commands = commands

    def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]:
        return self.commands if now_s == 0 else ()


@pytest.mark.parametrize(
    ("local", "commands", "error", "message"),
    [
        (None, (ReadLocal(CellBlock(0, 1, 0, 1)),), RuntimeError, "none of this request's KV is on local disk"),
        (LocalKV(2), (ReadLocal(CellBlock(1, 3, 0, 1)),), RuntimeError, "not on local disk"),
        (LocalKV(2), (ReadLocal(CellBlock(0, 1, 0, 1)), ReadLocal(CellBlock(1, 2, 0, 1))), RuntimeError,
         "while the disk is busy"),
        (LocalKV(2), (Fetch(CellBlock(0, 1, 0, 2)), ReadLocal(CellBlock(0, 1, 1, 3))), ValueError, "FETCHING"),
    ],
)
def test_reads_that_break_the_disk_lane_or_leave_the_disk_are_refused(
    local: LocalKV | None, commands: tuple[Command, ...], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        simulate(build_world(scenario(local)), _Script(commands))


def test_the_disk_is_offered_only_to_a_request_with_local_kv() -> None:
    seen: list[frozenset[Resource]] = []

    class Spy(TrackingPolicy):
        name = "spy"

        def next_compute(self, now_s: float) -> CellBlock | None:
            return None

        def schedule(self, now_s: float, idle: frozenset[Resource]) -> tuple[Command, ...]:
            seen.append(idle)
            return ()

    for local in (None, LocalKV(1)):
        seen.clear()
        with pytest.raises(SimulationStalled):
            simulate(build_world(scenario(local)), Spy(), max_time_s=1.0)
        assert (Resource.DISK in seen[0]) is (local is not None)


def test_simulated_reads_take_exactly_the_storage_model_s_time() -> None:
    sc = scenario(LocalKV(3, storage="jetson-orin-emmc", queue_depth=4))
    w = build_world(sc)
    storage = load_storage("jetson-orin-emmc")
    install = w.profile.install_cost("fp16")[1]

    class Reader(TrackingPolicy):
        """Reads chunks 0-2 two layers at a time (two requests per read, so the queue depth counts)."""

        name = "reader"

        def on_begin(self, ctx: RequestContext) -> None:
            self.todo = [CellBlock(0, 3, lo, min(lo + 2, ctx.model.num_layers)) for lo in range(0, 30, 2)]

        def next_read(self, now_s: float) -> CellBlock | None:
            return self.todo.pop(0) if self.todo else None

        def next_compute(self, now_s: float) -> CellBlock | None:
            p = self._progress()
            for c in range(3, p.num_chunks):
                if p.computed_prefix[c] == 0:
                    block = CellBlock(c, c + 1, 0, p.num_layers)
                    return block if p.can_compute(block) else None
            return None

    result = simulate(w, Reader(), check_mirror=True)
    reads = [s for s in result.spans if s.lane == "disk"]
    assert len(reads) == 15 and result.extra["disk"]["cells_read"] == 3 * 30
    cell = local_cell_bytes(w.spec.num_kv_heads, w.spec.head_dim, 512)
    for span in reads:
        assert span.block is not None
        requests = [3 * cell] * (span.block.layer_hi - span.block.layer_lo)
        expected = storage.batch_s(requests, 4) + sum(requests) * install
        assert span.end_s - span.start_s == pytest.approx(expected, rel=1e-12)
        assert span.bytes == sum(requests)
    assert result.extra["disk"]["bytes_read"] == 90 * cell
    assert "disk" in result.energy_j and result.energy_j["disk"] > 0  # eMMC has a read power: modelled


# ---- policies ----


def _local_cells_touched_elsewhere(result: Result, local: tuple[int, ...]) -> list[Any]:
    """Spans of the link or the policy's compute that cover a local chunk."""
    return [s for s in result.spans if s.lane in ("link", "compute") and s.block is not None
            and any(c in local for c in range(s.block.chunk_lo, s.block.chunk_hi))]  # fmt: skip


@pytest.mark.parametrize("local", [LocalKV(2), LocalKV((1, 3, 4), storage="jetson-orin-emmc"), LocalKV(8)])
@pytest.mark.parametrize("name", DISK_AWARE)
def test_disk_policies_read_every_local_cell_once_and_nothing_else(name: str, local: LocalKV) -> None:
    w = build_world(scenario(local))
    chunks = local.chunk_set(w.request.num_chunks)
    result = simulate(w, make_policy(name), check_mirror=True)
    reads = [s.block for s in result.spans if s.lane == "disk" and s.block is not None]
    assert all(c in chunks for b in reads for c in range(b.chunk_lo, b.chunk_hi))
    assert sum(b.num_cells for b in reads) == len(chunks) * 30
    assert not _local_cells_touched_elsewhere(result, chunks)
    # every other cell was streamed or computed (a streamed cell may be computed again for its hidden states)
    assert result.cells_computed + result.cells_streamed + len(chunks) * 30 >= w.request.num_chunks * 30


@pytest.mark.parametrize("trace", ["const:8mbps,600s", "lte:seed=5,mean=6mbps", "steps:2s@12mbps,3s@0mbps,600s@4mbps"])
def test_sparkv_loads_no_slower_with_local_chunks(trace: str) -> None:
    base = simulate(build_world(scenario(None, trace)), make_policy("sparkv")).ttft_s
    previous = base
    for n in (2, 4, 6):
        ttft = simulate(build_world(scenario(LocalKV(n), trace)), make_policy("sparkv")).ttft_s
        assert ttft <= previous + 1e-9, f"{n} local chunks: {ttft:.3f} s, fewer: {previous:.3f} s"
        previous = ttft
    assert previous < base


def test_sparkv_s_first_plan_predicts_the_ttft_with_the_disk_lane() -> None:
    for n in (0, 4):  # on a constant link the first plan's prediction holds, with local chunks as without
        w = build_world(scenario(LocalKV(n) if n else None, "const:3mbps,600s"))
        result = simulate(w, make_policy("sparkv"))
        assert result.extra["policy_stats"]["predicted_ttft_s"] == pytest.approx(result.ttft_s, rel=0.06)


def test_the_oracle_is_refused_with_local_kv_and_left_out_of_the_default_list() -> None:
    sc = scenario(LocalKV(2))
    with pytest.raises(UserError, match="not available when some KV is on local disk"):
        api.make_policy("oracle", build_world(sc))
    run = api.simulate(sc, warn=False)
    names = {r.policy for r in run.results}
    assert "oracle" not in names and set(DISK_POLICIES) <= names
    assert any("oracle" in note for note in run.notes)


def test_the_cost_table_keeps_the_disk_lane_through_json() -> None:
    costs = build_world(scenario(LocalKV((0, 5)))).costs
    again = CostTable.from_dict(costs.to_dict())
    assert again.local is not None and costs.local is not None
    block = CellBlock(0, 1, 0, 30)
    assert again.local.read_s(block) == costs.local.read_s(block) and again.local.chunks == (0, 5)
    assert "local" not in build_world(scenario(None)).costs.to_dict()


# ---- the real local copy ----


@pytest.fixture()
def folder() -> Path:
    # O_DIRECT needs a real file system (tmpfs refuses it): a folder inside the checkout's ignored out/
    base = Path(__file__).resolve().parent.parent / "out" / "test-localkv" / str(os.getpid())
    base.mkdir(parents=True, exist_ok=True)
    return base


def test_a_local_copy_round_trips_through_direct_reads(folder: Path) -> None:
    from sparkv.executor.model.localkv import LocalKVReader, LocalLayout, ensure_local_kv

    rng = np.random.default_rng(0)
    k = rng.normal(size=(2, 3, 150, 16)).astype(np.float32)  # [layers, KV, tokens, hd]: 3 chunks of 64, last 22
    v = rng.normal(size=(2, 3, 150, 16)).astype(np.float32)
    layout = LocalLayout("ctx", 150, 64, 2, 3, 16, (0, 2))

    def cell(c: int, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return k[layer, :, c * 64 : (c + 1) * 64], v[layer, :, c * 64 : (c + 1) * 64]

    assert ensure_local_kv(folder, layout, cell) is True
    assert ensure_local_kv(folder, layout, cell) is False  # kept: not written twice
    reader = LocalKVReader(folder, queue_depth=2)
    try:
        got = list(reader.read(CellBlock(2, 3, 0, 2)))
        assert [(c, layer) for c, layer, _, _ in got] == [(2, 0), (2, 1)]
        for _, layer, kk, vv in got:
            assert kk.shape == (3, 22, 16)
            np.testing.assert_array_equal(kk, k[layer, :, 128:].astype(np.float16))
            np.testing.assert_array_equal(vv, v[layer, :, 128:].astype(np.float16))
        with pytest.raises(UserError, match="not \\[1\\]"):
            list(reader.read(CellBlock(0, 2, 0, 1)))
    finally:
        reader.close()
    (folder / "cells.kv").write_bytes(b"")
    with pytest.raises(UserError, match="truncated"):
        LocalKVReader(folder)


# ---- both worlds ----


def test_both_worlds_read_the_same_cells_in_the_same_order(tmp_path: Path, folder: Path) -> None:
    from sparkv.core.config import LinkConfig
    from sparkv.executor.model.models import load_model, tiny_model_dir
    from sparkv.executor.session import RealSession

    loaded = load_model(str(tiny_model_dir(tmp_path / "m", num_layers=3, tokenizer=True)))
    link = LinkConfig(rtt_s=0.002, per_transfer_s=0.001, efficiency=1.0)
    sc = Scenario(context_tokens=192, chunk_tokens=64, trace="const:0.4mbps,600s", device="analytic-cpu-2core",
                  link=link, local=LocalKV(1))  # fmt: skip
    text = ("The radio hut door code is 4417. " * 40, "What is the door code?", "4417")
    for name in ("disk+stream", "disk+local"):
        with RealSession(sc, text, link_kind="pacing", loaded=loaded, store_root=tmp_path / "kv",
                         local_root=folder) as session:  # fmt: skip
            real = session.run(make_policy(name), max_new_tokens=1)
            sim = simulate(session.world, make_policy(name))
        for lane in ("disk", "link"):
            r = [(s.kind, s.block) for s in real.spans if s.lane == lane]
            s_ = [(s.kind, s.block) for s in sim.spans if s.lane == lane]
            assert r == s_, f"{name} {lane}: real {r} vs sim {s_}"
        types_real = [e["event"]["type"] for e in real.log if e["call"] == "update"]
        types_sim = [e["event"]["type"] for e in sim.log if e["call"] == "update"]
        assert set(types_real) == set(types_sim) and "ReadDone" in types_real
        assert [t for t in types_real if t == "ReadDone"] == [t for t in types_sim if t == "ReadDone"]
        assert real.extra["disk"]["cells_read"] == sim.extra["disk"]["cells_read"] == 3
        assert real.cells_computed == sim.cells_computed and real.cells_streamed == sim.cells_streamed
        assert real.extra["tokens"]  # the first token came from a cache partly read from disk


# ---- the command line ----


@pytest.mark.parametrize(("spec", "expected"), [("3", 3), ("25%", 2), ("0,2,5", (0, 2, 5)), ("100%", 8)])
def test_local_chunks_are_given_as_a_count_a_percentage_or_a_list(spec: str, expected: Any) -> None:
    from sparkv.commands.common import parse_local_chunks

    assert parse_local_chunks(spec, 8) == expected


def test_simulate_with_local_chunks_runs_the_disk_baselines(capsys: pytest.CaptureFixture[str]) -> None:
    from sparkv.cli import main

    small = ["--context-tokens", "2048", "--chunk-tokens", "256", "--trace", "const:8mbps,600s"]
    assert main(["simulate", *small, "--local-chunks", "50%", "--local-storage", "jetson-orin-nvme"]) == 0
    out = capsys.readouterr().out
    assert "chunks [0, 1, 2, 3] of 8 on local disk" in out and "read from disk MB" in out
    assert "disk+cake" in out and "oracle: not available" in out
    assert main(["simulate", *small, "--local-chunks", "half"]) == 2
    assert "--local-chunks: expected" in capsys.readouterr().err


@pytest.mark.parametrize("name", DISK_AWARE)
def test_a_run_with_local_reads_replays_to_the_same_commands(name: str) -> None:
    from sparkv.core.replay import replay

    w = build_world(scenario(LocalKV((0, 1, 5))))
    result = simulate(w, make_policy(name))
    context = result.extra["context"]
    fresh = make_policy(name)
    fresh.begin(RequestContext(w.request, w.spec, CostTable.from_dict(context["costs"]), 0.0, context["speed_hint"]))
    assert replay(fresh, result.log) == []


def test_the_gantt_chart_shows_the_disk_lane(tmp_path: Path) -> None:
    from sparkv.analysis.gantt import plot_gantt

    w = build_world(scenario(LocalKV(2)))
    results = [simulate(w, make_policy("disk+local")), simulate(w, make_policy("local"))]
    assert plot_gantt(results, tmp_path / "g.png").stat().st_size > 0
