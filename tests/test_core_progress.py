"""Dependency rules of the (chunk x layer) grid."""

from __future__ import annotations

import random

import pytest

from sparkv.core.progress import CellState, RequestProgress
from sparkv.core.request import CellBlock


def test_compute_needs_prefix_and_earlier_chunks() -> None:
    p = RequestProgress(3, 4)
    with pytest.raises(ValueError, match="continue at layer 0"):
        p.check_compute(CellBlock.one(0, 1, 2))
    with pytest.raises(ValueError, match="not present"):
        p.check_compute(CellBlock.one(1, 0, 1))  # chunk 0 layer 0 missing
    p.start_compute(CellBlock.one(0, 0, 2))
    with pytest.raises(ValueError, match="not present"):
        p.check_compute(CellBlock.one(1, 0, 1))  # chunk 0 computing, not present yet
    p.finish(CellBlock.one(0, 0, 2))
    p.check_compute(CellBlock.one(1, 0, 2))
    with pytest.raises(ValueError, match="not present"):
        p.check_compute(CellBlock.one(1, 0, 3))  # layer 2 of chunk 0 missing


def test_streamed_cells_unblock_later_compute() -> None:
    p = RequestProgress(2, 2)
    p.start_fetch(CellBlock(0, 1, 0, 2))
    p.finish(CellBlock(0, 1, 0, 2))
    assert p.can_compute(CellBlock.one(1, 0, 2))
    assert p.present_prefix == [1, 1]


def test_multi_chunk_compute_block() -> None:
    p = RequestProgress(3, 2)
    p.start_compute(CellBlock(0, 2, 0, 2))
    p.finish(CellBlock(0, 2, 0, 2))
    assert p.present_per_layer == [2, 2] and p.computed_prefix == [2, 2, 0]


def test_recompute_of_streamed_cells_keeps_counts() -> None:
    p = RequestProgress(1, 2)
    p.start_fetch(CellBlock.one(0, 0, 1))
    p.finish(CellBlock.one(0, 0, 1))
    p.start_compute(CellBlock.one(0, 0, 2))  # recompute layer 0 to regain hidden states
    assert p.state[0] == [CellState.PRESENT, CellState.COMPUTING]
    p.finish(CellBlock.one(0, 0, 2))
    assert p.cells_present == 2 and p.all_present()


def test_cannot_fetch_twice_or_abort_what_is_not_in_flight() -> None:
    p = RequestProgress(2, 2)
    p.start_fetch(CellBlock(0, 2, 1, 2))
    with pytest.raises(ValueError, match="FETCHING"):
        p.start_fetch(CellBlock(1, 2, 1, 2))
    p.abort_fetch(CellBlock(0, 2, 1, 2))
    with pytest.raises(ValueError, match="MISSING"):
        p.abort_fetch(CellBlock(0, 2, 1, 2))
    with pytest.raises(ValueError, match="outside grid"):
        p.check_fetch(CellBlock(0, 3, 0, 1))


def test_query_layer_ready_follows_layers() -> None:
    p = RequestProgress(2, 2)
    assert not p.query_layer_ready()
    p.start_fetch(CellBlock(0, 2, 0, 1))
    p.finish(CellBlock(0, 2, 0, 1))
    assert p.query_layer_ready() and p.layer_complete(0) and not p.layer_complete(1)
    p.query_layers_done = 1
    assert not p.query_layer_ready()


def test_empty_blocks_are_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        CellBlock(1, 1, 0, 1)


def test_a_bad_finish_changes_nothing() -> None:
    p = RequestProgress(3, 2)
    p.start_fetch(CellBlock(0, 2, 0, 1))
    before = ([row[:] for row in p.state], p.present_per_layer[:], p.present_prefix[:], p.cells_present)
    with pytest.raises(ValueError, match=r"cell \(2, 0\) was never started"):
        p.finish(CellBlock(0, 3, 0, 1))
    with pytest.raises(ValueError, match="outside grid"):
        p.finish(CellBlock(0, 4, 0, 1))
    assert ([row[:] for row in p.state], p.present_per_layer, p.present_prefix, p.cells_present) == before


