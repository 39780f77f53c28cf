"""Which cells of a request are present, in flight or missing, and what the dependencies allow.

Both drivers (simulated and real) and the policies keep one of these. It enforces the rules of
DESIGN.md: a chunk is computed for a prefix of its layers (hidden states exist only for computed
layers), and computing layer l of chunk c needs layer l of every earlier chunk present.

The grid is kept as three bitmasks (fetching, computing, present; missing is none of them), cell
(c, l) at bit c * L + l. A block's cells are one mask, built once per block and grid shape, so
checking and changing a block is a few integer operations whatever its shape: a whole layer (as
layer-major streaming fetches it) costs the same as a whole chunk (as local prefill computes it).
A simulated request makes hundreds of these calls, in both the driver's copy and the policy's.
"""

from __future__ import annotations

from enum import IntEnum

from sparkv.core.request import CellBlock


class CellState(IntEnum):
    MISSING = 0
    FETCHING = 1
    COMPUTING = 2
    PRESENT = 3


_Key = tuple[int, int, int, int]  # `CellBlock.key`
_MASKS: dict[tuple[int, int], dict[_Key, int]] = {}  # per grid shape: block key -> its cells' mask
_EARLIER: dict[tuple[int, int], dict[_Key, int]] = {}  # per grid shape: block key -> its layers of earlier chunks
_COLUMNS: dict[tuple[int, int], list[int]] = {}  # per grid shape: layer -> the mask of its cells


def _block_mask(num_chunks: int, num_layers: int, block: CellBlock) -> int:
    row = (1 << block.layer_hi) - (1 << block.layer_lo)  # the block's layers within one chunk
    mask = 0
    for c in range(block.chunk_lo, block.chunk_hi):
        mask |= row << (c * num_layers)
    return mask


def _lowest_cell(cells: int, num_layers: int) -> tuple[int, int]:
    """(chunk, layer) of the lowest set bit: the first of `cells` in row-major order."""
    return divmod((cells & -cells).bit_length() - 1, num_layers)


