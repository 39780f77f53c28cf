"""The real driver against a real KV server process with faults: killed before the first byte, dead
before END, restarted on the same port, a stalled link, a corrupt frame. The assembled KV is compared
tensor by tensor with a full local prefill (token equality would miss a single wrong byte)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sparkv.core.costs import CostTable
from sparkv.core.request import CellBlock, Request
from sparkv.executor.driver import CellArrival, DriverConfig, DriverOutput, RealDriver, delivered_parts
from sparkv.executor.model.kvstore import build_kv_store
from sparkv.executor.model.models import LoadedModel, tiny_model
from sparkv.executor.model.prefill import LayerwisePrefill, full_prefill_reference
from sparkv.executor.net.client import KVClient
from sparkv.executor.net.launch import ServerHandle, start_server
from sparkv.policies import make_policy
from sparkv.policies.base import RequestContext
from sparkv.traces.synthetic import constant

CHUNK, T = 16, 70


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    loaded = tiny_model("llama", num_layers=4, seed=3)
    gen = torch.Generator().manual_seed(0)
    ctx_ids = torch.randint(0, 256, (T,), generator=gen)
    query_ids = torch.randint(0, 256, (5,), generator=gen)
    root = Path(tmp_path_factory.mktemp("kv"))
    info = build_kv_store(loaded, ctx_ids, root)
    ref_kv, _ref_tokens = full_prefill_reference(loaded, ctx_ids, query_ids, 2)
    return loaded, ctx_ids, query_ids, root, info.key, ref_kv


def _context(loaded: LoadedModel, bandwidth_bps: float) -> RequestContext:
    req = Request(T, 5, CHUNK)
    layers = loaded.spec.num_layers
    cell = np.array([[req.chunk_len(c) * loaded.spec.kv_bytes_per_token_layer] * layers for c in range(req.num_chunks)])
    costs = CostTable(np.full((req.num_chunks, layers), 0.01), 0.0, cell, 0.001, 0.0, np.full(layers, 0.001), 0.001,
                      bandwidth_bps)
    return RequestContext(req, loaded.spec, costs)


def _run(world, port: int, policy: str = "stream", **config: float | bool) -> tuple[DriverOutput, float]:  # type: ignore[no-untyped-def]
    loaded, ctx_ids, query_ids, _, key, ref_kv = world
    client = KVClient("127.0.0.1", port, connect_timeout_s=1.0, idle_timeout_s=20.0)
    spec = loaded.spec

    def fetch(rid: int, block: CellBlock, deadline_s: float) -> Iterator[CellArrival]:
        for cell in client.fetch(rid, key, CHUNK, "raw", block, deadline_s,
                                 expect=lambda c, lyr: (spec.num_kv_heads, min(CHUNK, T - c * CHUNK), spec.head_dim)):
            yield CellArrival(cell.chunk, cell.layer, cell.k, cell.v, cell.wire_bytes, cell.head_s)

    prefill = LayerwisePrefill(loaded, ctx_ids, query_ids, CHUNK, max_new_tokens=2)
    driver = RealDriver(_context(loaded, 1e6), make_policy(policy), prefill, fetch, client.cancel,
                        DriverConfig(poll_s=0.05, **config), last_byte_s=client.last_byte_s)
    try:
        out = driver.run()
    finally:
        client.close()
    worst = 0.0
    for (k, v), (rk, rv) in zip(prefill.cache_tensors(), ref_kv, strict=True):
        worst = max(worst, float((k[:, :T] - rk[:, :T]).abs().max()), float((v[:, :T] - rv[:, :T]).abs().max()))
    return out, worst


def test_delivered_parts_are_the_chunk_major_prefix() -> None:
    block = CellBlock(2, 5, 1, 4)
    assert delivered_parts(block, 0) == ()
    assert delivered_parts(block, 2) == (CellBlock(2, 3, 1, 3),)
    assert delivered_parts(block, 7) == (CellBlock(2, 4, 1, 4), CellBlock(4, 5, 1, 2))
    assert sum(p.num_cells for p in delivered_parts(block, 9)) == 9


def test_a_server_killed_before_the_first_byte(world) -> None:  # type: ignore[no-untyped-def]
    handle = start_server(world[3])
    port = handle.port
    handle.kill()
    out, worst = _run(world, port, stall_s=0.5)
    assert worst < 1e-4 and out.faults and out.cells_computed == 5 * 4


def test_a_server_dead_before_end_keeps_the_cells_it_sent(world) -> None:  # type: ignore[no-untyped-def]
    cell_wire = 2 * 2 * CHUNK * 16 * 4 + 100  # about one cell's frames
    with start_server(world[3], faults=[f"die-after-bytes={int(3.5 * cell_wire)}"]) as handle:
        out, worst = _run(world, handle.port, stall_s=1.0, keep_partial=True)
    assert worst < 1e-4
    assert out.faults and "3 cells kept" in out.faults[0]  # the first block's first three cells
    assert out.cells_streamed == 3 and out.bytes_wasted == 0  # kept, not thrown away and fetched again


def test_a_restarted_server_is_used_again(world) -> None:  # type: ignore[no-untyped-def]
    first = start_server(world[3])
    port = first.port
    first.kill()
    later: list[ServerHandle] = []

    def restart() -> None:
        time.sleep(0.5)  # the outage: the server is down for this long
        later.append(start_server(world[3], port=port))

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        out, worst = _run(world, port, stall_s=10.0, backoff_max_s=0.2)
    finally:
        thread.join(timeout=60)
        for h in later:
            h.stop()
    assert worst < 1e-4
    assert out.faults == [] and out.cells_streamed == 5 * 4  # reconnected with backoff, nothing lost


def test_a_stalled_link_is_given_up_at_once_not_after_the_idle_timeout(world) -> None:  # type: ignore[no-untyped-def]
    with start_server(world[3], pacing_trace=constant(0.0, 60.0)) as handle:
        t0 = time.perf_counter()
        out, worst = _run(world, handle.port, stall_s=0.5)
        took = time.perf_counter() - t0
    assert worst < 1e-4
    assert out.faults and "stalled" in out.faults[0]
    assert took < 15.0  # the client's idle timeout is 20 s: the stall was declared by the driver
    assert out.cells_computed == 5 * 4


def test_a_corrupt_frame_is_never_installed(world) -> None:  # type: ignore[no-untyped-def]
    with start_server(world[3], faults=["corrupt-cell=1,2"]) as handle:
        out, worst = _run(world, handle.port, stall_s=1.0)
    assert worst < 1e-4  # compared tensor by tensor: one flipped byte would show
    assert out.faults and "corrupt frame" in out.faults[0]


@pytest.mark.parametrize("policy", ["stream", "cake", "static"])
def test_partial_transfers_are_finished_by_fetching_the_rest(world, policy: str) -> None:  # type: ignore[no-untyped-def]
    first = start_server(world[3], faults=["die-after-bytes=5000"])  # a cell or more, within the first transfer
    port = first.port
    later: list[ServerHandle] = []

    def restart() -> None:
        first.proc.wait(timeout=30)
        later.append(start_server(world[3], port=port))

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        out, worst = _run(world, port, policy, stall_s=10.0, backoff_max_s=0.2, keep_partial=True)
    finally:
        thread.join(timeout=60)
        first.kill()
        for h in later:
            h.stop()
    assert worst < 1e-4, policy
    assert "cells kept" in out.faults[0], (policy, out.faults)