def _counts_from_cells(p: RequestProgress) -> tuple[list[int], list[int], int]:
    """present_per_layer, present_prefix and cells_present recomputed from the cell states."""
    present = [[s == CellState.PRESENT for s in row] for row in p.state]
    per_layer = [sum(row[layer] for row in present) for layer in range(p.num_layers)]
    prefix = []
    for layer in range(p.num_layers):
        c = 0
        while c < p.num_chunks and present[c][layer]:
            c += 1
        prefix.append(c)
    return per_layer, prefix, sum(per_layer)


@pytest.mark.parametrize("seed", range(5))
def test_counts_stay_consistent_with_cells(seed: int) -> None:
    """Random valid fetches, computes, aborts and finishes: the fast paths keep every count exact."""
    rng = random.Random(seed)
    for _ in range(40):
        p = RequestProgress(rng.randint(1, 6), rng.randint(1, 6))
        in_flight: list[tuple[str, CellBlock]] = []
        for _ in range(80):
            if in_flight and rng.random() < 0.5:
                kind, block = in_flight.pop(rng.randrange(len(in_flight)))
                if kind == "fetch" and rng.random() < 0.3:
                    p.abort_fetch(block)
                else:
                    p.finish(block)
            elif rng.random() < 0.5:
                c = rng.randrange(p.num_chunks)
                k = p.computed_prefix[c]
                if k < p.num_layers:
                    block = CellBlock.one(c, k, rng.randint(k + 1, p.num_layers))
                    if p.can_compute(block):
                        p.start_compute(block)
                        in_flight.append(("compute", block))
            else:
                c0 = rng.randrange(p.num_chunks)
                l0 = rng.randrange(p.num_layers)
                block = CellBlock(c0, rng.randint(c0 + 1, p.num_chunks), l0, rng.randint(l0 + 1, p.num_layers))
                try:
                    p.check_fetch(block)
                except ValueError:
                    continue
                p.start_fetch(block)
                in_flight.append(("fetch", block))
            assert _counts_from_cells(p) == (p.present_per_layer, p.present_prefix, p.cells_present)
            for layer, shared in enumerate(p.uniform or []):  # a layer said to be uniform is
                assert shared == -1 or all(row[layer] == shared for row in p.state)


@pytest.mark.parametrize("seed", range(5))
def test_whole_layer_fast_paths_match_cell_by_cell(seed: int) -> None:
    """Mostly whole-layer transfers (whose cells are written only when read), some other blocks: the grid
    and counts match a twin that updates every cell as it goes."""
    rng = random.Random(seed)
    for _ in range(30):
        shape = rng.randint(1, 5), rng.randint(1, 6)
        p, ref = RequestProgress(*shape), RequestProgress(*shape)
        ref.uniform = None  # the twin never takes the whole-layer paths
        in_flight: list[tuple[str, CellBlock]] = []
        for _ in range(60):
            roll = rng.random()
            if in_flight and roll < 0.45:
                kind, block = in_flight.pop(rng.randrange(len(in_flight)))
                abort = kind == "fetch" and rng.random() < 0.2
                for q in (p, ref):
                    q.abort_fetch(block) if abort else q.finish(block)
                continue
            if roll < 0.9:  # a whole layer, as layer-major streaming fetches it
                layer = rng.randrange(ref.num_layers)
                block = CellBlock(0, ref.num_chunks, layer, layer + 1)
            elif roll < 0.95:
                c0, layer = rng.randrange(ref.num_chunks), rng.randrange(ref.num_layers)
                block = CellBlock(c0, rng.randint(c0 + 1, ref.num_chunks), layer, layer + 1)
            else:
                c = rng.randrange(ref.num_chunks)
                k = ref.computed_prefix[c]
                block = CellBlock.one(c, k, rng.randint(k + 1, ref.num_layers)) if k < ref.num_layers else None
                if block is not None and ref.can_compute(block):
                    p.start_compute(block)
                    ref.start_compute(block)
                    in_flight.append(("compute", block))
                continue
            try:
                ref.check_fetch(block)
            except ValueError:
                continue
            p.start_fetch(block)
            ref.start_fetch(block)
            in_flight.append(("fetch", block))
            if rng.random() < 0.1:  # read now and then, so writes are caught up mid-run too
                assert p.state == ref.state
        assert (p.state, p.present_per_layer, p.present_prefix, p.cells_present, p.computed_prefix) == (
            ref.state, ref.present_per_layer, ref.present_prefix, ref.cells_present, ref.computed_prefix
        )
