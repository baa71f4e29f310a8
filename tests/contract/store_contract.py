"""The ledger store contract: one suite of behaviours every ``LedgerStore`` adapter must show.

Subclass :class:`StoreContract` and provide ``open_store``: a fixture returning a callable that
opens the adapter on ONE underlying database (calling it again reopens the same database, where
the adapter is persistent). Persistent adapters also mix in :class:`PersistentStoreContract`.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable

import pytest

from domain import merkle
from domain.approvals import ApprovalRow
from domain.checkpoint import Checkpoint
from domain.errors import NotFoundError, StoreError, StoreIntegrityError, StoreRetryError
from domain.evidence import build_evidence, verify_evidence
from domain.ledger import Ledger
from domain.ports import (
    STORED_NODE_LEVEL,
    CheckpointRow,
    CosignatureRow,
    EntryRow,
    Head,
    HeldRow,
    LedgerStore,
    QuarantineRow,
    Source,
)
from domain.records import Record
from domain.verify import verify_log
from domain.verify_tail import verify_tail
from tachograph.contract.canonical import loads
from tests.factories import FakeClock, event, items, make_ledger, workload_events

OpenStore = Callable[[], LedgerStore]


def entry(
    index: int,
    *,
    workspace: str | None = "acme",
    run_id: str | None = "r1",
    seq: int | None = None,
    event_id: str | None = None,
    kind: str = "event",
) -> EntryRow:
    """A synthetic entry row whose bytes and hashes are derived from its index."""
    data = f'{{"event":{event_body(index, run_id).decode()},"index":{index}}}'.encode()
    seq = index if seq is None and run_id is not None else seq
    return EntryRow(
        index=index,
        data=data,
        leaf_hash=merkle.leaf_hash(data),
        kind=kind,
        workspace=workspace,
        run_id=run_id,
        seq=seq,
        event_id=event_id if event_id is not None else (f"e{index}" if run_id else None),
        event_type="run.started" if seq == 0 else "tool.called",
        event_time=f"2026-01-01T00:00:{index % 60:02d}Z",
    )


def event_body(index: int, run_id: str | None = "r1") -> bytes:
    """The event member of ``entry(index)``'s bytes."""
    return f'{{"n":{index},"run":"{run_id}"}}'.encode()


def hashed(row: EntryRow) -> bytes:
    """What event_hashes answers for a stored row: SHA-256 of the event in its bytes."""
    return hashlib.sha256(event_body(row.index, row.run_id)).digest()


def held(run_id: str, seq: int, held_at: float, workspace: str = "acme") -> HeldRow:
    """A synthetic held row."""
    src = Source(kind="kafka", topic="agent-events", partition=seq % 3, offset=100 + seq)
    return HeldRow(workspace, run_id, seq, f"raw-{run_id}-{seq}".encode(), src, held_at)


def verify(ledger: Ledger):
    """verify_log over everything the ledger's store holds, its index columns included."""
    store = ledger.store
    return verify_log(
        store.stored_entries(), [c.note for c in store.checkpoints()], [ledger.signer.vkey],
        origin=ledger.config.origin,
    )


# one edit per stored index column, of one entry: (column, SQL value, what verify must name)
COLUMN_TAMPERS = [
    ("kind", "'key.rotated'", "kind"),
    ("workspace", "'other'", "workspace"),
    ("run_id", "'other-run'", "run_id"),
    ("run_id", "NULL", "run_id"),
    ("seq", "99", "seq"),
    ("event_id", "'forged-id'", "event_id"),
    ("type", "'model.called'", "event_type"),  # never a run's last event, which is edited
    ("time", "'2000-01-01T00:00:00Z'", "event_time"),
    ("leaf", "{zero_hash}", "leaf_hash"),
]


