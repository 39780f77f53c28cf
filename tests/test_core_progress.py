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
    """Random valid fetches, computes, aborts and finishes: every count stays exact."""
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


class _CellByCell:
    """The grid's rules written cell by cell, as DESIGN.md states them: the reference the masks must match."""

    def __init__(self, num_chunks: int, num_layers: int) -> None:
        self.cells = [[0] * num_layers for _ in range(num_chunks)]
        self.computed_prefix = [0] * num_chunks

    def _cells(self, block: CellBlock) -> list[tuple[int, int]]:
        if block.chunk_hi > len(self.cells) or block.layer_hi > len(self.cells[0]):
            raise ValueError("outside grid")
        return block.cells()

    def _move(self, block: CellBlock, before: CellState, after: CellState) -> None:
        """Every cell of `block` must be `before`; all become `after`."""
        cells = self._cells(block)
        if any(self.cells[c][x] != before for c, x in cells):
            raise ValueError(f"not {before.name}")
        for c, x in cells:
            self.cells[c][x] = after

    def start_fetch(self, block: CellBlock) -> None:
        self._move(block, CellState.MISSING, CellState.FETCHING)

    def start_compute(self, block: CellBlock) -> None:
        cells = self._cells(block)
        if any(self.cells[c][x] in (CellState.FETCHING, CellState.COMPUTING) for c, x in cells):
            raise ValueError("in flight")
        if any(self.computed_prefix[c] != block.layer_lo for c in range(block.chunk_lo, block.chunk_hi)):
            raise ValueError("not the computed prefix")
        earlier = [(c, x) for c in range(block.chunk_lo) for x in range(block.layer_lo, block.layer_hi)]
        if any(self.cells[c][x] != CellState.PRESENT for c, x in earlier):
            raise ValueError("earlier chunk not present")
        for c, x in cells:
            if self.cells[c][x] == CellState.MISSING:
                self.cells[c][x] = CellState.COMPUTING
        for c in range(block.chunk_lo, block.chunk_hi):
            self.computed_prefix[c] = block.layer_hi

    def abort_fetch(self, block: CellBlock) -> None:
        self._move(block, CellState.FETCHING, CellState.MISSING)

    def finish(self, block: CellBlock) -> None:
        cells = self._cells(block)
        if any(self.cells[c][x] == CellState.MISSING for c, x in cells):
            raise ValueError("never started")
        for c, x in cells:
            self.cells[c][x] = CellState.PRESENT


def _random_block(rng: random.Random, shape: tuple[int, int]) -> CellBlock:
    """Whole layers, whole chunks, one chunk's layers, any rectangle, sometimes past the grid's edge."""
    chunks, layers = shape[0] + (rng.random() < 0.05), shape[1] + (rng.random() < 0.05)
    kind = rng.random()
    if kind < 0.3:
        layer = rng.randrange(layers)
        return CellBlock(0, chunks, layer, layer + 1)
    if kind < 0.5:
        c = rng.randrange(chunks)
        return CellBlock(c, c + 1, 0, layers)
    c0, l0 = rng.randrange(chunks), rng.randrange(layers)
    return CellBlock(c0, rng.randint(c0 + 1, chunks), l0, rng.randint(l0 + 1, layers))


@pytest.mark.parametrize("seed", range(5))
def test_masks_match_cell_by_cell_rules(seed: int) -> None:
    """Random operations of every kind on random blocks, valid or not: the grid accepts and rejects exactly
    what the cell-by-cell rules do, and its states, counts and prefixes match them after every step."""
    rng = random.Random(seed)
    for _ in range(40):
        shape = rng.randint(1, 5), rng.randint(1, 6)
        p, ref = RequestProgress(*shape), _CellByCell(*shape)
        for _ in range(60):
            block = _random_block(rng, shape)
            op = rng.choice(("start_fetch", "start_compute", "abort_fetch", "finish"))
            outcomes = []
            for grid in (p, ref):
                try:
                    getattr(grid, op)(block)
                    outcomes.append("ok")
                except ValueError:
                    outcomes.append("rejected")
            assert outcomes[0] == outcomes[1], (op, block)
            assert p.state == ref.cells and p.computed_prefix == ref.computed_prefix
            assert _counts_from_cells(p) == (p.present_per_layer, p.present_prefix, p.cells_present)
            assert p.missing_cells() == [(c, x) for c, row in enumerate(ref.cells) for x, s in enumerate(row) if s == 0]