class RequestProgress:
    """Cell states of a C x L grid, with O(1) block checks and updates and O(1) readiness checks."""

    def __init__(self, num_chunks: int, num_layers: int) -> None:
        if num_chunks <= 0 or num_layers <= 0:
            raise ValueError(f"grid must be non-empty, got {num_chunks} x {num_layers}")
        self.num_chunks = num_chunks
        self.num_layers = num_layers
        shape = (num_chunks, num_layers)
        if shape not in _COLUMNS:
            column = sum(1 << (c * num_layers) for c in range(num_chunks))  # layer 0 of every chunk
            _COLUMNS[shape] = [column << layer for layer in range(num_layers)]
            _MASKS[shape] = {}
            _EARLIER[shape] = {}
        self._masks = _MASKS[shape]  # shared by every grid of this shape (blocks are immutable)
        self._earlier = _EARLIER[shape]
        self._columns = _COLUMNS[shape]
        self._all = (1 << (num_chunks * num_layers)) - 1
        self._fetching = self._computing = self._present = 0
        self._started = 0  # fetching | computing | present, kept: a block's check is then one AND
        self.computed_prefix = [0] * num_chunks  # k_c so far: layers [0, k) computed or computing
        self.query_layers_done = 0
        self._view: list[list[int]] | None = None  # `state`, until the next change

    def _mask(self, block: CellBlock, what: str) -> int:
        """The mask of `block`'s cells; a ValueError naming `what` if it leaves the grid."""
        mask = self._masks.get(block.key)
        if mask is None:  # cached only once checked: a cached block lies inside the grid
            if block.chunk_hi > self.num_chunks or block.layer_hi > self.num_layers:
                raise ValueError(f"{what} {block} outside grid {self.num_chunks} x {self.num_layers}")
            mask = self._masks[block.key] = _block_mask(self.num_chunks, self.num_layers, block)
        return mask

    # ---- views (built on demand: the hot paths never need them) ----

    def cell(self, chunk: int, layer: int) -> CellState:
        bit = 1 << (chunk * self.num_layers + layer)
        if self._present & bit:
            return CellState.PRESENT
        if self._computing & bit:
            return CellState.COMPUTING
        return CellState.FETCHING if self._fetching & bit else CellState.MISSING

    @property
    def state(self) -> list[list[int]]:
        """[C][L] CellState values; read only (cells change through the methods below)."""
        if self._view is None:
            fetching, computing, present = self._fetching, self._computing, self._present
            cells = [3 if present >> i & 1 else 2 if computing >> i & 1 else fetching >> i & 1
                     for i in range(self.num_chunks * self.num_layers)]  # fmt: skip
            n = self.num_layers
            self._view = [cells[c * n : (c + 1) * n] for c in range(self.num_chunks)]
        return self._view

    @property
    def present_per_layer(self) -> list[int]:
        """Chunks present at each layer."""
        present = self._present
        return [(present & column).bit_count() for column in self._columns]

    @property
    def present_prefix(self) -> list[int]:
        """Leading chunks 0..p-1 present at each layer."""
        out = []
        for layer in range(self.num_layers):
            p = 0
            while p < self.num_chunks and self._present >> (p * self.num_layers + layer) & 1:
                p += 1
            out.append(p)
        return out

    @property
    def cells_present(self) -> int:
        return self._present.bit_count()

    # ---- checks ----

    def _state_error(self, what: str, block: CellBlock, cells: int) -> ValueError:
        c, layer = _lowest_cell(cells, self.num_layers)
        return ValueError(f"{what} {block}: cell ({c}, {layer}) is {self.cell(c, layer).name}")

    def can_compute(self, block: CellBlock) -> bool:
        """True when `block` may start computing now."""
        try:
            self.check_compute(block)
        except ValueError:
            return False
        return True

    def check_compute(self, block: CellBlock) -> None:
        """Cells may be missing, or present (streamed earlier: recomputed to regain hidden states)."""
        mask = self._masks.get(block.key) or self._mask(block, "compute")
        busy = (self._fetching | self._computing) & mask
        if busy:
            raise self._state_error("compute", block, busy)
        lo, c_lo = block.layer_lo, block.chunk_lo
        prefix = self.computed_prefix
        for c in range(c_lo, block.chunk_hi):
            if prefix[c] != lo:
                raise ValueError(
                    f"compute {block}: chunk {c} has {prefix[c]} computed layers, "
                    f"so it can only continue at layer {prefix[c]}"
                )
        if c_lo > 0:  # layers [lo, hi) of every earlier chunk present
            earlier = self._earlier.get(block.key)
            if earlier is None:  # the block's layers in one chunk, times a bit at each earlier chunk
                first_chunks = self._columns[0] & ((1 << (c_lo * self.num_layers)) - 1)
                earlier = self._earlier[block.key] = ((1 << block.layer_hi) - (1 << lo)) * first_chunks
            if earlier & ~self._present:
                prefix = self.present_prefix
                layer = next(x for x in range(lo, block.layer_hi) if prefix[x] < c_lo)
                raise ValueError(f"compute {block}: layer {layer} of chunk {prefix[layer]} is not present")

    def check_fetch(self, block: CellBlock) -> None:
        started = self._started & self._mask(block, "fetch")
        if started:
            raise self._state_error("fetch", block, started)

    # ---- transitions ----
    # (each looks its block's mask up itself: `_mask` is called only for a block not seen yet)

    def start_fetch(self, block: CellBlock) -> None:
        mask = self._masks.get(block.key) or self._mask(block, "fetch")
        if self._started & mask:
            self.check_fetch(block)  # says which cell
        self._started |= mask
        self._fetching |= mask
        self._view = None

    def start_compute(self, block: CellBlock) -> None:
        self.check_compute(block)
        mask = self._masks[block.key]
        new = mask & ~self._present  # recomputed cells stay present
        self._computing |= new
        self._started |= new
        self._view = None
        hi = block.layer_hi
        for c in range(block.chunk_lo, block.chunk_hi):
            self.computed_prefix[c] = hi

    def abort_fetch(self, block: CellBlock) -> None:
        """A cancelled or failed transfer: its cells are missing again."""
        mask = self._mask(block, "abort")
        not_fetching = mask & ~self._fetching
        if not_fetching:
            raise self._state_error("abort", block, not_fetching)
        self._fetching ^= mask
        self._started ^= mask
        self._view = None

    def finish(self, block: CellBlock) -> None:
        """A transfer or compute finished: its cells are present (recomputed ones stay present)."""
        mask = self._masks.get(block.key) or self._mask(block, "finish")
        if self._started & mask != mask:
            c, layer = _lowest_cell(mask & ~self._started, self.num_layers)
            raise ValueError(f"finish {block}: cell ({c}, {layer}) was never started")
        self._present |= mask
        if self._fetching:  # (0 on a computing-only request)
            self._fetching &= ~mask
        if self._computing:  # (0 on a streaming-only one)
            self._computing &= ~mask
        self._view = None

    # ---- queries ----

    def layer_complete(self, layer: int) -> bool:
        column = self._columns[layer]
        return self._present & column == column

    def query_layer_ready(self) -> bool:
        """The next query layer can run: every cell of that layer is present."""
        q = self.query_layers_done
        if q >= self.num_layers:
            return False
        column = self._columns[q]
        return self._present & column == column

    def all_present(self) -> bool:
        return self._present == self._all

    def missing_cells(self) -> list[tuple[int, int]]:
        started, n = self._started, self.num_layers
        return [divmod(i, n) for i in range(self.num_chunks * n) if not started >> i & 1]
