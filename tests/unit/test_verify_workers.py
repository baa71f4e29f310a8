"""Parallel verification: worker processes that fail or die are reported, never ignored."""

from __future__ import annotations

import os

import pytest

from domain.errors import TachographError
from domain.verify import verify_log
from domain.verify_scan import RangeReaderBase
from tests.factories import items, make_ledger, signer, workload_events


class _Failing(RangeReaderBase):
    """Reads like the store's reader, except that one chunk fails (raises or kills its process)."""

    def __init__(self, inner: RangeReaderBase, bad_start: int, how: str) -> None:
        self.inner, self.bad_start, self.how = inner, bad_start, how

    def size(self) -> int:
        return self.inner.size()

    def read(self, start: int, end: int) -> list[tuple[int, bytes]]:
        if start == self.bad_start:
            if self.how == "exit":
                os._exit(3)
            raise OSError("disk I/O error")
        return self.inner.read(start, end)


@pytest.fixture
def ledger(tmp_path):
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=50)
    ledger.append(items(workload_events(runs=12)))
    ledger.checkpoint()
    return ledger


def _verify(ledger, reader):
    notes = [c.note for c in ledger.store.checkpoints()]
    return verify_log(reader, notes, [signer().vkey], chunk_bits=4, workers=2)


def test_parallel_verification_matches_one_pass(ledger):
    one = verify_log(ledger.store.raw_entries(), [c.note for c in ledger.store.checkpoints()], [signer().vkey])
    both = _verify(ledger, ledger.store.range_reader())
    assert one.ok and both.ok and (one.entries, one.root, one.runs) == (both.entries, both.root, both.runs)


def test_a_read_error_in_a_worker_is_raised_with_its_reason(ledger):
    with pytest.raises(TachographError, match="verification worker failed: OSError: disk I/O error"):
        _verify(ledger, _Failing(ledger.store.range_reader(), 32, "raise"))


def test_a_worker_that_dies_is_reported(ledger):
    with pytest.raises(TachographError, match="ended without its result"):
        _verify(ledger, _Failing(ledger.store.range_reader(), 48, "exit"))


@pytest.mark.parametrize("mode", ["one pass", "workers"])
def test_progress_is_reported_after_each_chunk_up_to_every_entry(ledger, mode):
    seen: list[int] = []
    entries = ledger.store.raw_entries() if mode == "one pass" else ledger.store.range_reader()
    result = verify_log(
        entries,
        [c.note for c in ledger.store.checkpoints()],
        [signer().vkey],
        chunk_bits=4,
        workers=1 if mode == "one pass" else 2,
        progress=seen.append,
    )
    size = ledger.store.size()
    assert result.ok and result.entries == size
    assert seen == [*range(16, size, 16), size]  # one call per 16-entry chunk, in order
