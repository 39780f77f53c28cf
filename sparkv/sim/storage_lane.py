"""The simulated disk as one queue: batches of reads booked back to back at the storage profile's time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sparkv.cost_models.storage import StorageProfile


@dataclass
class StorageLane:
    """Reads issued at `at_s` start when the lane is free and take the profile's time for their sizes."""

    storage: StorageProfile
    depth: int  # requests in flight at once
    free_at_s: float = 0.0

    def book(self, sizes: Sequence[int], at_s: float) -> tuple[float, float]:
        """(start, end) of one batch of reads of `sizes` bytes; no reads take no time and no lane."""
        if not sizes:
            return at_s, at_s
        start = max(at_s, self.free_at_s)
        self.free_at_s = start + self.storage.batch_s(list(sizes), self.depth)
        return start, self.free_at_s
