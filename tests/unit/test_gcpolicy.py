"""The batch paths' collector settings: fewer young collections, cyclic garbage still freed."""

from __future__ import annotations

import gc
import weakref

from ingest.gcpolicy import BATCH_THRESHOLD, batch_collection


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the cyclic collector can free it


def test_the_previous_settings_come_back_after_the_block() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    with batch_collection():
        assert gc.get_threshold()[0] == BATCH_THRESHOLD
        assert gc.get_freeze_count() > frozen  # what lived before the block is not scanned
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen == 0


def test_the_previous_settings_come_back_when_the_block_fails() -> None:
    before = gc.get_threshold()
    try:
        with batch_collection():
            raise RuntimeError("append failed")
    except RuntimeError:
        pass
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_cyclic_garbage_made_during_a_batch_is_still_collected() -> None:
    with batch_collection():
        gc.collect()
        collections = gc.get_stats()[0]["collections"]
        garbage = _Node()
        ref = weakref.ref(garbage)
        del garbage
        assert ref() is not None  # a cycle outlives its last reference
        keep = [[] for _ in range(2 * BATCH_THRESHOLD)]  # allocations, as batches make them
        assert gc.get_stats()[0]["collections"] > collections
        assert ref() is None
        del keep


def test_young_collections_are_rare_while_a_batch_is_in_flight() -> None:
    def young_collections_for(n: int) -> int:
        gc.collect()
        start = gc.get_stats()[0]["collections"]
        batch = [{"event": {"data": {}}, "source": [i]} for i in range(n)]  # alive together
        seen = gc.get_stats()[0]["collections"] - start
        del batch
        return seen

    default = young_collections_for(20_000)
    with batch_collection():
        tuned = young_collections_for(20_000)
    assert default >= 50 and tuned == 0, (default, tuned)
