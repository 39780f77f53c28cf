"""StreamingLLM (Xiao et al., ICLR 2024): attention sinks plus a window of the most recent tokens.

The window is M tokens (M/G groups) before the tail. Appended groups are resident when they join the
window and the oldest one leaves it, so after the first step nothing is ever read from disk.
"""

from __future__ import annotations

from sparkv.core.decode import LayerPlan, ScoresReady
from sparkv.policies.decode.base import DecodePolicyBase, SelectSettings


class StreamingLLM(DecodePolicyBase):
    name = "streaming"
    score_kind = "none"
    lookahead_layers = 1
    bounded = True

    def __init__(self, select_tokens: int = 0) -> None:
        super().__init__()
        self.settings = SelectSettings(select_tokens=select_tokens)

    def _window(self, full_groups: int) -> tuple[int, ...]:
        sinks = self.sinks()
        lo = max(len(sinks), full_groups - self.select_groups())
        return sinks + tuple(range(lo, full_groups))

    def initial_resident(self, layer: int) -> tuple[int, ...]:
        """Sinks and the recent window: what StreamingLLM kept from prefill."""
        groups = self._window(self.full_groups)
        self.resident[layer] = set(groups)
        return groups

    def plan(self, scores: ScoresReady) -> LayerPlan:
        """Attend and keep the sinks and the window ending at the newest full group."""
        groups = self._window(scores.full_groups)
        return self.make_plan(scores.step, scores.layer, attend=groups, keep=groups)
