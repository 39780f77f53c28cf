"""A request's context split into chunks, and blocks of (chunk x layer) cells: the scheduling unit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any


@dataclass(frozen=True)
class Request:
    """One query over a long context whose KV cache the server holds."""

    context_tokens: int  # tokens of the shared context (document)
    query_tokens: int = 64  # tokens of the user's question, always prefilled on the device
    chunk_tokens: int = 512  # tokens per chunk; the last chunk may be shorter
    request_id: str = "r0"

    def __post_init__(self) -> None:
        for name in ("context_tokens", "query_tokens", "chunk_tokens"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"Request.{name} must be positive, got {value}")

    @property
    def num_chunks(self) -> int:
        return -(-self.context_tokens // self.chunk_tokens)

    def chunk_start(self, chunk: int) -> int:
        """First token position of `chunk`."""
        return chunk * self.chunk_tokens

    def chunk_len(self, chunk: int) -> int:
        if not 0 <= chunk < self.num_chunks:
            raise ValueError(f"chunk {chunk} out of range [0, {self.num_chunks})")
        return min(self.chunk_tokens, self.context_tokens - chunk * self.chunk_tokens)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, order=True)
class CellBlock:
    """Cells (c, l) for chunks [chunk_lo, chunk_hi) x layers [layer_lo, layer_hi); half-open ranges."""

    chunk_lo: int
    chunk_hi: int
    layer_lo: int
    layer_hi: int
    if TYPE_CHECKING:  # set in __post_init__, not a field (so not in asdict, repr or comparisons)
        key: tuple[int, int, int, int] = field(init=False)

    def __post_init__(self) -> None:
        if not (0 <= self.chunk_lo < self.chunk_hi and 0 <= self.layer_lo < self.layer_hi):
            raise ValueError(f"empty or negative CellBlock {self}")
        # `key`, the four bounds as a tuple: tables looked up per simulated event key on it, since a tuple
        # hashes in C where `hash(block)` calls Python; and the block's own hash, computed once
        key = (self.chunk_lo, self.chunk_hi, self.layer_lo, self.layer_hi)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "_hash", hash(key))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]

    @classmethod
    def one(cls, chunk: int, layer_lo: int, layer_hi: int) -> CellBlock:
        """Layers [layer_lo, layer_hi) of a single chunk."""
        return cls(chunk, chunk + 1, layer_lo, layer_hi)

    @property
    def num_cells(self) -> int:
        return (self.chunk_hi - self.chunk_lo) * (self.layer_hi - self.layer_lo)

    def cells(self) -> list[tuple[int, int]]:
        return [
            (c, lyr) for c in range(self.chunk_lo, self.chunk_hi) for lyr in range(self.layer_lo, self.layer_hi)
        ]

    def to_list(self) -> list[int]:
        return [self.chunk_lo, self.chunk_hi, self.layer_lo, self.layer_hi]

    def split_after(self, cells: int) -> tuple[tuple[CellBlock, ...], tuple[CellBlock, ...]]:
        """(the first `cells` cells in chunk-major order, the rest), each as at most two blocks: whole
        chunks, and one chunk's first (or last) layers."""
        layers = self.layer_hi - self.layer_lo
        if not 0 <= cells <= self.num_cells:
            raise ValueError(f"{self}: cannot split after {cells} of {self.num_cells} cells")
        whole, rest = divmod(cells, layers)
        c = self.chunk_lo + whole
        head: list[CellBlock] = []
        tail: list[CellBlock] = []
        if whole:
            head.append(CellBlock(self.chunk_lo, c, self.layer_lo, self.layer_hi))
        if rest:
            head.append(CellBlock(c, c + 1, self.layer_lo, self.layer_lo + rest))
            tail.append(CellBlock(c, c + 1, self.layer_lo + rest, self.layer_hi))
            c += 1
        if c < self.chunk_hi:
            tail.append(CellBlock(c, self.chunk_hi, self.layer_lo, self.layer_hi))
        return tuple(head), tuple(tail)

    @classmethod
    def from_list(cls, values: list[int]) -> CellBlock:
        return cls(*values)

    def __str__(self) -> str:
        return f"c[{self.chunk_lo}:{self.chunk_hi}]xl[{self.layer_lo}:{self.layer_hi}]"
