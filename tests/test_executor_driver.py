"""The real driver on a tiny model with an in-process cell source: correctness for every policy, faults."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from sparkv.core.costs import CostTable
from sparkv.core.request import CellBlock, Request
from sparkv.executor.driver import CellArrival, DriverConfig, RealDriver
from sparkv.executor.model.kvstore import KVStore, build_kv_store
from sparkv.executor.model.models import LoadedModel, tiny_model
from sparkv.executor.model.prefill import LayerwisePrefill, full_prefill_reference
from sparkv.executor.net.protocol import CorruptFrame, DeadlineExceeded
from sparkv.policies import BASELINES, make_policy
from sparkv.policies.base import RequestContext

CHUNK = 16


class ServerGone(Exception):
    """Stands in for the client's exception of the same name."""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoadedModel, torch.Tensor, torch.Tensor, KVStore]:
    loaded = tiny_model("llama", num_layers=4, seed=3)
    gen = torch.Generator().manual_seed(0)
    ctx_ids = torch.randint(0, 256, (70,), generator=gen)
    query_ids = torch.randint(0, 256, (5,), generator=gen)
    info = build_kv_store(loaded, ctx_ids, Path(tmp_path_factory.mktemp("kv")))
    return loaded, ctx_ids, query_ids, KVStore(info.path)


def context(loaded: LoadedModel, tokens: int, bandwidth_bps: float) -> RequestContext:
    req = Request(tokens, 5, CHUNK)
    layers = loaded.spec.num_layers
    cell = np.array([[req.chunk_len(c) * loaded.spec.kv_bytes_per_token_layer] * layers for c in range(req.num_chunks)])
    costs = CostTable(np.full((req.num_chunks, layers), 0.01), 0.0, cell, 0.001, 0.0, np.full(layers, 0.001), 0.001,
                      bandwidth_bps)
    return RequestContext(req, loaded.spec, costs)


def store_fetch(store: KVStore, fail_after_cells: int | None = None,  # type: ignore[no-untyped-def]
                error: Exception | None = None):
    served = [0]

    def fetch(request_id: int, block: CellBlock, deadline_s: float) -> Iterator[CellArrival]:
        for c in range(block.chunk_lo, block.chunk_hi):
            for layer in range(block.layer_lo, block.layer_hi):
                if fail_after_cells is not None and served[0] >= fail_after_cells:
                    raise error if error is not None else ServerGone("connection reset")
                k, v = store.cell(c * CHUNK, min((c + 1) * CHUNK, 70), layer)
                served[0] += 1
                yield CellArrival(c, layer, np.array(k), np.array(v), k.nbytes + v.nbytes)

    return fetch


@pytest.mark.parametrize("name", [*BASELINES, "sparkv"])
def test_every_policy_assembles_the_reference_cache(setup, name: str) -> None:  # type: ignore[no-untyped-def]
    loaded, ctx_ids, query_ids, store = setup
    ref_kv, ref_tokens = full_prefill_reference(loaded, ctx_ids, query_ids, 8)
    prefill = LayerwisePrefill(loaded, ctx_ids, query_ids, CHUNK, max_new_tokens=8)
    driver = RealDriver(context(loaded, 70, 2e5), make_policy(name), prefill, store_fetch(store), lambda rid: None,
                        DriverConfig(poll_s=0.05), check_mirror=True)  # the policy's picture checked after every event
    out = driver.run()
    tokens = [out.first_token, *prefill.generate(7)]
    assert tokens == list(ref_tokens)
    for (k, v), (rk, rv) in zip(prefill.cache_tensors(), ref_kv, strict=True):
        torch.testing.assert_close(k[:, :70], rk[:, :70], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(v[:, :70], rv[:, :70], atol=1e-4, rtol=1e-4)
    assert out.cells_computed + out.cells_streamed >= 5 * 4
    assert out.ttft_s > 0 and out.spans[-1].kind == "first_token"


def test_server_dying_mid_stream_still_answers_correctly(setup) -> None:  # type: ignore[no-untyped-def]
    loaded, ctx_ids, query_ids, store = setup
    _, ref_tokens = full_prefill_reference(loaded, ctx_ids, query_ids, 4)
    prefill = LayerwisePrefill(loaded, ctx_ids, query_ids, CHUNK, max_new_tokens=4)
    driver = RealDriver(context(loaded, 70, 1e9), make_policy("stream"), prefill, store_fetch(store, 3),
                        lambda rid: None, DriverConfig(poll_s=0.05, keep_partial=True))
    out = driver.run()
    assert [out.first_token, *prefill.generate(3)] == list(ref_tokens)
    assert out.faults and "server gone" in out.faults[0]
    # the three cells that arrived whole stay; the link was given up, the chunks computed locally (a compute
    # is a prefix of layers, so it covers those three cells again)
    assert out.cells_streamed == 3 and out.cells_computed == 5 * 4
    assert "3 cells kept" in out.faults[0]
    assert any(s.kind == "failed" for s in out.spans)


@pytest.mark.parametrize(("error", "reason"), [
    (CorruptFrame("cell (1, 2): crc mismatch"), "corrupt frame"),
    (DeadlineExceeded("request 1: 30 s without a byte"), "deadline"),  # the link stayed at zero too long
])
def test_corrupt_frame_or_dead_link_still_answers_correctly(setup, error: Exception,  # type: ignore[no-untyped-def]
                                                            reason: str) -> None:
    loaded, ctx_ids, query_ids, store = setup
    _, ref_tokens = full_prefill_reference(loaded, ctx_ids, query_ids, 4)
    for name in ("stream", "cake", "sparkv"):
        prefill = LayerwisePrefill(loaded, ctx_ids, query_ids, CHUNK, max_new_tokens=4)
        driver = RealDriver(context(loaded, 70, 2e5), make_policy(name), prefill, store_fetch(store, 2, error),
                            lambda rid: None, DriverConfig(poll_s=0.05))
        out = driver.run()
        assert [out.first_token, *prefill.generate(3)] == list(ref_tokens), name
        assert out.faults and reason in out.faults[0], name
        assert out.cells_streamed + out.cells_computed >= 5 * 4


def test_replay_of_a_real_log_reproduces_decisions(setup) -> None:  # type: ignore[no-untyped-def]
    from sparkv.core.replay import replay

    loaded, ctx_ids, query_ids, store = setup
    ctx = context(loaded, 70, 2e5)
    prefill = LayerwisePrefill(loaded, ctx_ids, query_ids, CHUNK)
    out = RealDriver(ctx, make_policy("cake"), prefill, store_fetch(store), lambda rid: None).run()
    fresh = make_policy("cake")
    fresh.begin(ctx)
    assert replay(fresh, out.log) == []
