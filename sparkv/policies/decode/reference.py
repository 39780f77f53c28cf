"""Two reference decode policies: the whole KV cache in memory (the quality reference), and the whole KV
cache read back from disk at every step and layer (FlexGen-like offloading, the speed baseline)."""

from __future__ import annotations

from sparkv.core.decode import LayerPlan, ScoresReady
from sparkv.policies.decode.base import DecodePolicyBase


class FullKV(DecodePolicyBase):
    """Every group resident from the start and attended at every step; reads nothing; ignores the budget."""

    name = "full-kv"
    score_kind = "none"
    lookahead_layers = 1
    bounded = False

    def initial_resident(self, layer: int) -> tuple[int, ...]:
        """All context groups: the cache the loading phase built stays in memory."""
        groups = tuple(range(self.full_groups))
        self.resident[layer] = set(groups)
        return groups

    def plan(self, scores: ScoresReady) -> LayerPlan:
        """Attend and keep every full group."""
        everything = tuple(range(scores.full_groups))
        return self.make_plan(scores.step, scores.layer, attend=everything, keep=everything)


class FullReload(DecodePolicyBase):
    """Nothing kept between steps: each layer reads all its groups from disk, one layer ahead, then drops them."""

    name = "full-reload"
    score_kind = "none"
    lookahead_layers = 1
    bounded = False  # holds two layers of KV at a time, whatever the budget

    def plan(self, scores: ScoresReady) -> LayerPlan:
        """Read and attend every full group; keep none."""
        everything = tuple(range(scores.full_groups))
        return self.make_plan(scores.step, scores.layer, attend=everything, keep=())