class StoreContract:
    """Behaviours of the ``LedgerStore`` / ``LedgerTx`` port (abstract: subclass per adapter)."""

    @pytest.fixture
    def open_store(self) -> OpenStore:
        raise NotImplementedError("adapter test classes provide open_store")

    @pytest.fixture
    def store(self, open_store: OpenStore):
        s = open_store()
        yield s
        s.close()

    # -- head and meta --------------------------------------------------------------------------

    def test_a_fresh_store_has_an_empty_head_no_entries_and_no_checkpoint(self, store):
        with store.transaction() as tx:
            assert tx.head() == Head()
        assert store.size() == 0
        assert list(store.entries()) == []
        assert list(store.raw_entries()) == []
        assert store.latest_checkpoint() is None
        assert store.checkpoints() == []

    def test_a_saved_head_is_read_back_by_the_next_transaction(self, store):
        frontier = [bytes([1]) * 32, bytes([2]) * 32]
        with store.transaction() as tx:
            tx.save_head(Head(size=6, frontier=frontier, checkpoint_size=4, checkpoint_time=12.5))
        with store.transaction() as tx:
            assert tx.head() == Head(6, frontier, 4, 12.5)
        assert store.size() == 6

    def test_meta_values_are_upserted_and_readable_outside_a_transaction(self, store):
        with store.transaction() as tx:
            assert tx.meta("origin") is None
            tx.set_meta("origin", "a.example/log")
            tx.set_meta("origin", "b.example/log")
            assert tx.meta("origin") == "b.example/log"
        assert store.get_meta("origin") == "b.example/log"
        assert store.get_meta("missing") is None

    # -- entries --------------------------------------------------------------------------------

    def test_stored_entries_give_the_bytes_with_the_index_columns(self, store):
        rows = [entry(i) for i in range(4)] + [entry(4, run_id=None, kind="key.rotated")]
        with store.transaction() as tx:
            tx.append_entries(rows)
        assert list(store.stored_entries(1, 5)) == [
            (r.index, r.data, r.kind, r.workspace, r.run_id, r.seq, r.event_id, r.event_type,
             r.event_time, r.leaf_hash)
            for r in rows[1:5]
        ]  # fmt: skip

    def test_entries_containing_searches_the_bytes_in_a_range(self, store):
        rows = [entry(i, run_id="r1" if i % 2 else "r2") for i in range(8)]
        with store.transaction() as tx:
            tx.append_entries(rows)
        found = store.entries_containing(b'"run":"r1"', 2, 7)
        assert found == [(r.index, r.data) for r in rows if r.index in (3, 5)]
        assert store.entries_containing(b'"run":"r9"', 0, 8) == []

    def test_entries_round_trip_byte_for_byte_in_index_order(self, store):
        rows = [entry(i) for i in range(7)]
        with store.transaction() as tx:
            tx.append_entries(rows[:3])
        with store.transaction() as tx:
            tx.append_entries(rows[3:])
        assert list(store.entries()) == rows
        assert list(store.raw_entries()) == [(r.index, r.data) for r in rows]
        assert list(store.entries(2, 5)) == rows[2:5]
        assert list(store.raw_entries(5)) == [(r.index, r.data) for r in rows[5:]]
        assert list(store.entries(7)) == []

    def test_a_long_scan_can_interleave_other_reads_and_keeps_index_order(self, store):
        rows = [entry(i, seq=i) for i in range(12_345)]
        with store.transaction() as tx:
            tx.append_entries(rows)
        seen = []
        for n, (index, data) in enumerate(store.raw_entries()):
            seen.append(index)
            if n % 2_000 == 0:  # other reads in the middle of the scan, on the same thread
                assert store.node(0, index) == rows[index].leaf_hash
                assert store.run_entries("acme", "nope") == []
            assert data == rows[index].data
        assert seen == list(range(12_345))
        assert [r.index for r in store.entries(4_990, 10_010)] == list(range(4_990, 10_010))

    def test_system_entries_without_run_columns_round_trip(self, store):
        rows = [entry(0, workspace=None, run_id=None, kind="key.rotated"),
                entry(1, workspace=None, run_id=None, kind="key.rotated")]  # fmt: skip
        with store.transaction() as tx:
            tx.append_entries(rows)
        assert list(store.entries()) == rows

    def test_run_entries_are_the_runs_own_entries_in_seq_order(self, store):
        rows = [
            entry(0, run_id="r1", seq=0), entry(1, run_id="r2", seq=0),
            entry(2, run_id="r1", seq=1), entry(3, run_id="r1", seq=2, workspace="other"),
        ]  # fmt: skip
        with store.transaction() as tx:
            tx.append_entries(rows)
        assert store.run_entries("acme", "r1") == [rows[0], rows[2]]
        assert store.run_entries("acme", "nope") == []

    def test_workspaces_of_run_lists_each_workspace_holding_the_run_once(self, store):
        with store.transaction() as tx:
            tx.append_entries([
                entry(0, workspace="beta", run_id="r1", seq=0),
                entry(1, workspace="acme", run_id="r1", seq=0),
                entry(2, workspace="acme", run_id="r1", seq=1),
                entry(3, workspace="acme", run_id="r2", seq=0),
            ])  # fmt: skip
        assert sorted(store.workspaces_of_run("r1")) == ["acme", "beta"]
        assert store.workspaces_of_run("r9") == []

    def test_event_hashes_find_stored_events_by_workspace_and_event_id(self, store):
        rows = [
            entry(0, event_id="x"),
            entry(1, event_id="y"),
            entry(2, workspace="w2", event_id="x"),
        ]
        with store.transaction() as tx:
            tx.append_entries(rows)
        with store.transaction() as tx:
            found = tx.event_hashes([("acme", "x"), ("acme", "y"), ("acme", "z"), ("w2", "x")])
        assert found == {
            ("acme", "x"): ("r1", 0, hashed(rows[0])),
            ("acme", "y"): ("r1", 1, hashed(rows[1])),
            ("w2", "x"): ("r1", 2, hashed(rows[2])),
        }

    def test_event_hashes_see_entries_written_earlier_in_the_same_transaction(self, store):
        with store.transaction() as tx:
            tx.append_entries([entry(0)])
            assert tx.event_hashes([("acme", "e0")]) == {
                ("acme", "e0"): ("r1", 0, hashed(entry(0)))
            }
            assert tx.seq_hashes([("acme", "r1", 0)]) == {("acme", "r1", 0): hashed(entry(0))}

    def test_seq_hashes_find_stored_events_by_run_position(self, store):
        rows = [entry(i) for i in range(3)]
        with store.transaction() as tx:
            tx.append_entries(rows)
        with store.transaction() as tx:
            found = tx.seq_hashes([("acme", "r1", 1), ("acme", "r1", 9), ("other", "r1", 0)])
        assert found == {("acme", "r1", 1): hashed(rows[1])}

    def test_a_batch_of_ten_thousand_lookups_answers_every_stored_key(self, store):
        rows = [entry(i) for i in range(2_000)]
        with store.transaction() as tx:
            tx.append_entries(rows)
        with store.transaction() as tx:
            keys = [("acme", f"e{i}") for i in range(10_000)]
            found = tx.event_hashes(keys)
        assert sorted(found) == sorted(("acme", f"e{i}") for i in range(2_000))

    # -- Merkle nodes ---------------------------------------------------------------------------

    def test_level_zero_nodes_are_entry_leaves_and_higher_levels_are_the_trees_nodes(self, store):
        rows = [entry(i) for i in range(4)]
        cr = merkle.CompactRange()
        nodes = [n for r in rows for n in cr.append(r.leaf_hash)]
        with store.transaction() as tx:
            tx.append_entries(rows)
            tx.append_nodes(nodes)
        for level, index, h in nodes:
            assert store.node(level, index) == h
        assert merkle.subtree_hash(0, 4, store.node) == cr.root()

    def test_nodes_below_the_stored_level_come_from_the_leaves_and_the_rest_are_stored(self, store):
        rows = [entry(i) for i in range(40)]
        cr = merkle.CompactRange()
        nodes = [n for r in rows for n in cr.append(r.leaf_hash)]
        assert {n[0] for n in nodes} == {0, 1, 2, 3, 4, 5}
        with store.transaction() as tx:
            tx.append_entries(rows)
            tx.append_nodes(nodes)
            # a low node handed to the store is not kept: it is what the leaves say
            tx.append_nodes([(1, 10, b"x" * 32)])
        for level, index, h in nodes:
            assert store.node(level, index) == h
        assert store.node(1, 10) == merkle.node_hash(rows[20].leaf_hash, rows[21].leaf_hash)
        for size in (1, 7, 16, 33, 40):
            assert merkle.subtree_hash(0, size, store.node) == merkle.root_from_leaf_hashes(
                r.leaf_hash for r in rows[:size]
            )
        with pytest.raises(NotFoundError):
            store.node(3, 5)  # entries 40..47 are not there
        with pytest.raises(NotFoundError):
            store.node(STORED_NODE_LEVEL + 2, 0)  # 64 entries: not complete

    def test_a_missing_node_raises_not_found(self, store):
        with pytest.raises(NotFoundError):
            store.node(0, 0)
        with pytest.raises(NotFoundError):
            store.node(3, 1)

    # -- run states -----------------------------------------------------------------------------

    def test_run_states_are_upserted_and_loaded_only_for_existing_keys(self, store):
        with store.transaction() as tx:
            tx.save_runs({("acme", "r1"): b"one", ("acme", "r2"): b"two"})
        with store.transaction() as tx:
            tx.save_runs({("acme", "r1"): b"one-updated"})
        with store.transaction() as tx:
            loaded = tx.load_runs([("acme", "r1"), ("acme", "r2"), ("acme", "r3"), ("b", "r1")])
        assert loaded == {("acme", "r1"): b"one-updated", ("acme", "r2"): b"two"}

    def test_locking_runs_reads_their_states_and_leaves_no_trace_for_runs_without_one(self, store):
        with store.transaction() as tx:
            tx.save_runs({("acme", "r1"): b"one"})
        with store.append_transaction() as tx:
            assert tx.lock_runs([("acme", "r1"), ("acme", "r2")]) == {("acme", "r1"): b"one"}
            tx.lock_approvals([("acme", "a1")])
            tx.lock_exceptions()
            tx.save_runs({("acme", "r3"): b"three"})
        with store.transaction() as tx:
            found = tx.load_runs([("acme", "r1"), ("acme", "r2"), ("acme", "r3")])
        assert found == {("acme", "r1"): b"one", ("acme", "r3"): b"three"}

    # -- sequencing and integration -------------------------------------------------------------

    def _append_at_positions(self, store: LedgerStore, first_index: int, count: int) -> None:
        """One append transaction: sequence ``count`` entries, write them, then integrate."""
        with store.append_transaction() as tx:
            first = tx.sequence(count)
            tx.append_entries([entry(i, run_id=f"r{i}", seq=0) for i in range(first, first + count)])
            head = tx.head()  # its turn to integrate: every earlier position is integrated
            assert head.size == first == first_index
            tree = merkle.CompactRange(head.size, head.frontier)
            tree.append_many([entry(i, run_id=f"r{i}", seq=0).leaf_hash for i in range(first, first + count)])
            tx.save_head(Head(tree.size, list(tree.hashes), head.checkpoint_size, head.checkpoint_time))
            assert tx.peek_head().size == tree.size

    def test_an_append_transaction_is_sequenced_at_the_head_and_integrates_after_it(self, store):
        self._append_at_positions(store, 0, 3)
        self._append_at_positions(store, 3, 2)
        assert store.size() == 5
        assert [r.index for r in store.entries()] == [0, 1, 2, 3, 4]
        with store.append_transaction() as tx:
            assert tx.peek_head().size == 5

    def test_positions_of_a_rolled_back_append_are_given_again(self, store):
        class Boom(Exception):
            pass

        self._append_at_positions(store, 0, 2)
        with pytest.raises(Boom), store.append_transaction() as tx:
            assert tx.sequence(4) == 2
            tx.append_entries([entry(i, run_id=f"r{i}", seq=0) for i in range(2, 6)])
            raise Boom
        for attempt in range(3):  # a store that voids the hole asks once to redo (nothing written)
            try:
                self._append_at_positions(store, 2, 3)
                break
            except StoreRetryError:
                assert attempt == 0
        assert [r.index for r in store.entries()] == [0, 1, 2, 3, 4]

    # -- quarantine -----------------------------------------------------------------------------

    def test_quarantine_keeps_raw_bytes_reason_and_source_oldest_first(self, store):
        src = Source(kind="kafka", topic="agent-events", partition=2, offset=41)
        rows = [
            QuarantineRow(b"\xff\xfenot utf-8", "contract: not UTF-8", src, "2026-01-01T00:00:00Z"),
            QuarantineRow(b"{}", "contract: missing field", Source(kind="file", name="a.jsonl", line=3),
                          "2026-01-01T00:00:01Z", "acme", "r1", "e1"),
        ]  # fmt: skip
        with store.transaction() as tx:
            tx.add_quarantine(rows[:1])
        with store.transaction() as tx:
            tx.add_quarantine(rows[1:])
        got = store.quarantine()
        assert [(q.raw, q.reason, q.source, q.received, q.workspace, q.run_id, q.event_id)
                for q in got] == [
            (r.raw, r.reason, r.source, r.received, r.workspace, r.run_id, r.event_id) for r in rows
        ]  # fmt: skip
        assert got[0].id is not None and got[1].id is not None and got[0].id < got[1].id
        assert store.quarantine_count() == 2

    def test_quarantine_pages_by_id(self, store):
        src = Source(kind="http")
        with store.transaction() as tx:
            tx.add_quarantine([QuarantineRow(bytes([i]), f"r{i}", src, "t") for i in range(5)])
        first = store.quarantine(limit=2)
        rest = store.quarantine(limit=10, after_id=first[-1].id)
        assert [q.reason for q in first] == ["r0", "r1"]
        assert [q.reason for q in rest] == ["r2", "r3", "r4"]

    def test_quarantine_rows_carry_size_digest_and_kept_bytes_and_read_as_previews(self, store):
        import hashlib

        src = Source(kind="http", name="acme/k1", line=0)
        whole = b"x" * 5000
        rows = [
            QuarantineRow(whole, "r0", src, "t", "acme"),
            QuarantineRow(b"y" * 1024, "r1", src, "t", "acme", raw_size=9000,
                          raw_sha256=b"\x01" * 32),  # kept truncated: 1,024 of 9,000 bytes
            QuarantineRow(b"\xff junk", "r2", Source(kind="kafka", topic="t", partition=0, offset=1), "t"),
            QuarantineRow(b"z" * 10, "r3", src, "t", "beta"),
        ]
        with store.transaction() as tx:
            tx.add_quarantine(rows[:2])
            assert tx.quarantine_kept_bytes("acme") == 5000 + 1024
        with store.transaction() as tx:
            tx.add_quarantine(rows[2:])
            assert (tx.quarantine_kept_bytes("acme"), tx.quarantine_kept_bytes(None),
                    tx.quarantine_kept_bytes("beta"), tx.quarantine_kept_bytes("c")) == (6024, 6, 10, 0)
        got = store.quarantine(preview=16)
        assert [(r.raw, r.raw_size, r.kept) for r in got] == [
            (b"x" * 16, 5000, 5000), (b"y" * 16, 9000, 1024), (b"\xff junk", 6, 6), (b"z" * 10, 10, 10)]
        assert got[0].raw_sha256 == hashlib.sha256(whole).digest() and got[1].raw_sha256 == b"\x01" * 32
        assert [r.truncated for r in got] == [False, True, False, False]
        assert [r.reason for r in store.quarantine(workspace="acme")] == ["r0", "r1"]
        assert [r.reason for r in store.quarantine(limit=1, after_id=got[0].id, workspace="acme")] == ["r1"]
        one = store.quarantined(got[0].id)
        assert one is not None and one.raw == whole and one.reason == "r0"
        assert store.quarantined(got[-1].id + 100) is None
        usage = store.quarantine_usage()
        assert (usage["acme"].items, usage["acme"].kept_bytes, usage["acme"].truncated) == (2, 6024, 1)
        assert (usage[None].items, usage[None].kept_bytes, usage["beta"].items) == (1, 6, 1)

    def test_quarantine_written_in_a_rolled_back_transaction_is_not_counted(self, store):
        class Boom(Exception):
            pass

        with pytest.raises(Boom), store.transaction() as tx:
            tx.add_quarantine([QuarantineRow(b"abc", "r", Source(kind="http"), "t", "acme")])
            raise Boom
        assert store.quarantine_usage().get("acme") is None
        with store.transaction() as tx:
            assert tx.quarantine_kept_bytes("acme") == 0

    # -- held events ----------------------------------------------------------------------------

    def test_held_rows_are_put_loaded_per_run_in_seq_order_and_dropped(self, store):
        with store.transaction() as tx:
            tx.put_held([held("r1", 3, 10.0), held("r1", 2, 11.0), held("r2", 5, 12.0)])
        with store.transaction() as tx:
            assert tx.count_held() == 3
            assert tx.load_held([("acme", "r1")]) == [held("r1", 2, 11.0), held("r1", 3, 10.0)]
            assert tx.load_held([("acme", "r3")]) == []
            tx.drop_held([("acme", "r1", 2), ("acme", "r9", 0)])
        with store.transaction() as tx:
            assert tx.count_held() == 2
            assert tx.load_held([("acme", "r1"), ("acme", "r2")]) == [
                held("r1", 3, 10.0), held("r2", 5, 12.0),
            ]  # fmt: skip

    def test_held_rows_are_counted_per_workspace_including_this_transactions_writes(self, store):
        with store.transaction() as tx:
            tx.put_held([held("r1", 3, 1.0), held("r2", 2, 1.0), held("r1", 4, 1.0, "beta")])
        with store.transaction() as tx:
            assert (tx.count_held_in("acme"), tx.count_held_in("beta"), tx.count_held_in("c")) == (2, 1, 0)
            tx.drop_held([("acme", "r1", 3)])
            tx.put_held([held("r9", 1, 2.0, "beta")])
            assert (tx.count_held_in("acme"), tx.count_held_in("beta")) == (1, 2)
        with store.transaction() as tx:
            assert (tx.count_held_in("acme"), tx.count_held_in("beta")) == (1, 2)

    def test_expired_held_rows_come_oldest_first_up_to_the_limit(self, store):
        with store.transaction() as tx:
            tx.put_held(
                [held("r1", 1, 30.0), held("r2", 1, 10.0), held("r3", 1, 20.0), held("r4", 1, 99.0)]
            )
        with store.transaction() as tx:
            assert [r.run_id for r in tx.expired_held(50.0, 10)] == ["r2", "r3", "r1"]
            assert [r.run_id for r in tx.expired_held(50.0, 2)] == ["r2", "r3"]
            assert tx.expired_held(10.0, 10) == []

    def test_a_row_held_and_dropped_in_one_transaction_leaves_nothing(self, store):
        with store.transaction() as tx:
            tx.put_held([held("r1", 4, 1.0)])
            assert tx.count_held() == 1
            tx.drop_held([("acme", "r1", 4)])
        with store.transaction() as tx:
            assert tx.count_held() == 0

    # -- offsets and checkpoints ----------------------------------------------------------------

    def test_offsets_are_upserted_per_consumer_group(self, store):
        with store.transaction() as tx:
            tx.save_offsets("g1", {("agent-events", 0): 10, ("agent-events", 1): 5})
            tx.save_offsets("g2", {("agent-events", 0): 99})
        with store.transaction() as tx:
            tx.save_offsets("g1", {("agent-events", 1): 7, ("other", 0): 1})
        assert store.offsets("g1") == {
            ("agent-events", 0): 10,
            ("agent-events", 1): 7,
            ("other", 0): 1,
        }
        assert store.offsets("g2") == {("agent-events", 0): 99}
        assert store.offsets("nobody") == {}

    def test_checkpoints_are_listed_oldest_first_and_latest_is_the_newest(self, store):
        rows = [
            CheckpointRow(s, f"note {s}\n", f"2026-01-01T00:00:0{n}Z")
            for n, s in enumerate((1, 5, 9))
        ]
        for row in rows:
            with store.transaction() as tx:
                tx.add_checkpoint(row)
        assert store.checkpoints() == rows
        assert store.latest_checkpoint() == rows[-1]

    def test_cosignatures_are_kept_per_checkpoint_size_and_witness_and_a_newer_one_replaces(
        self, store
    ):
        a1 = CosignatureRow(5, "w.example/a+0a0b0c0d", "— w.example/a AAAA\n", 100)
        b1 = CosignatureRow(5, "w.example/b+01020304", "— w.example/b BBBB\n", 101)
        a2 = CosignatureRow(9, "w.example/a+0a0b0c0d", "— w.example/a CCCC\n", 102)
        store.add_cosignatures([b1, a1])
        store.add_cosignatures([a2])
        store.add_cosignatures([])
        assert store.cosignatures(5) == [a1, b1]
        assert store.cosignatures(9) == [a2]
        assert store.cosignatures(7) == []
        newer = CosignatureRow(5, a1.witness, "— w.example/a DDDD\n", 200)
        store.add_cosignatures([newer])
        assert store.cosignatures(5) == [newer, b1]

    def test_cosignatures_can_be_written_while_another_thread_appends(self, store):
        ledger = make_ledger(store=store)
        ledger.append(items(workload_events(runs=3)))
        row = ledger.checkpoint()
        assert row is not None
        done = threading.Event()
        with store.transaction() as tx:
            tx.set_meta("busy", "yes")
            writer = threading.Thread(
                target=lambda: (store.add_cosignatures([CosignatureRow(row.size, "w+00000000", "l\n", 1)]),
                                done.set()),
            )
            writer.start()
        writer.join(timeout=30)
        assert done.is_set()
        assert [c.line for c in store.cosignatures(row.size)] == ["l\n"]
        assert store.get_meta("busy") == "yes"

    # -- transactions ---------------------------------------------------------------------------

    def _write_everything(self, tx) -> None:
        tx.save_head(
            Head(size=1, frontier=[entry(0).leaf_hash], checkpoint_size=1, checkpoint_time=1.0)
        )
        tx.set_meta("k", "v")
        tx.append_entries([entry(0)])
        tx.append_nodes([(STORED_NODE_LEVEL, 0, b"n" * 32)])
        tx.save_runs({("acme", "r1"): b"state"})
        tx.add_quarantine([QuarantineRow(b"x", "bad", Source(kind="http"), "t")])
        tx.put_held([held("r1", 5, 1.0)])
        tx.save_offsets("g", {("t", 0): 3})
        tx.add_checkpoint(CheckpointRow(1, "note\n", "t"))

    def _assert_empty(self, store) -> None:
        assert store.size() == 0
        assert list(store.entries()) == []
        assert store.get_meta("k") is None
        assert store.quarantine_count() == 0
        assert store.offsets("g") == {}
        assert store.checkpoints() == []
        with pytest.raises(NotFoundError):
            store.node(STORED_NODE_LEVEL, 0)
        with store.transaction() as tx:
            assert tx.head() == Head()
            assert tx.load_runs([("acme", "r1")]) == {}
            assert tx.count_held() == 0
            assert tx.event_hashes([("acme", "e0")]) == {}

    def test_an_exception_inside_a_transaction_rolls_back_every_write(self, store):
        class Boom(Exception):
            pass

        with pytest.raises(Boom), store.transaction() as tx:
            self._write_everything(tx)
            raise Boom
        self._assert_empty(store)

    def test_uncommitted_writes_are_invisible_to_readers_until_commit(self, store):
        with store.transaction() as tx:
            self._write_everything(tx)
            assert store.size() == 0
            assert list(store.raw_entries()) == []
            assert store.get_meta("k") is None
            assert store.checkpoints() == []
            assert store.offsets("g") == {}
        assert store.size() == 1
        assert list(store.raw_entries()) == [(0, entry(0).data)]
        assert store.get_meta("k") == "v"
        assert store.offsets("g") == {("t", 0): 3}
        assert store.quarantine_count() == 1

    def test_a_nested_transaction_is_refused_and_the_outer_one_still_commits(self, store):
        with store.transaction() as tx:
            tx.set_meta("outer", "yes")
            with pytest.raises(StoreError), store.transaction():
                pass
            tx.set_meta("after", "yes")
        assert (store.get_meta("outer"), store.get_meta("after")) == ("yes", "yes")

    def test_writers_are_serialised_so_concurrent_increments_are_never_lost(self, store):
        def bump(times: int) -> None:
            for _ in range(times):
                with store.transaction() as tx:
                    h = tx.head()
                    tx.save_head(Head(h.size + 1, h.frontier, 0, 0.0))

        threads = [threading.Thread(target=bump, args=(25,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.size() == 100

    # -- uniqueness -----------------------------------------------------------------------------

    @pytest.mark.parametrize(
        "duplicate",
        [
            pytest.param(entry(0, run_id="r2", seq=0, event_id="other"), id="same-index"),
            pytest.param(entry(1, seq=0, event_id="other"), id="same-run-seq"),
            pytest.param(entry(1, run_id="r2", seq=0, event_id="e0"), id="same-event-id"),
        ],
    )
    def test_a_uniqueness_violation_raises_store_integrity_error_and_writes_nothing(
        self, store, duplicate
    ):
        with store.transaction() as tx:
            tx.append_entries([entry(0)])
        with pytest.raises(StoreIntegrityError), store.transaction() as tx:
            tx.set_meta("k", "v")
            tx.append_entries([entry(5, run_id="r3", seq=0), duplicate])
        assert list(store.entries()) == [entry(0)]
        assert store.get_meta("k") is None

    def test_a_duplicate_inside_one_insert_raises_store_integrity_error(self, store):
        with pytest.raises(StoreIntegrityError), store.transaction() as tx:
            tx.append_entries([entry(0), entry(0)])
        assert list(store.entries()) == []

    def test_the_same_event_id_may_exist_in_two_workspaces(self, store):
        with store.transaction() as tx:
            tx.append_entries([entry(0, event_id="x"), entry(1, workspace="w2", event_id="x")])
        assert len(list(store.entries())) == 2

    def test_holding_the_same_run_position_twice_raises_store_integrity_error(self, store):
        with store.transaction() as tx:
            tx.put_held([held("r1", 3, 1.0)])
        with pytest.raises(StoreIntegrityError), store.transaction() as tx:
            tx.put_held([held("r1", 4, 1.0), held("r1", 3, 2.0)])
        with store.transaction() as tx:
            assert tx.load_held([("acme", "r1")]) == [held("r1", 3, 1.0)]

    def test_a_duplicate_merkle_node_raises_store_integrity_error(self, store):
        with store.transaction() as tx:
            tx.append_nodes([(STORED_NODE_LEVEL, 0, b"a" * 32)])
        with pytest.raises(StoreIntegrityError), store.transaction() as tx:
            tx.append_nodes([(STORED_NODE_LEVEL, 0, b"b" * 32)])
        assert store.node(STORED_NODE_LEVEL, 0) == b"a" * 32

    # -- the ledger on top of the store ---------------------------------------------------------

    def test_a_ledger_over_this_store_verifies_proves_and_exports_evidence(self, store):
        clock = FakeClock()
        ledger = make_ledger(store=store, clock=clock, checkpoint_every=400)
        events = workload_events(runs=40, workspaces=("acme", "beta"))
        for start in range(0, len(events), 300):
            clock.advance(1.0)
            report = ledger.append(items(events[start : start + 300]))
            assert report.quarantined == 0
        ledger.checkpoint()
        size = store.size()
        assert size == len(events)
        assert [r.event_id for r in store.entries()] == [e["event_id"] for e in events]
        result = verify(ledger)
        assert result.ok, result.reason
        assert result.checkpoints == len(store.checkpoints()) >= 2

        latest = store.latest_checkpoint()
        root = Checkpoint.parse(latest.note.split("\n\n", 1)[0] + "\n").root_hash
        assert ledger.root(size) == root
        for index in (0, 1, size // 3, size - 2, size - 1):
            leaf = next(store.entries(index, index + 1)).leaf_hash
            merkle.verify_inclusion(leaf, index, size, ledger.inclusion_proof(index, size), root)
        for cp in store.checkpoints()[:-1]:
            old_root = Checkpoint.parse(cp.note.split("\n\n", 1)[0] + "\n").root_hash
            proof = ledger.consistency_proof(cp.size, size)
            merkle.verify_consistency(cp.size, size, old_root, root, proof)

        ev = events[len(events) // 2]
        bundle = build_evidence(ledger, ev["workspace"], ev["run_id"])
        checked = verify_evidence(bundle, [ledger.signer.vkey])
        assert checked.ok, checked.reason
        assert checked.entries == len(store.run_entries(ev["workspace"], ev["run_id"]))
        assert (
            base64.b64decode(bundle["entries"][0]["bytes"])
            == store.run_entries(ev["workspace"], ev["run_id"])[0].data
        )

    def test_records_are_a_workspaces_platform_records_paged_by_index_and_typed(self, store):
        clock = FakeClock()
        ledger = make_ledger(store=store, clock=clock)
        ledger.append(items([event("r1", 0), event("r1", 0, workspace="beta")]))

        def rec(ws: str, rtype: str = "audit.read", n: int = 0) -> Record:
            return Record(rtype, ws, "2026-01-01T00:00:00Z", {"key_id": "k1"}, {"n": n})

        first = ledger.append_records([rec("acme", n=0), rec("beta"), rec("acme", "console.action", 1)])
        second = ledger.append_records([rec("acme", n=2)])
        assert first == [2, 3, 4] and second == [5]
        got = store.records("acme")
        assert [r.index for r in got] == [2, 4, 5]
        assert all(r.kind == "record" and r.run_id is None and r.seq is None for r in got)
        assert [r.event_id for r in got] == ["record/2", "record/4", "record/5"]
        assert [r.event_type for r in got] == ["audit.read", "console.action", "audit.read"]
        assert [r.index for r in store.records("acme", after=2, limit=1)] == [4]
        assert [r.index for r in store.records("acme", record_type="audit.read")] == [2, 5]
        assert [r.index for r in store.records("beta")] == [3]
        assert store.records("gamma") == []
        assert store.run_entries("acme", "r1")[0].index == 0  # events are not records
        ledger.checkpoint()
        result = verify(ledger)
        assert result.ok, result.reason

    def test_records_of_types_are_a_workspaces_records_of_those_types_only_after_an_index(self, store):
        ledger = make_ledger(store=store, clock=FakeClock())
        ledger.append(items([event("r1", 0)]))

        def rec(ws: str, rtype: str, n: int = 0) -> Record:
            return Record(rtype, ws, "2026-01-01T00:00:00Z", {"key_id": "k1"}, {"n": n})

        written = ledger.append_records([
            rec("acme", "halt.set", 0), rec("acme", "audit.read"), rec("beta", "halt.set"),
            rec("acme", "console.action"), rec("acme", "halt.cleared", 1), rec("acme", "halt.set", 2),
        ])
        assert written == [1, 2, 3, 4, 5, 6]
        halts = ("halt.set", "halt.cleared")
        got = store.records_of_types("acme", halts)
        assert [r.index for r in got] == [1, 5, 6]
        assert [r.event_type for r in got] == ["halt.set", "halt.cleared", "halt.set"]
        assert all(r.kind == "record" and r.workspace == "acme" for r in got)
        assert [loads(r.data)["record"]["data"]["n"] for r in got] == [0, 1, 2]
        assert [r.index for r in store.records_of_types("acme", halts, after=1)] == [5, 6]
        assert [r.index for r in store.records_of_types("acme", halts, after=1, limit=1)] == [5]
        assert [r.index for r in store.records_of_types("acme", ["halt.cleared"])] == [5]
        assert [r.index for r in store.records_of_types("beta", halts)] == [3]
        assert store.records_of_types("acme", halts, after=6) == []
        assert store.records_of_types("gamma", halts) == []
        assert store.records_of_types("acme", []) == []
        assert store.records_of_types("acme", ["run.started"]) == []  # events are not records

    def test_a_ledger_absorbs_redelivery_and_keeps_every_event_exactly_once(self, store):
        ledger = make_ledger(store=store)
        events = workload_events(runs=10)
        first = ledger.append(items(events[:100]))
        again = ledger.append(items(events))
        assert first.accepted + again.accepted == len(events)
        assert again.duplicates == 100
        ids = [r.event_id for r in store.entries()]
        assert sorted(ids) == sorted(e["event_id"] for e in events) and len(set(ids)) == len(ids)

    def test_a_ledger_holds_an_early_event_until_its_gap_fills_in_a_later_batch(self, store):
        ledger = make_ledger(store=store)
        evs = [event(seq=0), event(seq=1, etype="run.completed",
                                   data={"outcome": "succeeded"})]  # fmt: skip
        assert [o.status for o in ledger.append(items(evs[1:])).results] == ["held"]
        assert store.size() == 0
        report = ledger.append(items(evs[:1]))
        assert report.accepted == 2 and store.size() == 2
        with store.transaction() as tx:
            assert tx.count_held() == 0
        assert [r.seq for r in store.run_entries("acme", "r1")] == [0, 1]

    def test_a_ledger_stores_offsets_in_the_same_transaction_as_the_events(self, store):
        ledger = make_ledger(store=store)
        events = workload_events(runs=3)
        raw = [
            type(i)(i.raw, Source(kind="kafka", topic="agent-events", partition=0, offset=n))
            for n, i in enumerate(items(events))
        ]
        ledger.append(raw, consumer="workers", offsets={("agent-events", 0): len(raw)})
        assert store.offsets("workers") == {("agent-events", 0): len(raw)}
        assert store.size() == len(raw)


    # -- approvals ------------------------------------------------------------------------------

    def test_approval_rows_are_upserted_by_workspace_and_id_and_read_back_inside_and_outside(self, store):
        first = approval_row("acme", "a/../1", 3)
        with store.transaction() as tx:
            tx.put_approvals([first, approval_row("beta", "a/../1", 4, run_id="r9")])
            assert tx.approvals([("acme", "a/../1"), ("acme", "missing")]) == {("acme", "a/../1"): first}
        assert store.approval("acme", "a/../1") == first
        assert store.approval("beta", "a/../1").run_id == "r9"
        assert store.approval("acme", "missing") is None
        decided = first.decided("approved", "Pat (apikey:1)", "2026-01-01T00:00:09Z", "fine", 9)
        with store.transaction() as tx:
            tx.put_approvals([decided])
        assert store.approval("acme", "a/../1") == decided

    def test_approval_pages_split_pending_from_decided_oldest_request_first(self, store):
        now = 1_000.0
        rows = [
            approval_row("acme", "open", 1),
            approval_row("acme", "timed-out", 2, expires_at=now - 1),
            approval_row("acme", "waits", 3, expires_at=now + 60),
            approval_row("acme", "run-ended", 4, closed=True),
            approval_row("acme", "yes", 5).decided("approved", "p", "t", None, 8),
            approval_row("acme", "no", 6).decided("rejected", "p", "t", "why", 7),
            approval_row("beta", "theirs", 7),
        ]
        with store.transaction() as tx:
            tx.put_approvals(rows)
        pending = store.approval_page("acme", decided=False, now=now)
        assert [r.approval_id for r in pending] == ["open", "waits"]
        assert [r.approval_id for r in store.approval_page("acme", decided=True, now=now)] == ["yes", "no"]
        assert [r.approval_id for r in store.approval_page("acme", decided=False, now=now, after=1)] == ["waits"]
        assert [r.approval_id for r in store.approval_page("acme", decided=False, now=now, limit=1)] == ["open"]
        assert [r.status(now) for r in rows] == ["pending", "expired", "pending", "expired", "approved",
                                                 "rejected", "pending"]

    def test_approval_rows_of_a_rolled_back_transaction_are_not_kept(self, store):
        class Boom(Exception):
            pass

        with pytest.raises(Boom), store.transaction() as tx:
            tx.put_approvals([approval_row("acme", "a1", 1)])
            raise Boom
        assert store.approval("acme", "a1") is None

    def test_a_ledger_refuses_a_reused_approval_id_and_an_approval_no_person_decided(self, store):
        ledger = make_ledger(store=store, approval_decisions="person")
        run = [event("r1", 0, "run.started", {"workflow": "w", "mode": "execute", "risk_tier": "low"}),
               event("r1", 1, "approval.requested", {"approval_id": "a/1", "summary": "s", "risk": "low"}),
               event("r1", 2, "approval.decided", {"approval_id": "a/1", "decision": "approved", "by": "p"})]
        other = [event("r2", 0, "run.started", {"workflow": "w", "mode": "execute", "risk_tier": "low"}),
                 event("r2", 1, "approval.requested", {"approval_id": "a/1", "summary": "s", "risk": "low"})]
        report = ledger.append(items(run + other))
        assert [r.status for r in report.results] == ["accepted", "accepted", "quarantined", "accepted",
                                                      "quarantined"]
        assert "no person decided" in report.results[2].reason
        assert "already used in workspace 'acme' by run 'r1'" in report.results[4].reason
        ledger.append_records([Record("approval.decision", "acme", "2026-01-01T00:01:00Z", {"key_id": "k"},
                                      {"approval_id": "a/1", "run_id": "r1", "decision": "approved", "by": "p"})])
        assert ledger.append(items(run[2:])).accepted == 1
        assert store.approval("acme", "a/1").decided_by == "p"
        ledger.checkpoint()
        assert verify_log(store.stored_entries(), [c.note for c in store.checkpoints()], [ledger.signer.vkey],
                          approvals_from=0).ok


def approval_row(workspace: str, approval_id: str, index: int, *, run_id: str = "r1",
                 expires_at: float | None = None, closed: bool = False) -> ApprovalRow:
    """A synthetic approval row requested at ledger ``index``."""
    return ApprovalRow(workspace, approval_id, run_id, index, f"2026-01-01T00:00:0{index % 10}Z",
                       f"summary {index}", "high", None, expires_at, closed)


class PersistentStoreContract:
    """Extra behaviours of adapters that keep their data in a database.

    A subclass gives ``raw_sql``: run one SQL statement (``%s`` placeholders, ``{zero_hash}``
    for the adapter's 32-zero-byte literal) straight on the database, as a tamperer would.
    """

    @pytest.mark.parametrize(("column", "value", "named"), COLUMN_TAMPERS)
    def test_an_edited_index_column_is_caught_by_verify(
        self, store, raw_sql, column, value, named
    ):
        ledger = make_ledger(store=store)
        ledger.append(items(workload_events(runs=6)))
        ledger.checkpoint()
        assert verify(ledger).ok
        last = store.run_entries("acme", store.entries(0, 1).__next__().run_id)[-1].index
        raw_sql(f"UPDATE entries SET {column} = {value} WHERE idx = %s", (last,))
        for entries in (store.stored_entries(), store.range_reader()):  # one pass; parallel chunks
            result = verify_log(
                entries, [c.note for c in store.checkpoints()], [ledger.signer.vkey],
                origin=ledger.config.origin, workers=2, chunk_bits=3,
            )
            assert not result.ok and result.position == last, result
            assert f"stored column {named} is" in result.reason

    def test_the_tail_after_a_verification_is_verified_through_the_reader_and_a_repeated_id_found(
        self, store, raw_sql
    ):
        ledger = make_ledger(store=store)
        events = workload_events(runs=8)
        first = [e for e in events if e["run_id"] < "run-0000004"]
        ledger.append(items(first))
        notes = lambda: [c.note for c in store.checkpoints()]  # noqa: E731
        full = verify_log(store.range_reader(), notes(), [ledger.signer.vkey], allow_unsigned_tail=True)
        assert full.ok and full.state is not None
        size = store.size()
        ledger.append(items([e for e in events if e["run_id"] >= "run-0000004"]))
        assert store.range_reader().repeated_event_id_in(size, store.size()) is None
        tail = verify_tail(full.state, store.range_reader(), notes(), store.node, allow_unsigned_tail=True)
        assert tail.ok and (tail.entries, tail.root) == (store.size(), ledger.root(store.size()).hex())
        raw_sql("DROP INDEX entries_event_id", ())  # a tamperer's first step: then an id repeats
        raw_sql("UPDATE entries SET event_id = %s WHERE idx = %s", (first[0]["event_id"], size + 3))
        assert store.range_reader().repeated_event_id_in(size, store.size()) == (size + 3, first[0]["event_id"])

    def test_the_reader_gives_each_runs_last_entry_below_a_position_and_a_bounded_tail_uses_it(self, store):
        ledger = make_ledger(store=store)
        ledger.append(items([event("r1", 0), event("r2", 0),
                             event("r1", 1, "approval.requested", {"approval_id": "a1", "summary": "s", "risk": "low"})]))
        reader = store.range_reader()
        got = reader.last_of_runs([("acme", "r1"), ("acme", "r2"), ("acme", "nope"), ("other", "r1")], 3)
        assert set(got) == {("acme", "r1"), ("acme", "r2")}
        assert got[("acme", "r1")] == (2, dict(store.raw_entries(2, 3))[2])  # the highest seq, not the first
        assert reader.last_of_runs([("acme", "r1")], 2) == {("acme", "r1"): (0, dict(store.raw_entries(0, 1))[0])}
        notes = lambda: [c.note for c in store.checkpoints()]  # noqa: E731
        full = verify_log(reader, notes(), [ledger.signer.vkey], allow_unsigned_tail=True)
        assert full.ok and full.state is not None
        full.state.chains.trim(1)  # holds r2 only (its first entry in the last chunk is the later one)
        assert list(full.state.chains.recent) == [("acme", "r2")]
        ledger.append(items([event("r1", 2, "run.completed", {"outcome": "failed"})]))
        tail = verify_tail(full.state, store.range_reader(), notes(), store.node, allow_unsigned_tail=True)
        assert tail.ok, tail.reason
        assert (tail.runs, full.state.chains.looked_up) == (2, 1)

    def test_a_full_round_in_a_process_of_its_own_reads_this_store_and_its_state_goes_on_here(self, store):
        from domain.verify_round import FullRound

        ledger = make_ledger(store=store)
        events = workload_events(runs=6)
        ledger.append(items(events[: len(events) // 2]))
        notes = lambda: [c.note for c in store.checkpoints()]  # noqa: E731
        apart = FullRound(store.range_reader(), notes(), [ledger.signer.vkey], None, None, 1).run_apart(lambda: False)
        here = verify_log(store.range_reader(), notes(), [ledger.signer.vkey], allow_unsigned_tail=True)
        assert apart.ok and (apart.entries, apart.root, apart.runs) == (here.entries, here.root, here.runs)
        assert apart.state is not None and len(apart.state.chains) == 1
        ledger.append(items(events[len(events) // 2:]))
        tail = verify_tail(apart.state, store.range_reader(), notes(), store.node, allow_unsigned_tail=True)
        assert tail.ok and tail.root == ledger.root(store.size()).hex(), tail.reason

    def test_reopening_the_store_keeps_everything_and_schema_creation_is_idempotent(
        self, open_store: OpenStore
    ):
        first = open_store()
        ledger = make_ledger(store=first)
        events = workload_events(runs=5)
        ledger.append(items(events))
        ledger.checkpoint()
        before = list(first.raw_entries())
        first.close()
        second = open_store()
        try:
            assert list(second.raw_entries()) == before
            assert second.get_meta("origin") == ledger.config.origin
            reopened = make_ledger(store=second)
            assert verify(reopened).ok
            assert reopened.append(items(events)).duplicates == len(events)
        finally:
            second.close()

    def test_approval_rows_survive_reopening(self, open_store: OpenStore):
        first = open_store()
        row = approval_row("acme", "../x", 2, expires_at=12.5).decided("rejected", "p", "t", "no", 5)
        with first.transaction() as tx:
            tx.put_approvals([row])
        first.close()
        second = open_store()
        try:
            assert second.approval("acme", "../x") == row
        finally:
            second.close()

    def test_cosignatures_survive_reopening(self, open_store: OpenStore):
        first = open_store()
        row = CosignatureRow(3, "w.example/a+0a0b0c0d", "— w.example/a AAAA\n", 100)
        first.add_cosignatures([row])
        first.close()
        second = open_store()
        try:
            assert second.cosignatures(3) == [row]
        finally:
            second.close()
