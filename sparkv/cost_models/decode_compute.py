"""Compute of one decode step: per layer, a fixed cost plus a cost per attended token and per scored token.

Derived from a device profile's compute model (one new token attending to `past` earlier ones), or
calibrated from real decode layers (`sparkv decode --real` measures them); the kind says which.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from sparkv.core.model import ModelSpec
from sparkv.cost_models.compute import FittedCompute, RooflineCompute, TableCompute

_PROBE_PAST = 4096  # past length at which the per-token slope of a measured model is read


@dataclass(frozen=True)
class DecodeCompute:
    layer_fixed_s: float  # one token through one layer, no past
    per_attended_token_s: float  # attention over one more cached token
    per_scored_token_s: float  # scoring one token's low-rank metadata (next layer's selection)
    per_exact_token_s: float  # exact attention scores of one token (the oracle's reference scores)
    step_fixed_s: float  # embedding, final norm, LM head and sampling, once per step
    append_layer_s: float = 0.0  # writing one appended group of one layer (0: from the storage profile)
    kind: str = "derived"  # "derived" from a prefill compute model, or "calibrated" on real decode layers
    source: str = ""

    def layer_s(self, attended_tokens: int, scored_tokens: int = 0, exact_tokens: int = 0) -> float:
        return (
            self.layer_fixed_s
            + self.per_attended_token_s * attended_tokens
            + self.per_scored_token_s * scored_tokens
            + self.per_exact_token_s * exact_tokens
        )

    def scaled(self, factor: float, why: str = "") -> DecodeCompute:
        """Every cost times `factor` (a machine whose compute takes `factor` times the calibrated seconds:
        1.2 is 20 % slower); the source says so."""
        if not (factor > 0 and math.isfinite(factor)):
            raise ValueError(f"compute scale factor must be finite and > 0, got {factor!r}")
        costs = {k: v * factor for k, v in asdict(self).items() if k.endswith("_s")}
        note = f"; scaled x{factor:.4f}" + (f" ({why})" if why else "")
        return replace(self, **costs, source=self.source + note)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecodeCompute:
        return cls(**data)


def derive_decode_compute(
    compute: FittedCompute | TableCompute | RooflineCompute, spec: ModelSpec, rank: int, name: str = ""
) -> DecodeCompute:
    """Decode costs read off a prefill compute model at one new token; scoring scaled by its share of bytes."""
    fixed = compute.layer_s(spec, 1, 0)
    per_tok = max(0.0, (compute.layer_s(spec, 1, _PROBE_PAST) - fixed) / _PROBE_PAST)
    key_bytes = spec.num_kv_heads * spec.head_dim * spec.dtype_bytes
    # scoring reads r fp16 values per token where attention reads K and V: scale the attention slope
    per_scored = per_tok * (2 * rank) / (2 * key_bytes)
    per_exact = per_tok * 0.5  # exact scores read the keys only
    return DecodeCompute(
        layer_fixed_s=fixed,
        per_attended_token_s=per_tok,
        per_scored_token_s=per_scored,
        per_exact_token_s=per_exact,
        step_fixed_s=compute.launch_s + compute.first_token_s(spec),
        kind="derived",
        source=f"device profile {name or '?'} ({compute.kind}) at one new token; scoring scaled by bytes read",
    )
