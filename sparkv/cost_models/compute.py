"""Compute cost of prefill on a device: fitted or tabulated from measurements, or analytic (roofline).

Both answer one question: seconds for one decoder layer over `new_tokens` tokens that attend to
`past_tokens` earlier ones. Chunk and query costs are sums of these, plus `launch_s` per command.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from sparkv.core.model import ModelSpec


class ComputeModel(Protocol):
    launch_s: float  # fixed seconds per compute command

    def layer_s(self, spec: ModelSpec, new_tokens: int, past_tokens: int) -> float: ...

    def first_token_s(self, spec: ModelSpec) -> float: ...

    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class FittedCompute:
    """Per layer: t = fixed + per_token*n + per_attn*n*(past + (n+1)/2) + per_past*past + per_sq*n^2.

    n new tokens attend to `past` earlier ones. The first three terms are the classic form (weights,
    causal attention); `per_past` (reading and expanding the cached K/V of the past, independent of n)
    and `per_sq` (attention kernels that compute the full n x n block under a causal mask) are kept
    only when held-out data demand them (`sparkv.cost_models.fit`). Valid for one model.
    """

    model: str  # the model it was measured with
    fixed_s: float
    per_token_s: float
    per_attn_s: float
    launch_s: float = 0.0  # fixed seconds per compute command (embedding, bookkeeping)
    lm_head_s: float = 0.0  # final norm + LM head + sampling for one position
    kind: str = "fitted"
    per_past_s: float = 0.0
    per_sq_s: float = 0.0

    def layer_s(self, spec: ModelSpec, new_tokens: int, past_tokens: int) -> float:
        return self.seconds(new_tokens, past_tokens)

    def seconds(self, new_tokens: float, past_tokens: float) -> float:
        """One layer's seconds; a measured model needs no spec (it is valid for one model)."""
        n = new_tokens
        attended = n * (past_tokens + (n + 1) / 2)
        return (
            self.fixed_s
            + self.per_token_s * n
            + self.per_attn_s * attended
            + self.per_past_s * past_tokens
            + self.per_sq_s * n * n
        )

    def first_token_s(self, spec: ModelSpec) -> float:
        return self.lm_head_s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RooflineCompute:
    """max(FLOPs / (peak x efficiency), bytes moved / memory bandwidth) per layer; any model."""

    peak_flops: float  # FLOP/s at the profile's dtype
    mem_bw_bps: float  # memory bandwidth, bytes/s
    flops_efficiency: float = 0.5  # achieved / peak for prefill GEMMs
    launch_s: float = 0.0
    per_layer_s: float = 0.0  # kernel launch and framework overhead per layer
    kind: str = "roofline"

    def layer_s(self, spec: ModelSpec, new_tokens: int, past_tokens: int) -> float:
        t_compute, t_memory = self.layer_times(spec, new_tokens, past_tokens)
        return max(t_compute, t_memory) + self.per_layer_s

    def layer_times(self, spec: ModelSpec, new_tokens: int, past_tokens: int) -> tuple[float, float]:
        """(seconds if compute-bound, seconds if memory-bound) for one layer, overhead excluded."""
        flops = spec.layer_flops(new_tokens, past_tokens)
        weights = spec.layer_params * spec.dtype_bytes
        kv_read = (past_tokens + new_tokens) * spec.kv_bytes_per_token_layer
        return flops / (self.peak_flops * self.flops_efficiency), (weights + kv_read) / self.mem_bw_bps

    def bound(self, spec: ModelSpec, new_tokens: int, past_tokens: int) -> str:
        """"compute" or "memory": which roof limits this layer."""
        t_compute, t_memory = self.layer_times(spec, new_tokens, past_tokens)
        return "compute" if t_compute >= t_memory else "memory"

    def first_token_s(self, spec: ModelSpec) -> float:
        flops = 2.0 * spec.hidden_size * spec.vocab_size
        weights = spec.hidden_size * spec.vocab_size * spec.dtype_bytes
        return max(flops / (self.peak_flops * self.flops_efficiency), weights / self.mem_bw_bps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class TableCompute:
    """Measured per-layer times at the profiled chunk sizes, interpolated between them.

    At each grid size n_i: t(n_i, past) = base_s[i] + per_past_s[i] * past (a line per size, fitted to
    that size's measurements). Between two grid sizes the two lines are blended linearly in n. Outside
    the grid the `fallback` form is used, scaled to agree with the table at the nearest grid size. A
    table captures what one closed form cannot: matrix-kernel efficiency that changes from size to size.
    """

    model: str
    sizes: tuple[int, ...]  # grid chunk sizes, ascending
    base_s: tuple[float, ...]  # seconds per layer at past 0, per size
    per_past_s: tuple[float, ...]  # seconds per layer per past token, per size
    fallback: FittedCompute  # outside the grid
    launch_s: float = 0.0
    lm_head_s: float = 0.0
    kind: str = "table"

    def __post_init__(self) -> None:
        n = len(self.sizes)
        if n == 0 or len(self.base_s) != n or len(self.per_past_s) != n or list(self.sizes) != sorted(set(self.sizes)):
            raise ValueError(
                f"bad compute table: sizes {self.sizes}, {len(self.base_s)} bases, {len(self.per_past_s)} slopes"
            )

    def _at(self, i: int, past: float) -> float:
        """The line of grid size i at `past`."""
        return self.base_s[i] + self.per_past_s[i] * past

    def layer_s(self, spec: ModelSpec, new_tokens: int, past_tokens: int) -> float:
        return self.seconds(new_tokens, past_tokens)

    def seconds(self, new_tokens: float, past_tokens: float) -> float:
        """One layer's seconds; a measured model needs no spec (it is valid for one model)."""
        sizes, n = self.sizes, new_tokens
        if n < sizes[0] or n > sizes[-1]:
            edge = 0 if n < sizes[0] else len(sizes) - 1
            ref = self.fallback.seconds(sizes[edge], past_tokens)
            return self.fallback.seconds(n, past_tokens) * (self._at(edge, past_tokens) / ref if ref > 0 else 1.0)
        hi = bisect_left(sizes, n)
        if sizes[hi] == n:
            return self._at(hi, past_tokens)
        lo = hi - 1
        w = (n - sizes[lo]) / (sizes[hi] - sizes[lo])
        return (1.0 - w) * self._at(lo, past_tokens) + w * self._at(hi, past_tokens)

    def first_token_s(self, spec: ModelSpec) -> float:
        return self.lm_head_s

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["sizes"], out["base_s"], out["per_past_s"] = list(self.sizes), list(self.base_s), list(self.per_past_s)
        return out


MeasuredCompute = FittedCompute | TableCompute


def compute_model_from_dict(data: dict[str, Any]) -> FittedCompute | TableCompute | RooflineCompute:
    kind = data.get("kind")
    if kind == "fitted":
        return FittedCompute(**data)
    if kind == "table":
        d = dict(data)
        d["fallback"] = FittedCompute(**d["fallback"])
        for key in ("sizes", "base_s", "per_past_s"):
            d[key] = tuple(d[key])
        return TableCompute(**d)
    if kind == "roofline":
        return RooflineCompute(**data)
    raise ValueError(f"unknown compute model kind {kind!r} (expected 'fitted', 'table' or 'roofline')")
