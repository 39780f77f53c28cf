"""Block-sparse prefill attention: exact when every block is kept, sparse when asked, always causal."""

from __future__ import annotations

import pytest
import torch

from sparkv.core.attention import AttentionSpec, parse_attention
from sparkv.core.errors import UserError
from sparkv.core.request import CellBlock
from sparkv.executor.model.models import tiny_model
from sparkv.executor.model.prefill import LayerwisePrefill
from sparkv.executor.model.prefill_layers import attend
from sparkv.executor.model.sparse_prefill import (
    PrefillAttention,
    block_sparse_attend,
    dense_stats,
    pooled_scores,
    select_blocks,
)


def qkv(h: int, kv: int, start: int, n: int, hd: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(h, n, hd, generator=g)
    k = torch.randn(kv, start + n, hd, generator=g)
    v = torch.randn(kv, start + n, hd, generator=g)
    return q, k, v


def test_grammar_round_trips_and_rejects() -> None:
    spec = parse_attention("block-sparse:tau=0.8,block=32")
    assert (spec.kind, spec.tau, spec.block) == ("block-sparse", 0.8, 32)
    assert parse_attention(spec.name) == spec
    assert parse_attention("dense") == AttentionSpec()
    assert parse_attention("block-sparse:topk=3").top_k == 3
    for bad in ("sparse", "block-sparse:tau=0", "block-sparse:block=2.5", "block-sparse:foo=1", "dense:tau=1"):
        with pytest.raises(UserError):
            parse_attention(bad)


@pytest.mark.parametrize(("start", "n"), [(0, 40), (37, 29), (128, 64), (100, 1)])
def test_keeping_every_block_is_exact(start: int, n: int) -> None:
    q, k, v = qkv(4, 2, start, n)
    spec = AttentionSpec(kind="block-sparse", tau=1.0, block=16, dense_below=0)
    out, stats = block_sparse_attend(q, k, v, start, 0.3, spec)
    torch.testing.assert_close(out, attend(q, k, v, start, 0.3, None), atol=1e-5, rtol=0)
    assert stats.kept == stats.allowed == dense_stats(4, start, n, 16).allowed


def test_sparse_selection_keeps_sink_and_local_and_is_causal() -> None:
    q, k, v = qkv(4, 2, 256, 64, seed=1)
    spec = AttentionSpec(kind="block-sparse", top_k=1, block=16, dense_below=0)
    keep = select_blocks(pooled_scores(q, k, 256, 16, 0.3), 256, 16, spec)  # [H, 4, 20]
    for i in range(keep.shape[1]):
        qi = 256 // 16 + i
        assert keep[:, i, 0].all() and keep[:, i, qi].all()  # sink and diagonal
        assert not keep[:, i, qi + 1 :].any()  # nothing after the diagonal
        assert (keep[:, i].sum(-1) <= 3).all()  # top-1 + sink + diagonal
    out, stats = block_sparse_attend(q, k, v, 256, 0.3, spec)
    assert stats.kept < stats.allowed and stats.computed <= stats.allowed
    assert stats.kept_fraction < 0.25
    assert not torch.allclose(out, attend(q, k, v, 256, 0.3, None), atol=1e-3)


def test_concentrated_attention_is_found() -> None:
    """A key block whose keys align with every query wins the pooled ranking and carries the mass."""
    q, k, v = qkv(2, 1, 192, 64, seed=2)
    q = q.abs() + 1.0
    k[:, 80:96] = 3.0  # key block 5
    spec = AttentionSpec(kind="block-sparse", tau=0.5, block=16, sink_blocks=0, dense_below=0)
    keep = select_blocks(pooled_scores(q, k, 192, 16, 0.5), 192, 16, spec)
    assert keep[:, :, 5].all()
    out, _ = block_sparse_attend(q, k, v, 192, 0.5, spec)
    torch.testing.assert_close(out, attend(q, k, v, 192, 0.5, None), atol=0.05, rtol=0)


def test_tau_orders_the_work() -> None:
    q, k, v = qkv(4, 4, 512, 64, seed=3)
    fractions = []
    for tau in (0.3, 0.7, 0.95):
        _, stats = block_sparse_attend(q, k, v, 512, 0.3, AttentionSpec(kind="block-sparse", tau=tau, block=32))
        fractions.append(stats.kept_fraction)
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]


def test_layerwise_prefill_uses_the_attention_for_chunks_only() -> None:
    loaded = tiny_model("llama", initializer_range=0.1)
    ids = torch.randint(0, 256, (256,), generator=torch.Generator().manual_seed(0))
    query = ids[:8]
    runs = {}
    for name in ("dense", "block-sparse:tau=1,block=16,dense_below=0", "block-sparse:topk=1,block=16,dense_below=0"):
        p = LayerwisePrefill(loaded, ids, query, chunk_tokens=64, attention=name)
        for c in range(p.num_chunks):
            p.compute_block(CellBlock.one(c, 0, p.num_layers))
        runs[name] = p
    dense, full, top1 = runs.values()
    assert not dense.block_stats
    assert set(full.block_stats) == {(c, c + 1, layer) for c in range(4) for layer in range(4)}
    for (kd, vd), (kf, vf) in zip(dense.cache_tensors(256), full.cache_tensors(256), strict=True):
        torch.testing.assert_close(kf, kd, atol=1e-4, rtol=0)
        torch.testing.assert_close(vf, vd, atol=1e-4, rtol=0)
    later = [top1.block_stats[(3, 4, layer)].kept_fraction for layer in range(4)]
    assert max(later) < 1.0
    k_top, _ = top1.cache_tensors(256)[3]
    assert not torch.allclose(k_top, dense.cache_tensors(256)[3][0], atol=1e-4)  # later layers see a different x


def test_window_layers_and_dense_spec_fall_back() -> None:
    q, k, v = qkv(2, 2, 64, 32)
    sparse = PrefillAttention("block-sparse:topk=1,block=16,dense_below=0")
    torch.testing.assert_close(sparse(q, k, v, 64, 0.3, 16), attend(q, k, v, 64, 0.3, 16))
    assert sparse.last is None
    sparse(q, k, v, 64, 0.3, None)
    assert sparse.last is not None and sparse.last.kept < sparse.last.allowed


def test_study_records_every_cell_and_exact_kv_at_tau_1() -> None:
    from sparkv.analysis.sparse_study import sparse_prefill_kv
    from sparkv.executor.model.prefill import reference_kv

    loaded = tiny_model("llama", initializer_range=0.1)
    ids = torch.randint(0, 256, (100,), generator=torch.Generator().manual_seed(4))
    spec = parse_attention("block-sparse:tau=1,block=16,dense_below=0")
    kv, records = sparse_prefill_kv(loaded, ids, spec, chunk_tokens=32, document="d")
    assert {(r.chunk, r.layer) for r in records} == {(c, x) for c in range(4) for x in range(4)}
    assert len(records) == 4 * 4
    assert all(r.wall_s > 0 and r.kept_blocks == r.allowed_blocks for r in records)
    assert [r.tokens for r in records if r.layer == 0] == [32, 32, 32, 4]
    for (k, v), (k_ref, v_ref) in zip(kv, reference_kv(loaded, ids), strict=True):
        torch.testing.assert_close(k, k_ref, atol=1e-4, rtol=0)
        torch.testing.assert_close(v, v_ref, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="block-sparse"):
        sparse_prefill_kv(loaded, ids, AttentionSpec(), 32)
