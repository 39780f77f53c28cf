"""A timed compute command: what `fit` and `fit_table` fit compute models to (the profiler makes them)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    """One timed compute command."""

    new_tokens: int  # n: tokens of the chunk
    past_tokens: int  # tokens before the chunk
    layers: int  # consecutive layers in the command
    seconds: float  # median measured wall time

    def __post_init__(self) -> None:
        if self.new_tokens <= 0 or self.layers <= 0 or self.past_tokens < 0 or self.seconds <= 0:
            raise ValueError(f"bad compute sample {self}")
