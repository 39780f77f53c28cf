"""The seam for decode policies whose importance scores are computed partly inside the storage.

Before a layer's scores exist, a driver asks such a policy `split(step, layer, full_groups)`: which groups
the host scores from memory (`hot`), which it scores after reading their quantised keys from the cold file
(`cpu`, over the host link), and which the drive scores next to the data (`storage`; only the result
crosses the link). The driver scores exactly those groups (the same kernel on every side), charges the
time of each side, and hands the scores to `plan` as `predicted`. Groups in no list are not scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sparkv.core.decode import DecodeEvent, LayerPlan, ScoresReady


@dataclass(frozen=True)
class ScoreSplit:
    step: int
    layer: int
    hot: tuple[int, ...]  # scored by the host from the hot pool's keys in memory, ascending
    cpu: tuple[int, ...]  # quantised keys read from the cold file, scored by the host, ascending
    storage: tuple[int, ...]  # scored inside the drive, ascending
    bits: int  # key precision of the scoring kernel (8 or 4)
    record_bytes: int  # one group's quantised keys (`sparkv.core.keyplane`)
    result_bytes: int  # what the drive returns over the host link (its candidates' ids and scores)


@runtime_checkable
class StorageScoring(Protocol):
    """A decode policy with a `split` hook (HillInfer); every other hook as in `DecodePolicy`."""

    name: str
    score_kind: str
    lookahead_layers: int
    bounded: bool

    def split(self, step: int, layer: int, full_groups: int) -> ScoreSplit: ...

    def plan(self, scores: ScoresReady) -> LayerPlan: ...

    def update(self, event: DecodeEvent) -> None: ...
