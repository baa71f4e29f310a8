"""``verify_tail``: verifying only what was appended since a verification gives the full verdict,
and finds what was tampered with after the verified point."""

from __future__ import annotations

import sqlite3

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from domain import merkle
from domain.checkpoint import Checkpoint, sign_checkpoint
from domain.ledger import Ledger
from domain.note import NoteSigner
from domain.ports import CheckpointRow
from domain.verify import VerifyResult, verify_log
from domain.verify_state import VerifyState
from domain.verify_tail import StoreReader, verify_tail
from tests.factories import (
    ORIGIN,
    append_deciding,
    event,
    items,
    make_ledger,
    signer,
    workload_events,
)


def _notes(ledger: Ledger) -> list[str]:
    return [c.note for c in ledger.store.checkpoints()]


def full(ledger: Ledger, ranged: bool = True) -> VerifyResult:
    """The full verification, as the API runs it (a store's reader, or its entries in memory)."""
    entries = ledger.store.range_reader() if ranged else ledger.store.stored_entries()
    return verify_log(entries, _notes(ledger), [signer().vkey], allow_unsigned_tail=True,
                      approvals_from=0)


def tail(ledger: Ledger, state: VerifyState, ranged: bool = True) -> VerifyResult:
    reader = ledger.store.range_reader() if ranged else StoreReader(ledger.store)
    return verify_tail(state, reader, _notes(ledger), ledger.store.node, allow_unsigned_tail=True)


def verdict(r: VerifyResult) -> tuple[object, ...]:
    return (r.ok, r.entries, r.root, r.runs, r.checkpoints, r.checkpoint_size, r.trusted_keys, r.position)


def db(ledger: Ledger) -> sqlite3.Connection:
    return sqlite3.connect(ledger.store.path, isolation_level=None)


def _grown(tmp_path, batches: list[int], ranged: bool = True) -> tuple[Ledger, VerifyResult]:
    """A ledger appended to in ``batches`` (numbers of runs), verified fully after the first and
    incrementally after each of the others."""
    ledger = make_ledger(tmp_path / "l.db", checkpoint_every=37, approval_decisions="person")
    events = workload_events(runs=sum(batches), seed=11)
    by_run: dict[str, list[dict]] = {}
    for ev in events:
        by_run.setdefault(ev["run_id"], []).append(ev)
    runs = list(by_run.values())
    done = 0
    result: VerifyResult | None = None
    for n in batches:
        chunk = [ev for run in runs[done : done + n] for ev in run]
        done += n
        append_deciding(ledger, chunk)
        if result is None:
            result = full(ledger, ranged)
        else:
            assert result.state is not None
            result = tail(ledger, result.state, ranged)
        assert result.ok, result.reason
    assert result is not None
    return ledger, result


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(batches=st.lists(st.integers(min_value=0, max_value=6), min_size=1, max_size=5), ranged=st.booleans())
def test_verifying_each_tail_gives_the_full_verdict_at_every_split(tmp_path_factory, batches, ranged) -> None:
    ledger, last = _grown(tmp_path_factory.mktemp("tail"), [1, *batches], ranged)
    assert verdict(last) == verdict(full(ledger, ranged))
    assert last.state is not None and last.state.frontier is not None
    assert last.state.frontier.root() == ledger.root(ledger.store.size())


def test_an_entry_appended_after_the_verified_point_and_edited_in_the_store_is_found(tmp_path) -> None:
    ledger, verified = _grown(tmp_path, [4, 3])
    size = ledger.store.size()
    append_deciding(ledger, workload_events(runs=3, seed=12, workspaces=("ws12",)))
    target = size + 5
    db(ledger).execute("UPDATE entries SET data = CAST(replace(CAST(data AS TEXT), '\"seq\":', "
                       "'\"seq\": ') AS BLOB) WHERE idx = ?", (target,))
    assert verified.state is not None
    result = tail(ledger, verified.state)
    assert not result.ok and result.position == target and "stored column" in result.reason


def test_a_careful_rewrite_after_the_verified_point_breaks_its_run_chain(tmp_path) -> None:
    ledger, verified = _grown(tmp_path, [4])
    size = ledger.store.size()
    append_deciding(ledger, workload_events(runs=2, seed=13, workspaces=("ws13",)))
    c = db(ledger)
    (data,) = c.execute("SELECT data FROM entries WHERE idx = ?", (size,)).fetchone()
    new = bytes(data).replace(b'"workflow":"', b'"workflow":"x', 1)
    assert new != bytes(data)
    c.execute("UPDATE entries SET data = ?, leaf = ? WHERE idx = ?", (new, merkle.leaf_hash(new), size))
    assert verified.state is not None
    result = tail(ledger, verified.state)
    assert not result.ok and result.position is not None and result.position > size
    assert "chain broken" in result.reason or "root hash does not match" in result.reason


