"""Python's cyclic garbage collector during timed decode loops.

A full collection walks every tracked object, and a loaded model, its tokenizer and the run's records are
many: on SmolLM2 one took 220-250 ms (collecting nothing) every few decode steps, a stall of the Python
runtime that no part of the modelled system has. `frozen_gc` moves everything alive before the loop to the
permanent generation (`gc.freeze`), so collections during the loop only walk what the loop allocates.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_gc() -> Iterator[None]:
    """Collect once, freeze what is alive, run the body (collections still happen, over new objects only)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
