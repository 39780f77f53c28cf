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
_MIXED = -1  # in `RequestProgress.uniform`: the cells of the layer differ


class RequestProgress:
    """Cell states of a C x L grid, with O(cells of a block) updates and O(1) readiness checks."""

    def __init__(self, num_chunks: int, num_layers: int) -> None:
        if num_chunks <= 0 or num_layers <= 0:
            raise ValueError(f"grid must be non-empty, got {num_chunks} x {num_layers}")
        self.num_chunks = num_chunks
        self.num_layers = num_layers
        self._cells = [[_MISSING] * num_layers for _ in range(num_chunks)]  # [C][L] CellState values (see `state`)
        self.computed_prefix = [0] * num_chunks  # k_c so far: layers [0, k) computed or computing
        self.present_per_layer = [0] * num_layers  # chunks present at each layer
        self.present_prefix = [0] * num_layers  # leading chunks 0..p-1 present at each layer
        self.query_layers_done = 0
        self.cells_present = 0
        # per layer: the state every cell of the layer is in, or _MIXED. Lets a whole-layer transfer (as
        # layer-major streaming issues) start and finish in O(1): no per-cell check, and its cells written
        # only when someone reads `state` (the layers in `_stale`). Kept only while every block spans all
        # chunks: None after the first one that does not (rows, part columns).
        self.uniform: list[int] | None = [_MISSING] * num_layers
        self._stale: set[int] = set()  # layers whose cells in `_cells` lag `uniform`

    @property
    def state(self) -> list[list[int]]:
        """[C][L] CellState values; read only (cells change through the methods below)."""
        if self._stale:
            self._write_stale()
        return self._cells

    def _write_stale(self) -> None:
        uniform = self.uniform
        assert uniform is not None  # layers go stale only while it is kept
        for layer in self._stale:
            shared = uniform[layer]
            for row in self._cells:
                row[layer] = shared
        self._stale.clear()

    # ---- checks ----

    def _require(self, block: CellBlock, allowed: int, what: str) -> None:
        if self._stale:
            self._write_stale()
        if block.chunk_hi > self.num_chunks or block.layer_hi > self.num_layers:
            raise ValueError(f"{what} {block} outside grid {self.num_chunks} x {self.num_layers}")
        lo, hi = block.layer_lo, block.layer_hi
        rows = self._cells[block.chunk_lo : block.chunk_hi]
        if hi - lo == 1:
            col = [row[lo] for row in rows]
            if col.count(allowed) != len(col):
                bad = next(i for i, s in enumerate(col) if s != allowed)
                raise ValueError(f"{what} {block}: cell ({block.chunk_lo + bad}, {lo}) is {CellState(col[bad]).name}")
            return
        for c, full in enumerate(rows, block.chunk_lo):
            row = full[lo:hi]
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
        if self._stale:
            self._write_stale()
        if block.chunk_hi > self.num_chunks or block.layer_hi > self.num_layers:
            raise ValueError(f"compute {block} outside grid {self.num_chunks} x {self.num_layers}")
        lo, hi, c_lo, c_hi = block.layer_lo, block.layer_hi, block.chunk_lo, block.chunk_hi
        for c, full in enumerate(self._cells[c_lo:c_hi], c_lo):
            row = full[lo:hi]
            if row.count(_MISSING) == hi - lo:
                continue  # the common case, in one scan
            if _FETCHING in row or _COMPUTING in row:
                bad = next(i for i, s in enumerate(row) if s in (_FETCHING, _COMPUTING))
                raise ValueError(f"compute {block}: cell ({c}, {lo + bad}) is {CellState(row[bad]).name}")
        for c in range(c_lo, c_hi):
            if self.computed_prefix[c] != lo:
                raise ValueError(
                    f"compute {block}: chunk {c} has {self.computed_prefix[c]} computed layers, "
                    f"so it can only continue at layer {self.computed_prefix[c]}"
                )
        if c_lo > 0 and min(self.present_prefix[lo:hi]) < c_lo:
            layer = next(x for x in range(lo, hi) if self.present_prefix[x] < c_lo)
            raise ValueError(f"compute {block}: layer {layer} of chunk {self.present_prefix[layer]} is not present")

    def check_fetch(self, block: CellBlock) -> None:
        self._require(block, _MISSING, "fetch")

    # ---- transitions ----

    def _set(self, block: CellBlock, state: int) -> None:
        if self._stale:
            self._write_stale()
        lo, hi = block.layer_lo, block.layer_hi
        rows = self._cells[block.chunk_lo : block.chunk_hi]
        if hi - lo == 1:
            for row in rows:
                row[lo] = state
        else:
            fill = [state] * (hi - lo)
            for row in rows:
                row[lo:hi] = fill
        if self.uniform is not None:
            self._touch(block, state)

    def _touch(self, block: CellBlock, state: int) -> None:
        """Every cell of `block` changed, to `state` (or _MIXED): update `uniform` (or stop keeping it)."""
        if self.uniform is None or block.chunk_lo != 0 or block.chunk_hi != self.num_chunks:
            self.uniform = None
        else:
            self.uniform[block.layer_lo : block.layer_hi] = [state] * (block.layer_hi - block.layer_lo)

    def start_fetch(self, block: CellBlock) -> None:
        lo = block.layer_lo
        if block.layer_hi - lo == 1 and block.chunk_hi <= self.num_chunks and lo < self.num_layers:
            uniform = self.uniform
            whole = block.chunk_lo == 0 and block.chunk_hi == self.num_chunks
            if whole and uniform is not None and uniform[lo] == _MISSING:
                uniform[lo] = _FETCHING  # a whole layer, all missing: its cells are written when read
                self._stale.add(lo)
                return
            if self._stale:
                self._write_stale()
            rows = self._cells[block.chunk_lo : block.chunk_hi]  # one layer (layer-major streaming): cell by cell
            # every cell of the layer known missing, or of the block checked one by one (else check_fetch says which)
            if (uniform is not None and uniform[lo] == _MISSING) or all(row[lo] == _MISSING for row in rows):
                for row in rows:
                    row[lo] = _FETCHING
                if uniform is not None:  # `_touch` written out
                    if len(rows) == self.num_chunks:
                        uniform[lo] = _FETCHING
                    else:
                        self.uniform = None
                return
        self.check_fetch(block)
        self._set(block, _FETCHING)

    def start_compute(self, block: CellBlock) -> None:
        self.check_compute(block)
        lo, hi = block.layer_lo, block.layer_hi
        for row in self._cells[block.chunk_lo : block.chunk_hi]:
            if _PRESENT in row[lo:hi]:  # recomputed cells stay present
                for layer in range(lo, hi):
                    if row[layer] == _MISSING:
                        row[layer] = _COMPUTING
            else:  # every cell missing (check_compute allowed only missing or present ones)
                row[lo:hi] = [_COMPUTING] * (hi - lo)
        for c in range(block.chunk_lo, block.chunk_hi):
            self.computed_prefix[c] = hi
        if self.uniform is not None:
            self._touch(block, _MIXED)

    def abort_fetch(self, block: CellBlock) -> None:
        """A cancelled or failed transfer: its cells are missing again."""
        self._require(block, _FETCHING, "abort")
        self._set(block, _MISSING)

    def finish(self, block: CellBlock) -> None:
        """A transfer or compute finished: its cells are present (recomputed ones stay present)."""
        if block.chunk_hi > self.num_chunks or block.layer_hi > self.num_layers:
            raise ValueError(f"finish {block} outside grid {self.num_chunks} x {self.num_layers}")
        lo, hi = block.layer_lo, block.layer_hi
        if hi - lo == 1:
            self._finish_one_layer(block)
            return
        if self._stale:
            self._write_stale()
        width = hi - lo
        if block.chunk_hi - block.chunk_lo == 1:  # one chunk's layers (a computed or whole-chunk block)
            row = self._cells[block.chunk_lo]
            seg = row[lo:hi]
            first = seg[0]
            if first in (_FETCHING, _COMPUTING) and seg.count(first) == width:  # all arrive now: one scan
                row[lo:hi] = [_PRESENT] * width
                self.present_per_layer[lo:hi] = [k + 1 for k in self.present_per_layer[lo:hi]]
                self.cells_present += width
                if self.uniform is not None:
                    self._touch(block, _PRESENT)
                self._advance_prefix(block)
                return
        rows = self._cells[block.chunk_lo : block.chunk_hi]
        fresh = []  # per row: every cell arrives now (all fetching, or all computing)
        for c, row in enumerate(rows, block.chunk_lo):  # check every cell before changing any
            seg = row[lo:hi]
            first = seg[0]
            if first in (_FETCHING, _COMPUTING) and seg.count(first) == width:
                fresh.append(True)  # the common case, in one scan
                continue
            if _MISSING in seg:
                raise ValueError(f"finish {block}: cell ({c}, {lo + seg.index(_MISSING)}) was never started")
            fresh.append(_PRESENT not in seg)
        per_layer, new_rows = self.present_per_layer, 0
        for row, all_new in zip(rows, fresh, strict=True):
            if all_new:
                row[lo:hi] = [_PRESENT] * width
                new_rows += 1
                continue
            for layer in range(lo, hi):
                if row[layer] != _PRESENT:
                    row[layer] = _PRESENT
                    per_layer[layer] += 1
                    self.cells_present += 1
        if new_rows:  # counted together: one pass over the layers
            per_layer[lo:hi] = [k + new_rows for k in per_layer[lo:hi]]
            self.cells_present += new_rows * width
        if self.uniform is not None:
            self._touch(block, _PRESENT)
        self._advance_prefix(block)

    def _advance_prefix(self, block: CellBlock) -> None:
        """Move `present_prefix` past `block`, whose cells are all present now, and any present after it."""
        lo, hi, c_lo, c_hi = block.layer_lo, block.layer_hi, block.chunk_lo, block.chunk_hi
        prefix, state, n = self.present_prefix, self._cells, self.num_chunks
        if hi - lo == 1:
            p = prefix[lo]
            if p >= c_lo:
                p = max(p, c_hi)
                while p < n and state[p][lo] == _PRESENT:
                    p += 1
                prefix[lo] = p
            return
        seg = prefix[lo:hi]
        if max(seg) < c_lo:
            return  # an earlier chunk is still missing at every layer: no prefix can move
        if seg.count(c_lo) == hi - lo and (c_hi == n or _PRESENT not in state[c_hi][lo:hi]):
            prefix[lo:hi] = [c_hi] * (hi - lo)  # the common case: every prefix stops right after the block
            return
        for layer in range(lo, hi):
            p = prefix[layer]
            if p < c_lo:
                continue  # an earlier chunk is still missing here: the prefix cannot move
            p = max(p, c_hi)
            while p < n and state[p][layer] == _PRESENT:
                p += 1
            prefix[layer] = p

    def _finish_one_layer(self, block: CellBlock) -> None:
        """`finish` for a block of one layer (a layer-major transfer): index cells directly."""
        layer, c_lo, c_hi = block.layer_lo, block.chunk_lo, block.chunk_hi
        uniform = self.uniform
        n = self.num_chunks
        if uniform is not None and c_lo == 0 and c_hi == n and uniform[layer] in (_FETCHING, _COMPUTING):
            uniform[layer] = _PRESENT  # a whole layer, all arriving now: its cells are written when read
            self._stale.add(layer)
            self.present_per_layer[layer] += n
            self.cells_present += n
            self.present_prefix[layer] = n
            return
        if self._stale:
            self._write_stale()
        rows = self._cells[c_lo:c_hi]
        present = 0
        shared = _MIXED if uniform is None else uniform[layer]
        if shared != _FETCHING and shared != _COMPUTING:  # else every cell started, none present yet
            for row in rows:  # check every cell before changing any (a loop: cheaper than a column list)
                s = row[layer]
                if s == _PRESENT:
                    present += 1
                elif s == _MISSING:
                    c = c_lo + [r[layer] for r in rows].index(_MISSING)
                    raise ValueError(f"finish {block}: cell ({c}, {layer}) was never started")
        for row in rows:
            row[layer] = _PRESENT
        if uniform is not None:  # `_touch` written out
            if len(rows) == self.num_chunks:
                uniform[layer] = _PRESENT
            else:
                self.uniform = None
        added = len(rows) - present
        self.present_per_layer[layer] += added
        self.cells_present += added
        prefix = self.present_prefix  # `_advance_prefix` for one layer
        p = prefix[layer]
        if p >= c_lo:
            p = max(p, c_hi)
            state, n = self._cells, self.num_chunks
            while p < n and state[p][layer] == _PRESENT:
                p += 1
            prefix[layer] = p

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
        state = self.state
        return [
            (c, layer)
            for c in range(self.num_chunks)
            for layer in range(self.num_layers)
            if state[c][layer] == CellState.MISSING
        ]

