"""Whether a per-head policy keeps a task's needle: the share of the answer's tokens in each (layer, KV head)'s
kept set right after the prefill's eviction and at the end of the answer, and where the needle ranks in the
prefill's accumulated attention. Explains task results of accumulated-attention eviction (H2O, AERP)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sparkv.core.decode import DecodeGeometry
from sparkv.policies.decode.base import DecodeContext
from sparkv.policies.decode.kelle import HeadBudget, HeadPrefill


def answer_tokens(pieces: Sequence[str], answer: str) -> np.ndarray:
    """Indices of the tokens (decoded one by one into `pieces`) that overlap the first occurrence of `answer`
    in their concatenation; empty when it does not occur."""
    text = "".join(pieces)
    at = text.find(answer)
    if at < 0:
        return np.zeros(0, np.int64)
    ends = np.cumsum([len(p) for p in pieces])
    starts = ends - np.asarray([len(p) for p in pieces])
    return np.flatnonzero((starts < at + len(answer)) & (ends > at)).astype(np.int64)


def kept_share(state: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], needle: np.ndarray) -> dict[str, float]:
    """Over every (layer, head) of `state` (per layer, per head (tokens, scores)): the mean share of the needle's
    tokens kept, and the share of (layer, head) pairs that keep all of them."""
    if needle.size == 0:
        return {"mean": float("nan"), "all": float("nan")}
    shares = [float(np.isin(needle, tokens).mean()) for layer in state for tokens, _ in layer]
    return {"mean": float(np.mean(shares)), "all": float(np.mean([s == 1.0 for s in shares]))}


def after_prefill(policy: HeadBudget, geometry: DecodeGeometry, prefill: HeadPrefill) -> list[list[tuple[Any, Any]]]:
    """What `policy` (fresh) keeps per layer and head once the prefill is evicted to its budget."""
    policy.begin(DecodeContext(geometry=geometry, model="", tiers=("edram",), prefill=prefill))
    out = []
    for layer in range(geometry.num_layers):
        policy.initial_resident(layer)
        out.append(policy.head_state(layer))
    return out


def needle_rank(prefill: HeadPrefill, needle: np.ndarray) -> float:
    """The needle's best token's accumulated-attention quantile among all prefill tokens (1 = the top),
    averaged over layers and KV heads."""
    if needle.size == 0:
        return float("nan")
    q = []
    for imp in prefill.importance:
        arr = np.asarray(imp, dtype=np.float64)  # [KV, T]
        for h in range(arr.shape[0]):
            q.append(float((arr[h] < arr[h, needle].max()).mean()))
    return float(np.mean(q))
