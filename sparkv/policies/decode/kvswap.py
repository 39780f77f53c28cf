"""KVSwap (hwhwz23/KVSWAP-CODE): the KV cache on disk, low-rank key metadata in memory choosing what to read.

Per layer and step: the scores (one per group, the max over its G tokens of the query predicted from the
previous layer against the rank-r projected keys) arrive as `predicted`; the top M/G groups are attended.
A reuse buffer of M/G slots per layer holds last step's selection: selected groups already there are hits;
misses overwrite the slots of groups not selected again. Layer l+1 is planned and its reads issued while
layer l computes. The exact-attention top-M oracle is the same policy on exact scores, planned without
lookahead (its query only exists when the layer starts): the recall reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparkv.core.decode import LayerPlan, ScoresReady
from sparkv.policies.decode.base import DecodeContext, DecodePolicyBase, ReuseCounter, top_groups


@dataclass(frozen=True)
class KVSwapSettings:
    select_tokens: int = 0  # M; 0: the scenario's (400 by default), capped by the budget
    rank: int = 24  # r of the key metadata; recorded here, used by the world that computes the scores


class KVSwap(DecodePolicyBase):
    name = "kvswap"
    score_kind = "predicted"
    lookahead_layers = 1
    bounded = True

    def __init__(self, select_tokens: int = 0, rank: int = 24) -> None:
        super().__init__()
        if select_tokens < 0 or rank <= 0:
            raise ValueError(f"kvswap needs select_tokens >= 0 and rank > 0, got {select_tokens}, {rank}")
        self.settings = KVSwapSettings(select_tokens=select_tokens, rank=rank)
        self.reuse = ReuseCounter()

    def _scores(self, scores: ScoresReady) -> Any:
        if scores.predicted is None:
            raise ValueError(f"{self.name} needs predicted scores for step {scores.step} layer {scores.layer}")
        return scores.predicted

    def plan(self, scores: ScoresReady) -> LayerPlan:
        """Sinks plus the top M/G groups by score; the buffer keeps exactly this selection."""
        sinks = self._sinks
        chosen = top_groups(self._scores(scores), len(sinks), self._select)
        layer = scores.layer
        hits = len(self.resident[layer].intersection(chosen))
        self.reuse.hits[layer] += hits
        self.reuse.selected[layer] += len(chosen)
        attend = sinks + chosen
        return self.make_plan(scores.step, layer, attend=attend, keep=attend)

    def begin(self, ctx: DecodeContext) -> None:
        """Start a run: the base bookkeeping, and a reuse counter per layer."""
        super().begin(ctx)
        self.reuse = ReuseCounter([0] * ctx.geometry.num_layers, [0] * ctx.geometry.num_layers)

    def run_stats(self) -> dict[str, Any]:
        """Reuse rate per layer (hits / selected), as KVSwap logs it."""
        return {"reuse_rate_by_layer": self.reuse.rates()}


class TopMOracle(KVSwap):
    """The exact top-M groups by true attention mass at every step and layer (no lookahead)."""

    name = "oracle-topm"
    score_kind = "exact"
    lookahead_layers = 0

    def _scores(self, scores: ScoresReady) -> Any:
        if scores.exact is None:
            raise ValueError(f"{self.name} needs exact scores for step {scores.step} layer {scores.layer}")
        return scores.exact