def test_a_rewritten_stored_node_fails_the_consistency_with_the_verified_tree(tmp_path) -> None:
    ledger, verified = _grown(tmp_path, [6])
    append_deciding(ledger, workload_events(runs=1, seed=14, workspaces=("ws14",)))
    db(ledger).execute("UPDATE nodes SET hash = zeroblob(32) WHERE level = (SELECT max(level) FROM nodes) AND idx = 0")
    assert verified.state is not None
    result = tail(ledger, verified.state)
    assert not result.ok and "is not the tree of the" in result.reason


def test_a_checkpoint_signed_later_at_the_verified_size_is_checked_and_a_forged_one_fails(tmp_path) -> None:
    ledger, verified = _grown(tmp_path, [3])
    ledger.checkpoint(force=True)  # the tail the verification saw unsigned, signed now
    assert verified.state is not None
    again = tail(ledger, verified.state)
    assert again.ok and again.checkpoint_size == ledger.store.size()
    size = ledger.store.size()
    other = NoteSigner.from_seed(ORIGIN, bytes([9]) * 32)  # a key the ledger never trusted
    with ledger.store.transaction() as tx:
        tx.add_checkpoint(CheckpointRow(size, sign_checkpoint(Checkpoint(ORIGIN, size, ledger.root(size)), other),
                                        "2026-01-01T00:00:00Z"))
    assert again.state is not None
    result = tail(ledger, again.state)
    assert not result.ok and "not signed by a key trusted" in result.reason


def test_a_verified_checkpoint_deleted_from_the_store_is_found(tmp_path) -> None:
    ledger, verified = _grown(tmp_path, [4])
    db(ledger).execute("DELETE FROM checkpoints WHERE id = (SELECT min(id) FROM checkpoints)")
    assert verified.state is not None
    result = tail(ledger, verified.state)
    assert not result.ok and "verified before is no longer stored" in result.reason


def test_a_store_rolled_back_below_the_verified_size_fails(tmp_path) -> None:
    ledger, verified = _grown(tmp_path, [3])
    size = ledger.store.size()
    db(ledger).execute("DELETE FROM entries WHERE idx >= ?", (size - 2,))
    assert verified.state is not None
    result = tail(ledger, verified.state)
    assert not result.ok and "were verified" in result.reason and result.position == size - 2


def test_a_repeated_event_id_in_the_tail_is_found_by_the_store_or_in_memory(tmp_path) -> None:
    for ranged in (True, False):
        ledger = make_ledger(tmp_path / f"l{ranged}.db")
        ledger.append(items(workload_events(runs=2, seed=15)))
        verified = full(ledger, ranged)
        size = ledger.store.size()
        third = [e for e in workload_events(runs=3, seed=16) if e["run_id"] == "run-0000002"]
        ledger.append(items(third))  # a new run of the same workspace
        c = db(ledger)
        c.execute("DROP INDEX entries_event_id")  # a tamperer's first step
        (old,) = c.execute("SELECT event_id FROM entries WHERE idx = 0").fetchone()
        (data,) = c.execute("SELECT data FROM entries WHERE idx = ?", (size,)).fetchone()
        d = orjson.loads(data)
        new = orjson.dumps({**d, "event": {**d["event"], "event_id": old}}, option=orjson.OPT_SORT_KEYS)
        c.execute("UPDATE entries SET data = ?, leaf = ?, event_id = ? WHERE idx = ?",
                  (new, merkle.leaf_hash(new), old, size))
        assert verified.state is not None
        result = tail(ledger, verified.state, ranged)
        assert not result.ok and result.position == size and "appears twice" in result.reason, ranged


def test_a_key_rotated_after_the_verified_point_is_trusted_for_the_checkpoints_after_it(tmp_path) -> None:
    ledger, verified = _grown(tmp_path, [3])
    ledger.rotate_key(NoteSigner.from_seed(ORIGIN, bytes([7]) * 32))
    append_deciding(ledger, workload_events(runs=2, seed=17, workspaces=("ws17",)))
    ledger.checkpoint(force=True)  # signed by the new key only
    assert verified.state is not None
    result = tail(ledger, verified.state)
    assert result.ok and result.checkpoint_size == ledger.store.size(), result.reason
    assert verdict(result) == verdict(full(ledger))


def test_an_agents_own_approval_decision_in_the_tail_is_not_backed(tmp_path) -> None:
    ledger = make_ledger(tmp_path / "l.db", approval_decisions="agent")
    ledger.append(items(workload_events(runs=1, seed=18)))
    verified = full(ledger)
    size = ledger.store.size()
    ledger.append(items([event("r9", 0), event("r9", 1, "approval.requested", {"approval_id": "a", "summary": "s",
                                                                                "risk": "high"}),
                         event("r9", 2, "approval.decided", {"approval_id": "a", "decision": "approved",
                                                             "by": "pat"})]))  # no person decided
    assert verified.state is not None
    result = tail(ledger, verified.state)
    assert not result.ok and "is not backed" in result.reason and result.position is not None
    assert result.position == size + 2
