"""Compute cost of prefill on a device: fitted from measurements, or analytic (roofline).

Both answer one question: seconds for one decoder layer over `new_tokens` tokens that attend to
`past_tokens` earlier ones. Chunk and query costs are sums of these.
"""

from __future__ import annotations

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
    """t = fixed + per_token * n + per_attn * n * (past + (n + 1) / 2), per layer; valid for one model."""

    model: str  # the model it was measured with
    fixed_s: float
    per_token_s: float
    per_attn_s: float
    launch_s: float = 0.0
    lm_head_s: float = 0.0  # final norm + LM head + sampling for one position
    kind: str = "fitted"

    def layer_s(self, spec: ModelSpec, new_tokens: int, past_tokens: int) -> float:
        attended = new_tokens * (past_tokens + (new_tokens + 1) / 2)
        return self.fixed_s + self.per_token_s * new_tokens + self.per_attn_s * attended

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
        flops = spec.layer_flops(new_tokens, past_tokens)
        weights = spec.layer_params * spec.dtype_bytes
        kv_read = (past_tokens + new_tokens) * spec.kv_bytes_per_token_layer
        t_compute = flops / (self.peak_flops * self.flops_efficiency)
        t_memory = (weights + kv_read) / self.mem_bw_bps
        return max(t_compute, t_memory) + self.per_layer_s

    def first_token_s(self, spec: ModelSpec) -> float:
        flops = 2.0 * spec.hidden_size * spec.vocab_size
        weights = spec.hidden_size * spec.vocab_size * spec.dtype_bytes
        return max(flops / (self.peak_flops * self.flops_efficiency), weights / self.mem_bw_bps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_model_from_dict(data: dict[str, Any]) -> FittedCompute | RooflineCompute:
    kind = data.get("kind")
    if kind == "fitted":
        return FittedCompute(**data)
    if kind == "roofline":
        return RooflineCompute(**data)
    raise ValueError(f"unknown compute model kind {kind!r} (expected 'fitted' or 'roofline')")
