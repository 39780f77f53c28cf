"""Which cells of a request are present, in flight or missing, and what the dependencies allow.

Both drivers (simulated and real) and the policies keep one of these. It enforces the rules of
DESIGN.md: a chunk is computed for a prefix of its layers (hidden states exist only for computed
layers), and computing layer l of chunk c needs layer l of every earlier chunk present.
"""

from __future__ import annotations

from enum import IntEnum

from sparkv.core.request import CellBlock


class CellState(IntEnum):
    MISSING = 0
    FETCHING = 1
    COMPUTING = 2
    PRESENT = 3


# Plain ints for the hot loops (an enum member look-up costs more than the comparison itself).
_MISSING, _FETCHING, _COMPUTING, _PRESENT = 0, 1, 2, 3


class RequestProgress:
    """Cell states of a C x L grid, with O(cells of a block) updates and O(1) readiness checks."""

    def __init__(self, num_chunks: int, num_layers: int) -> None:
        if num_chunks <= 0 or num_layers <= 0:
            raise ValueError(f"grid must be non-empty, got {num_chunks} x {num_layers}")
        self.num_chunks = num_chunks
        self.num_layers = num_layers
        self.state = [[_MISSING] * num_layers for _ in range(num_chunks)]  # [C][L] CellState values
        self.computed_prefix = [0] * num_chunks  # k_c so far: layers [0, k) computed or computing
        self.present_per_layer = [0] * num_layers  # chunks present at each layer
        self.present_prefix = [0] * num_layers  # leading chunks 0..p-1 present at each layer
        self.query_layers_done = 0
        self.cells_present = 0

    # ---- checks ----

    def _require(self, block: CellBlock, allowed: int, what: str) -> None:
        if block.chunk_hi > self.num_chunks or block.layer_hi > self.num_layers:
            raise ValueError(f"{what} {block} outside grid {self.num_chunks} x {self.num_layers}")
        lo, hi = block.layer_lo, block.layer_hi
        if hi - lo == 1:
            for c in range(block.chunk_lo, block.chunk_hi):
                if self.state[c][lo] != allowed:
                    raise ValueError(f"{what} {block}: cell ({c}, {lo}) is {CellState(self.state[c][lo]).name}")
            return
        for c in range(block.chunk_lo, block.chunk_hi):
            row = self.state[c][lo:hi]
            if row.count(allowed) != hi - lo:
                bad = next(i for i, s in enumerate(row) if s != allowed)
                raise ValueError(f"{what} {block}: cell ({c}, {lo + bad}) is {CellState(row[bad]).name}")

    def can_compute(self, block: CellBlock) -> bool:
        """True when `block` may start computing now."""
        try:
            self.check_compute(block)
        except ValueError:
            return False
        return True

    def check_compute(self, block: CellBlock) -> None:
        """Cells may be missing, or present (streamed earlier: recomputed to regain hidden states)."""
        if block.chunk_hi > self.num_chunks or block.layer_hi > self.num_layers:
            raise ValueError(f"compute {block} outside grid {self.num_chunks} x {self.num_layers}")
        for c in range(block.chunk_lo, block.chunk_hi):
            row = self.state[c]
            for layer in range(block.layer_lo, block.layer_hi):
                if row[layer] == _FETCHING or row[layer] == _COMPUTING:
                    raise ValueError(f"compute {block}: cell ({c}, {layer}) is {CellState(row[layer]).name}")
        for c in range(block.chunk_lo, block.chunk_hi):
            if self.computed_prefix[c] != block.layer_lo:
                raise ValueError(
                    f"compute {block}: chunk {c} has {self.computed_prefix[c]} computed layers, "
                    f"so it can only continue at layer {self.computed_prefix[c]}"
                )
        for layer in range(block.layer_lo, block.layer_hi):
            if self.present_prefix[layer] < block.chunk_lo:
                raise ValueError(
                    f"compute {block}: layer {layer} of chunk {self.present_prefix[layer]} is not present"
                )

    def check_fetch(self, block: CellBlock) -> None:
        self._require(block, _MISSING, "fetch")

    # ---- transitions ----

    def _set(self, block: CellBlock, state: int) -> None:
        lo, hi = block.layer_lo, block.layer_hi
        if hi - lo == 1:
            for c in range(block.chunk_lo, block.chunk_hi):
                self.state[c][lo] = state
            return
        fill = [state] * (hi - lo)
        for c in range(block.chunk_lo, block.chunk_hi):
            self.state[c][lo:hi] = fill

    def start_fetch(self, block: CellBlock) -> None:
        self.check_fetch(block)
        self._set(block, _FETCHING)

    def start_compute(self, block: CellBlock) -> None:
        self.check_compute(block)
        for c in range(block.chunk_lo, block.chunk_hi):
            row = self.state[c]
            for layer in range(block.layer_lo, block.layer_hi):
                if row[layer] == _MISSING:
                    row[layer] = _COMPUTING
        for c in range(block.chunk_lo, block.chunk_hi):
            self.computed_prefix[c] = block.layer_hi

    def abort_fetch(self, block: CellBlock) -> None:
        """A cancelled or failed transfer: its cells are missing again."""
        self._require(block, _FETCHING, "abort")
        self._set(block, _MISSING)

    def finish(self, block: CellBlock) -> None:
        """A transfer or compute finished: its cells are present (recomputed ones stay present)."""
        lo, hi = block.layer_lo, block.layer_hi
        per_layer = self.present_per_layer
        if hi - lo == 1:
            self._finish_one_layer(block)
            return
        for c in range(block.chunk_lo, block.chunk_hi):
            row = self.state[c]
            if _MISSING in row[lo:hi]:
                raise ValueError(f"finish {block}: cell ({c}, {lo + row[lo:hi].index(_MISSING)}) was never started")
            if row[lo:hi].count(_PRESENT) == 0:  # the common case: every cell newly arrived
                row[lo:hi] = [_PRESENT] * (hi - lo)
                for layer in range(lo, hi):
                    per_layer[layer] += 1
                self.cells_present += hi - lo
                continue
            for layer in range(lo, hi):
                if row[layer] != _PRESENT:
                    row[layer] = _PRESENT
                    per_layer[layer] += 1
                    self.cells_present += 1
        state, n = self.state, self.num_chunks
        for layer in range(lo, hi):
            p = self.present_prefix[layer]
            if p < block.chunk_lo:
                continue  # an earlier chunk is still missing here: the prefix cannot move
            while p < n and state[p][layer] == _PRESENT:
                p += 1
            self.present_prefix[layer] = p

    def _finish_one_layer(self, block: CellBlock) -> None:
        """`finish` for a block of one layer (a layer-major transfer): index cells directly."""
        layer, state = block.layer_lo, self.state
        added = 0
        for c in range(block.chunk_lo, block.chunk_hi):
            row = state[c]
            s = row[layer]
            if s == _MISSING:
                raise ValueError(f"finish {block}: cell ({c}, {layer}) was never started")
            if s != _PRESENT:
                row[layer] = _PRESENT
                added += 1
        self.present_per_layer[layer] += added
        self.cells_present += added
        p, n = self.present_prefix[layer], self.num_chunks
        if p >= block.chunk_lo:
            while p < n and state[p][layer] == _PRESENT:
                p += 1
            self.present_prefix[layer] = p

    # ---- queries ----

    def layer_complete(self, layer: int) -> bool:
        return self.present_per_layer[layer] == self.num_chunks

    def query_layer_ready(self) -> bool:
        """The next query layer can run: every cell of that layer is present."""
        q = self.query_layers_done
        return q < self.num_layers and self.present_per_layer[q] == self.num_chunks

    def all_present(self) -> bool:
        return self.cells_present == self.num_chunks * self.num_layers

    def missing_cells(self) -> list[tuple[int, int]]:
        return [
            (c, layer)
            for c in range(self.num_chunks)
            for layer in range(self.num_layers)
            if self.state[c][layer] == CellState.MISSING
        ]
