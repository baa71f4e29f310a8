"""A bounded verification state: the runs it no longer holds are read back from the store,
proven included in the verified tree, and a rewrite of such an entry is found."""

from __future__ import annotations

import pickle
import sqlite3

from domain import merkle
from domain.ledger import Ledger
from domain.verify import VerifyResult, verify_log
from domain.verify_chains import RunChains
from domain.verify_state import VerifyState
from domain.verify_tail import StoreReader, verify_tail
from tests.factories import event, items, make_ledger, signer

RUNS = [f"r{n}" for n in range(6)]


def _notes(ledger: Ledger) -> list[str]:
    return [c.note for c in ledger.store.checkpoints()]


def _started(tmp_path) -> Ledger:
    """Six runs of two events each, run by run (r0 is the oldest)."""
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=10**6, checkpoint_interval_s=10**6)
    for run in RUNS:
        ledger.append(items([event(run, 0), event(run, 1, "approval.requested",
                                                     {"approval_id": f"{run}/a", "summary": "s", "risk": "low"})]))
    return ledger


def _full(ledger: Ledger, kept: int | None, ranged: bool = True) -> VerifyState:
    entries = ledger.store.range_reader() if ranged else ledger.store.stored_entries()
    result = verify_log(entries, _notes(ledger), [signer().vkey], allow_unsigned_tail=True)
    assert result.ok and result.state is not None, result.reason
    if kept is not None:
        result.state.chains.trim(kept)
    return result.state


def _tail(ledger: Ledger, state: VerifyState, reader=None) -> VerifyResult:
    return verify_tail(state, reader or ledger.store.range_reader(), _notes(ledger), ledger.store.node,
                       allow_unsigned_tail=True)


def _continue(ledger: Ledger, run: str, seq: int = 2) -> None:
    ledger.append(items([event(run, seq, "run.completed", {"outcome": "succeeded"})]))


def test_trim_keeps_the_runs_verified_most_recently(tmp_path) -> None:
    state = _full(_started(tmp_path), kept=2)
    assert list(state.chains.recent) == [("acme", "r4"), ("acme", "r5")]
    assert state.chains.count == 6 and state.chains.capacity == 2


def test_a_run_no_longer_held_is_read_back_and_its_new_entry_verifies(tmp_path) -> None:
    ledger = _started(tmp_path)
    unbounded = _full(ledger, kept=None)
    bounded = _full(ledger, kept=2)
    _continue(ledger, "r0")  # r0 is not held by the bounded state
    ledger.append(items([event("r9", 0)]))  # a new run
    a, b = _tail(ledger, unbounded), _tail(ledger, bounded)
    assert a.ok and b.ok, (a.reason, b.reason)
    assert (a.entries, a.root, a.runs) == (b.entries, b.root, b.runs) == (ledger.store.size(), a.root, 7)
    assert bounded.chains.looked_up == 1 and len(bounded.chains) == 2
    assert list(bounded.chains.recent) == [("acme", "r0"), ("acme", "r9")]


def test_a_broken_chain_to_a_run_read_back_is_found(tmp_path) -> None:
    ledger = _started(tmp_path)
    bounded = _full(ledger, kept=1)
    _continue(ledger, "r0")
    size = ledger.store.size()
    c = sqlite3.connect(ledger.store.path, isolation_level=None)
    (data,) = c.execute("SELECT data FROM entries WHERE idx = ?", (size - 1,)).fetchone()
    old = bytes(data)
    at = old.index(b'"prev":"') + len(b'"prev":"')
    new = old[:at] + (b"1" if old[at:at + 1] == b"0" else b"0") + old[at + 1:]  # prev no longer r0's last
    c.execute("UPDATE entries SET data = ?, leaf = ? WHERE idx = ?", (new, merkle.leaf_hash(new), size - 1))
    result = _tail(ledger, bounded)
    assert not result.ok and result.position == size - 1 and "chain broken" in result.reason


def test_a_verified_entry_rewritten_since_is_found_when_its_run_is_read_back(tmp_path) -> None:
    ledger = _started(tmp_path)
    bounded = _full(ledger, kept=1)
    _continue(ledger, "r0")
    c = sqlite3.connect(ledger.store.path, isolation_level=None)
    (data,) = c.execute("SELECT data FROM entries WHERE run_id = 'r0' AND seq = 1").fetchone()
    new = bytes(data).replace(b'"summary":"s"', b'"summary":"t"')
    assert new != bytes(data)
    c.execute("UPDATE entries SET data = ? WHERE run_id = 'r0' AND seq = 1", (new,))
    result = _tail(ledger, bounded)
    assert not result.ok and "rewritten since it was verified" in result.reason, result.reason
    assert result.position == 1  # r0's last verified entry


def test_index_columns_that_point_a_run_at_another_runs_entry_are_found(tmp_path) -> None:
    ledger = _started(tmp_path)
    bounded = _full(ledger, kept=1)
    _continue(ledger, "r0")
    c = sqlite3.connect(ledger.store.path, isolation_level=None)
    c.execute("DROP INDEX entries_run_seq")
    c.execute("UPDATE entries SET run_id = 'r0', seq = 7 WHERE run_id = 'r3' AND seq = 1")
    result = _tail(ledger, bounded)
    assert not result.ok and "not an entry of that run" in result.reason, result.reason


def test_the_ports_reader_reads_runs_back_too(tmp_path) -> None:
    ledger = _started(tmp_path)
    bounded = _full(ledger, kept=1, ranged=False)  # event ids collected: the port's reader checks none
    _continue(ledger, "r0")
    result = _tail(ledger, bounded, StoreReader(ledger.store))  # the port's reader looks runs up too
    assert result.ok, result.reason
    assert bounded.chains.looked_up == 1


def test_a_state_crosses_a_process_boundary_and_goes_on(tmp_path) -> None:
    ledger = _started(tmp_path)
    state = pickle.loads(pickle.dumps(_full(ledger, kept=2)))
    assert isinstance(state.chains, RunChains) and state.chains.lookup is None
    _continue(ledger, "r1")
    result = _tail(ledger, state)
    assert result.ok and result.runs == 6, result.reason
    assert state.trusted_keys == [signer().vkey]


def test_a_bounded_state_over_a_reader_that_cannot_read_runs_back_is_refused(tmp_path) -> None:
    from domain.verify_scan import RangeReaderBase

    class Plain(RangeReaderBase):
        def __init__(self, inner: StoreReader) -> None:
            self.inner = inner

        def size(self) -> int:
            return self.inner.size()

        def read(self, start: int, end: int) -> list:
            return self.inner.read(start, end)

    ledger = _started(tmp_path)
    bounded = _full(ledger, kept=1, ranged=False)
    _continue(ledger, "r0")
    try:
        _tail(ledger, bounded, Plain(StoreReader(ledger.store)))
    except ValueError as e:
        assert "cannot look others up" in str(e)
    else:
        raise AssertionError("a bounded state was stitched without the runs it dropped")
