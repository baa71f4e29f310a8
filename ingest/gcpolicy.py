"""Garbage-collector settings for the batch paths (import, Kafka workers).

CPython's cyclic collector runs after every 700 net container allocations and walks every
young object each time; a batch of 2,000 events allocates about ten containers per event and
keeps them alive until the batch is appended, so the collector ran about 1,300 times per
100,000 imported events and took ≈ 13 % of the import's time, finding almost nothing:
what these paths allocate is freed by reference counting. With the objects that live for the
whole process frozen (never scanned again) and a first-generation threshold above what a
few batches in flight allocate, it runs rarely; cyclic garbage, if any, is still collected.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

BATCH_THRESHOLD = 100_000  # net container allocations between young collections


def tune_for_batches() -> None:
    """For a process that does batch work until it exits (a validator, a fetch process)."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(BATCH_THRESHOLD, middle, old)


@contextmanager
def batch_collection() -> Iterator[None]:
    """Batch-work collector settings while the block runs; the previous ones restored after."""
    before, frozen_before = gc.get_threshold(), gc.get_freeze_count()
    tune_for_batches()
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if not frozen_before:  # objects someone froze on purpose before the block stay frozen
            gc.unfreeze()
