"""PostgreSQL ledger store: one ledger shared by ingest workers on several machines.

Appends run side by side (``append_transaction``): a batch locks only the runs (and approvals)
it touches, is assigned a range of ledger positions by one short statement, builds and hashes
its entries and writes them outside any ledger-wide lock, and only then waits for its turn to
integrate them into the Merkle tree: the ``head`` row is locked from that moment to the commit.
Everything else a batch locks, it locks before it is assigned positions; so a batch waiting for
its turn waits only for batches that hold everything they need.
A batch whose predecessor failed without integrating finds a hole in the positions: the hole is
closed by voiding every pending assignment (a new epoch), and those batches are redone (see
docs/decisions/0010-postgres-batched-integration.md). ``transaction()`` (and the store's
``serial`` mode, kept to measure against) locks the head row for the whole transaction instead.

Bulk writes use binary ``COPY`` and lookups use ``unnest`` arrays: a batch of 10,000 events
costs 17 round trips. Reads use a separate autocommit connection per thread.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from psycopg import pq

from domain.approvals import APPROVAL_COLUMNS, ApprovalRow, row_of, row_values
from domain.errors import NotFoundError, StoreError, StoreIntegrityError, StoreRetryError
from domain.ports import (
    CheckpointRow,
    CosignatureRow,
    EntryRow,
    Head,
    HeldRow,
    LedgerStore,
    LedgerTx,
    QuarantineRow,
    QuarantineUsage,
    Source,
    event_hash_of,
    first_repeated_event_id,
    last_run_entries,
    nodes_to_store,
    repeated_event_id_in,
)
from domain.verify_scan import RangeReaderBase

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS head (
  id INTEGER PRIMARY KEY CHECK (id = 1), size BIGINT NOT NULL, frontier BYTEA NOT NULL,
  checkpoint_size BIGINT NOT NULL, checkpoint_time DOUBLE PRECISION NOT NULL);
INSERT INTO head (id, size, frontier, checkpoint_size, checkpoint_time)
  VALUES (1, 0, '\\x', 0, 0) ON CONFLICT (id) DO NOTHING;
CREATE TABLE IF NOT EXISTS entries (
  idx BIGINT PRIMARY KEY, data BYTEA NOT NULL, leaf BYTEA NOT NULL, kind TEXT NOT NULL,
  workspace TEXT, run_id TEXT, seq BIGINT, event_id TEXT, type TEXT, time TEXT,
  event_hash BYTEA);
CREATE UNIQUE INDEX IF NOT EXISTS entries_run_seq ON entries (workspace, run_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS entries_event_id ON entries (workspace, event_id);
CREATE INDEX IF NOT EXISTS entries_run_start ON entries (run_id) WHERE seq = 0;
CREATE INDEX IF NOT EXISTS entries_records ON entries (workspace, idx) WHERE kind = 'record';
CREATE INDEX IF NOT EXISTS entries_record_types ON entries (workspace, type, idx) WHERE kind = 'record';
CREATE TABLE IF NOT EXISTS nodes (
  level INTEGER NOT NULL, idx BIGINT NOT NULL, hash BYTEA NOT NULL, PRIMARY KEY (level, idx));
CREATE TABLE IF NOT EXISTS runs (
  workspace TEXT NOT NULL, run_id TEXT NOT NULL, state BYTEA NOT NULL,
  PRIMARY KEY (workspace, run_id));
CREATE TABLE IF NOT EXISTS quarantine (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, raw BYTEA NOT NULL, reason TEXT NOT NULL,
  source TEXT NOT NULL, received TEXT NOT NULL, workspace TEXT, run_id TEXT, event_id TEXT);
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS raw_size BIGINT;
ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS raw_sha256 BYTEA;
CREATE INDEX IF NOT EXISTS quarantine_by_workspace ON quarantine (workspace, id);
CREATE TABLE IF NOT EXISTS quarantine_usage (
  bucket TEXT PRIMARY KEY, items BIGINT NOT NULL, kept_bytes BIGINT NOT NULL,
  truncated BIGINT NOT NULL);
UPDATE quarantine SET workspace = split_part(source::json->>'name', '/', 1)
  WHERE workspace IS NULL AND source::json->>'kind' IN ('http', 'otlp')
    AND position('/' IN coalesce(source::json->>'name', '')) > 1;
UPDATE quarantine SET raw_size = length(raw), raw_sha256 = sha256(raw) WHERE raw_size IS NULL;
INSERT INTO quarantine_usage (bucket, items, kept_bytes, truncated)
  SELECT coalesce(workspace, ''), count(*), sum(length(raw)), 0 FROM quarantine GROUP BY 1
  ON CONFLICT (bucket) DO NOTHING;
CREATE TABLE IF NOT EXISTS held (
  workspace TEXT NOT NULL, run_id TEXT NOT NULL, seq BIGINT NOT NULL, raw BYTEA NOT NULL,
  source TEXT NOT NULL, held_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (workspace, run_id, seq));
CREATE INDEX IF NOT EXISTS held_by_age ON held (held_at);
CREATE TABLE IF NOT EXISTS offsets (
  consumer TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
  next_offset BIGINT NOT NULL, PRIMARY KEY (consumer, topic, partition));
CREATE TABLE IF NOT EXISTS checkpoints (
  id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, size BIGINT NOT NULL, note TEXT NOT NULL,
  created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cosignatures (
  size BIGINT NOT NULL, witness TEXT NOT NULL, line TEXT NOT NULL, timestamp BIGINT NOT NULL,
  PRIMARY KEY (size, witness));
CREATE TABLE IF NOT EXISTS approvals (
  workspace TEXT NOT NULL, approval_id TEXT NOT NULL, run_id TEXT NOT NULL,
  requested_index BIGINT NOT NULL, requested_at TEXT NOT NULL, summary TEXT NOT NULL,
  risk TEXT NOT NULL, change_id TEXT, expires_at DOUBLE PRECISION, closed BOOLEAN NOT NULL,
  decision TEXT, decided_by TEXT, decided_at TEXT, reason TEXT, decision_index BIGINT,
  PRIMARY KEY (workspace, approval_id));
CREATE INDEX IF NOT EXISTS approvals_by_request ON approvals (workspace, requested_index);
CREATE TABLE IF NOT EXISTS sequencer (
  id INTEGER PRIMARY KEY CHECK (id = 1), next BIGINT NOT NULL, epoch BIGINT NOT NULL);
INSERT INTO sequencer (id, next, epoch) SELECT 1, size, 0 FROM head ON CONFLICT (id) DO NOTHING;
"""

_TABLES = (
    "meta",
    "head",
    "entries",
    "nodes",
    "runs",
    "quarantine",
    "quarantine_usage",
    "held",
    "offsets",
    "checkpoints",
    "cosignatures",
    "entries_record_types",  # an index added later: a ledger without it gets it on open
    "approvals",
    "sequencer",
)

# pg_advisory_xact_lock key serialising concurrent schema creation ("tachograph" in ASCII).
_SCHEMA_LOCK = 0x74616368_6F677261
# advisory lock keys of concurrent appends (one-key form; the approvals' own keys are hashes)
_EXCEPTIONS_LOCK = 0x74616368_686F6C64  # the hold buffer and quarantine budgets
_SEQUENCING_LOCK = 0x74616368_73657173  # held while one batch is assigned its positions
_APPROVALS_LOCK = 0x74616368_61707072  # shared per approval-locking batch, exclusive past a bound
_MAX_APPROVAL_LOCKS = 256  # more keys than this in one transaction: all approvals at once
# two-key form (namespace + epoch, low 32 bits of the first position) of a pending assignment
_ASSIGNED = 0x74610000
_NO_STATE = b""  # the state of a run row a writer created to lock a run that has none yet

_ENTRY_COLS = "idx, data, leaf, kind, workspace, run_id, seq, event_id, type, time, event_hash"
_ENTRY_TYPES = [
    "int8", "bytea", "bytea", "text", "text", "text", "int8", "text", "text", "text", "bytea",
]  # fmt: skip
_STORED_COLS = "data, kind, workspace, run_id, seq, event_id, type, time, leaf"
_STORED_TYPES = ["bytea", "text", "text", "text", "int8", "text", "text", "text", "bytea"]
_HELD_COLS = "workspace, run_id, seq, raw, source, held_at"
_PAGE = 5_000
_UNATTRIBUTED = ""  # the bucket key of items with no workspace (no workspace name is empty)
_QUARANTINE_COLS = (
    "id, raw, reason, source, received, workspace, run_id, event_id, raw_size, raw_sha256, length(raw)"
)
_MAX_INDEX = 2**62


def redact(dsn: str) -> str:
    """The connection string with any password replaced by ``***`` (safe to log)."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)(\S+)", r"\1***", dsn, flags=re.IGNORECASE)


def _reason(e: psycopg.Error) -> str:
    """A one-line driver message (first line of the server's error)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _source_text(source: Source) -> str:
    return orjson.dumps(source.to_json()).decode()


def _held(r: Sequence[Any]) -> HeldRow:
    return HeldRow(
        str(r[0]),
        str(r[1]),
        int(r[2]),
        bytes(r[3]),
        Source.from_json(orjson.loads(r[4])),
        float(r[5]),
    )


def _bucket(workspace: str | None) -> str:
    return _UNATTRIBUTED if workspace is None else workspace


def _quarantined(r: Sequence[Any]) -> QuarantineRow:
    qid, raw, reason, src, rec, ws, run, eid, size, digest, kept = r
    return QuarantineRow(
        bytes(raw), str(reason), Source.from_json(orjson.loads(src)), str(rec), ws, run, eid,
        int(qid), int(size), bytes(digest), int(kept),
    )


def _entry(r: Sequence[Any]) -> EntryRow:
    return EntryRow(
        index=int(r[0]),
        data=bytes(r[1]),
        leaf_hash=bytes(r[2]),
        kind=str(r[3]),
        workspace=r[4],
        run_id=r[5],
        seq=None if r[6] is None else int(r[6]),
        event_id=r[7],
        event_type=r[8],
        event_time=r[9],
        event_hash=None if r[10] is None else bytes(r[10]),
    )


def _stored(r: Sequence[Any]) -> tuple[Any, ...]:
    """``(index, *StoredRow)`` from a row of ``idx, _STORED_COLS``."""
    return (int(r[0]), bytes(r[1]), *r[2:9], bytes(r[9]))


def _frontier_list(raw: bytes) -> list[bytes]:
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


Conn = psycopg.Connection[tuple[Any, ...]]

_RANGE_CONNS: dict[tuple[int, str], Conn] = {}


def _open(dsn: str) -> Conn:
    """An autocommit connection, or a StoreError that names the server (never the password)."""
    try:
        return psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as e:
        raise StoreError(f"cannot open PostgreSQL ledger {redact(dsn)}: {_reason(e)}") from e


class PostgresRangeReader(RangeReaderBase):
    """Reads entry ranges for parallel verification; each process opens its own connection."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def _conn(self) -> Conn:
        key = (os.getpid(), self.dsn)  # never reuse a connection across fork
        conn = _RANGE_CONNS.get(key)
        if conn is None or conn.closed or conn.broken:
            conn = _RANGE_CONNS[key] = _open(self.dsn)
        return conn

    def size(self) -> int:
        # every stored row counts, whatever the head says: extra rows must be seen
        try:
            row = self._conn().execute("SELECT coalesce(max(idx) + 1, 0) FROM entries").fetchone()
        except psycopg.Error as e:
            raise StoreError(f"ledger read failed: {_reason(e)}") from e
        return 0 if row is None else int(row[0])

    def repeated_event_id(self, end: int) -> tuple[int, str] | None:
        try:
            with _open(self.dsn) as conn:  # its own: this runs on a thread beside the scans
                return first_repeated_event_id(conn.execute, end, "%s")
        except psycopg.Error as e:
            raise StoreError(f"ledger read failed: {_reason(e)}") from e

    def repeated_event_id_in(self, start: int, end: int) -> tuple[int, str] | None:
        try:
            return repeated_event_id_in(self._conn().execute, start, end, "%s")
        except psycopg.Error as e:
            raise StoreError(f"ledger read failed: {_reason(e)}") from e

    def last_of_runs(self, keys: Sequence[tuple[Any, Any]], before: int) -> dict[tuple[Any, Any], tuple[int, bytes]]:
        try:
            return last_run_entries(self._conn().execute, keys, before, "%s")
        except psycopg.Error as e:
            raise StoreError(f"ledger read failed: {_reason(e)}") from e

    def read(self, start: int, end: int) -> list[tuple[Any, ...]]:
        try:
            with (
                self._conn().cursor() as cur,
                cur.copy(
                    f"COPY (SELECT idx, {_STORED_COLS} FROM entries WHERE idx >= %s AND idx < %s "
                    "ORDER BY idx) TO STDOUT (FORMAT BINARY)",
                    (start, end),
                ) as copy,
            ):
                copy.set_types(["int8", *_STORED_TYPES])
                return [_stored(r) for r in copy.rows()]
        except psycopg.Error as e:
            raise StoreError(f"ledger read failed: {_reason(e)}") from e


@dataclass
class LockStats:
    """How long this store's writers held the ledger-wide lock (the head row), and for what.

    Batched appends hold it from their turn to integrate until their commit; ``transaction()``
    and the serial mode from the transaction's start. The sequencing statement (a row lock held
    for one statement) counts too.
    """

    held_s: float = 0.0
    waited_s: float = 0.0  # waiting for it (batched: for every earlier position's integration too)
    transactions: int = 0
    entries: int = 0


def _assigned_key(epoch: int, first: int) -> tuple[int, int]:
    """The two-key advisory lock a batch holds while its positions from ``first`` are pending."""
    return _ASSIGNED + epoch % 65536, first % 2**32 - 2**31


def _approval_key(key: tuple[str, str]) -> int:
    """A signed 64-bit advisory lock key for one (workspace, approval_id)."""
    digest = hashlib.blake2b(f"{key[0]}\x00{key[1]}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_SEQUENCE = "UPDATE sequencer SET next = next + %(n)s WHERE id = 1 RETURNING next - %(n)s, epoch"
# void every pending assignment (a new epoch, handing out positions again from the integrated
# size), if the head is still at the size seen, in the epoch seen: the head row lock makes it
# wait for an integration in progress, and only the first of several voiders changes anything
VOID_WAIT_S = 1.0
"""Seconds a writer waits for the head row to void stale positions before its batch is redone."""
_VOID = (
    "WITH h AS (SELECT size FROM head WHERE id = 1 FOR UPDATE) "
    "UPDATE sequencer s SET next = h.size, epoch = s.epoch + 1 FROM h "
    "WHERE s.id = 1 AND s.epoch = %s AND h.size = %s"
)


class PostgresTx(LedgerTx):
    """A write transaction on the writer connection.

    Serial (``transaction()``): it holds the head row lock from its start. Batched
    (``append_transaction()``): it locks the runs and approvals it touches, gets its positions
    from ``sequence`` and takes the head row lock only in ``head()``, when its turn comes.
    """

    def __init__(self, conn: Conn, store: PostgresStore | None = None, serial: bool = True) -> None:
        self.c = conn
        self.store = store
        self.serial = serial
        self.first: int | None = None  # the first position sequenced for this transaction
        self.count = 0
        self.epoch = 0
        self.sequencing = False  # holding the sequencing lock (a session lock: see sequence)
        self.locked_at: float | None = None  # when this transaction took the head row lock
        self.placeholders: set[tuple[str, str]] = set()  # run rows created to lock new runs
        self.saved: set[tuple[str, str]] = set()
        self.approvals_mode = ""  # "", "shared" (per key) or "all"
        self.approval_locks = 0

    def _copy(
        self, table: str, cols: str, types: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> None:
        if not rows:
            return
        with (
            self.c.cursor() as cur,
            cur.copy(f"COPY {table} ({cols}) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(list(types))
            for row in rows:
                copy.write_row(row)

    def head(self) -> Head:
        if not self.serial and self.locked_at is None:
            start = time.perf_counter()
            if self.first is not None:
                self._wait_for_turn()
            row = self.c.execute(
                "SELECT h.size, h.frontier, h.checkpoint_size, h.checkpoint_time, s.epoch "
                "FROM head h, sequencer s WHERE h.id = 1 AND s.id = 1 FOR UPDATE OF h"
            ).fetchone()
            self.locked_at = time.perf_counter()
            if self.store is not None:
                self.store.lock_stats.waited_s += self.locked_at - start
            if row is None:
                raise StoreError("the ledger's head or sequencer row is missing")
            if self.first is not None and (int(row[0]) != self.first or int(row[4]) != self.epoch):
                raise StoreRetryError("this batch's ledger positions were voided; nothing was written")
            return Head(int(row[0]), _frontier_list(bytes(row[1])), int(row[2]), float(row[3]))
        return self.peek_head()

    def peek_head(self) -> Head:
        row = self.c.execute(
            "SELECT size, frontier, checkpoint_size, checkpoint_time FROM head WHERE id = 1"
        ).fetchone()
        if row is None:
            return Head()
        return Head(int(row[0]), _frontier_list(bytes(row[1])), int(row[2]), float(row[3]))

    # -- concurrent appends -------------------------------------------------------------------

    def sequence(self, count: int) -> int:
        if self.serial:
            self.count = count
            return self.peek_head().size
        if self.first is not None or count < 1:
            raise StoreError("a transaction is sequenced once, for one or more entries")
        assert self.store is not None
        # The positions come from the sequencer row, updated on the writer's autocommit
        # connection so that the next batch sees them taken at once; this transaction then
        # holds the assignment's advisory lock until it ends. The sequencing lock makes the two
        # steps one: a later batch finds the lock of every earlier assignment already taken.
        start = time.perf_counter()
        self.c.execute("SELECT pg_advisory_lock(%s)", (_SEQUENCING_LOCK,))
        self.sequencing = True
        row = self.store._sequencer_conn().execute(_SEQUENCE, {"n": count}).fetchone()
        assert row is not None
        self.first, self.epoch, self.count = int(row[0]), int(row[1]), count
        self.c.execute(  # in this order (a failure leaves the unlock to the transaction's end)
            "SELECT pg_advisory_xact_lock(%s, %s), pg_advisory_unlock(%s)",
            (*_assigned_key(self.epoch, self.first), _SEQUENCING_LOCK),
        )
        self.sequencing = False
        self.store.lock_stats.held_s += time.perf_counter() - start
        return self.first

    def _wait_for_turn(self) -> None:
        """Wait until every position before this transaction's is integrated.

        Each pending assignment's holder keeps an advisory lock until its transaction ends: a
        writer waits on the lock of the assignment at the integrated size. If that one ended
        without integrating (it failed, or its process died), its positions are a hole that
        nothing will fill: every pending assignment is voided and this batch is redone.
        """
        assert self.store is not None and self.first is not None
        while True:
            row = self.c.execute(
                "SELECT h.size, s.epoch FROM head h, sequencer s WHERE h.id = 1 AND s.id = 1"
            ).fetchone()
            assert row is not None
            size, epoch = int(row[0]), int(row[1])
            if epoch != self.epoch:
                raise StoreRetryError("this batch's ledger positions were voided; nothing was written")
            if size == self.first:
                return
            if size < self.first:
                key = _assigned_key(epoch, size)
                self.c.execute(
                    "SELECT pg_advisory_lock_shared(%s, %s), pg_advisory_unlock_shared(%s, %s)",
                    (*key, *key),
                )
                again = self.c.execute("SELECT size FROM head WHERE id = 1").fetchone()
                if again is None or int(again[0]) != size:
                    continue  # it integrated: look again
            # a hole at ``size`` (its holder ended without integrating), or positions handed
            # out below what is integrated (a sequencer behind the head): start a new epoch
            self._void(epoch, size)

    def _void(self, epoch: int, size: int) -> None:
        """Void the pending assignments (``_VOID``) on the sequencer connection, waiting at most
        ``VOID_WAIT_S`` for the head row.

        That wait is one PostgreSQL cannot see the whole of: while this process waits on its
        sequencer connection, its writer transaction keeps the locks it holds (its assignment,
        its runs), and a writer holding the head row may be waiting for one of them. PostgreSQL
        finds no cycle, and both would wait out the lock timeout. A short wait, then this batch
        undone and redone (nothing of it is written yet), breaks such a cycle at once.
        """
        assert self.store is not None
        conn = self.store._sequencer_conn()
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = {int(VOID_WAIT_S * 1000)}")
                conn.execute(_VOID, (epoch, size))
        except psycopg.errors.LockNotAvailable as e:
            raise StoreRetryError("voiding stale ledger positions waited too long for the head; "
                                  "this batch is redone") from e

    def lock_runs(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        if self.serial or not keys:
            return self.load_runs(keys)
        ws, runs = [k[0] for k in keys], [k[1] for k in keys]
        with self.c.pipeline():  # one round trip: create the missing rows, then lock them all
            created = self.c.execute(
                "INSERT INTO runs (workspace, run_id, state) "
                "SELECT w, r, %s FROM unnest(%s::text[], %s::text[]) AS k(w, r) "
                "ON CONFLICT (workspace, run_id) DO NOTHING RETURNING workspace, run_id",
                (_NO_STATE, ws, runs),
            )
            locked = self.c.execute(
                "SELECT r.workspace, r.run_id, r.state FROM runs r "
                "JOIN unnest(%s::text[], %s::text[]) AS k(workspace, run_id) USING (workspace, run_id) "
                "ORDER BY r.workspace, r.run_id FOR UPDATE OF r",
                (ws, runs),
            )
        self.placeholders.update((str(w), str(r)) for w, r in created.fetchall())
        return {(str(w), str(r)): bytes(st) for w, r, st in locked.fetchall() if bytes(st)}

    def lock_approvals(self, keys: Sequence[tuple[str, str]]) -> None:
        if self.serial or not keys or self.approvals_mode == "all":
            return
        if self.approval_locks + len(keys) > _MAX_APPROVAL_LOCKS:
            self.c.execute("SELECT pg_advisory_xact_lock(%s)", (_APPROVALS_LOCK,))
            self.approvals_mode = "all"
            return
        if not self.approvals_mode:
            self.c.execute("SELECT pg_advisory_xact_lock_shared(%s)", (_APPROVALS_LOCK,))
            self.approvals_mode = "shared"
        self.c.execute(
            "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::int8[]) AS k",
            (sorted({_approval_key(k) for k in keys}),),
        )
        self.approval_locks += len(keys)

    def lock_exceptions(self) -> None:
        if not self.serial:
            self.c.execute("SELECT pg_advisory_xact_lock(%s)", (_EXCEPTIONS_LOCK,))

    def finish(self) -> None:
        """Before commit: drop the run rows created only to lock runs that got no state."""
        unsaved = sorted(self.placeholders - self.saved)
        if unsaved:
            self.c.execute(
                "DELETE FROM runs r USING unnest(%s::text[], %s::text[]) AS k(workspace, run_id) "
                "WHERE r.workspace = k.workspace AND r.run_id = k.run_id AND r.state = %s",
                ([k[0] for k in unsaved], [k[1] for k in unsaved], _NO_STATE),
            )

    def save_head(self, head: Head) -> None:
        self.c.execute(
            "UPDATE head SET size = %s, frontier = %s, checkpoint_size = %s, checkpoint_time = %s "
            "WHERE id = 1",
            (head.size, b"".join(head.frontier), head.checkpoint_size, head.checkpoint_time),
        )

    def meta(self, key: str) -> str | None:
        row = self.c.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.c.execute(
            "INSERT INTO meta (key, value) VALUES (%s, %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def load_runs(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        if not keys:
            return {}
        rows = self.c.execute(
            "SELECT r.workspace, r.run_id, r.state FROM runs r "
            "JOIN unnest(%s::text[], %s::text[]) AS k(workspace, run_id) USING (workspace, run_id)",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
        return {(str(ws), str(run)): bytes(st) for ws, run, st in rows if bytes(st)}

    def save_runs(self, states: Mapping[tuple[str, str], bytes]) -> None:
        if not states:
            return
        self.saved.update(states)
        self.c.execute(
            "INSERT INTO runs (workspace, run_id, state) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::bytea[]) "
            "ON CONFLICT (workspace, run_id) DO UPDATE SET state = excluded.state",
            ([k[0] for k in states], [k[1] for k in states], list(states.values())),
        )

    def event_hashes(
        self, workspace_event_ids: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, int, bytes]]:
        if not workspace_event_ids:
            return {}
        rows = self.c.execute(
            "SELECT e.workspace, e.event_id, e.run_id, e.seq, e.data FROM entries e "
            "JOIN unnest(%s::text[], %s::text[]) AS k(workspace, event_id) "
            "USING (workspace, event_id)",
            ([k[0] for k in workspace_event_ids], [k[1] for k in workspace_event_ids]),
        ).fetchall()
        return {
            (str(ws), str(eid)): (str(run), int(seq), event_hash_of(bytes(d)))
            for ws, eid, run, seq, d in rows
        }

    def seq_hashes(self, keys: Sequence[tuple[str, str, int]]) -> dict[tuple[str, str, int], bytes]:
        if not keys:
            return {}
        rows = self.c.execute(
            "SELECT e.workspace, e.run_id, e.seq, e.data FROM entries e "
            "JOIN unnest(%s::text[], %s::text[], %s::int8[]) AS k(workspace, run_id, seq) "
            "USING (workspace, run_id, seq)",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
        ).fetchall()
        return {(str(ws), str(run), int(seq)): event_hash_of(bytes(d)) for ws, run, seq, d in rows}

    def append_entries(self, rows: Sequence[EntryRow]) -> None:
        self._copy(
            "entries",
            _ENTRY_COLS,
            _ENTRY_TYPES,
            [
                (r.index, r.data, r.leaf_hash, r.kind, r.workspace, r.run_id, r.seq,
                 r.event_id, r.event_type, r.event_time, r.event_hash)
                for r in rows
            ],
        )  # fmt: skip

    def append_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self._copy(
            "nodes", "level, idx, hash", ["int4", "int8", "bytea"], nodes_to_store(nodes)
        )

    def add_quarantine(self, rows: Sequence[QuarantineRow]) -> None:
        values = []
        usage: dict[str, list[int]] = {}
        for r in rows:
            size, digest = r.stored()
            values.append((r.raw, r.reason, _source_text(r.source), r.received, r.workspace,
                           r.run_id, r.event_id, size, digest))
            u = usage.setdefault(_bucket(r.workspace), [0, 0, 0])
            u[0] += 1
            u[1] += len(r.raw)
            u[2] += len(r.raw) < size
        self._copy(
            "quarantine",
            "raw, reason, source, received, workspace, run_id, event_id, raw_size, raw_sha256",
            ["bytea", "text", "text", "text", "text", "text", "text", "int8", "bytea"],
            values,
        )
        if usage:
            self.c.execute(
                "INSERT INTO quarantine_usage AS u (bucket, items, kept_bytes, truncated) "
                "SELECT * FROM unnest(%s::text[], %s::int8[], %s::int8[], %s::int8[]) "
                "ON CONFLICT (bucket) DO UPDATE SET items = u.items + excluded.items, "
                "kept_bytes = u.kept_bytes + excluded.kept_bytes, "
                "truncated = u.truncated + excluded.truncated",
                (list(usage), [u[0] for u in usage.values()], [u[1] for u in usage.values()],
                 [u[2] for u in usage.values()]),
            )

    def quarantine_kept_bytes(self, workspace: str | None) -> int:
        row = self.c.execute(
            "SELECT kept_bytes FROM quarantine_usage WHERE bucket = %s", (_bucket(workspace),)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def load_held(self, keys: Sequence[tuple[str, str]]) -> list[HeldRow]:
        if not keys:
            return []
        rows = self.c.execute(
            "SELECT h.workspace, h.run_id, h.seq, h.raw, h.source, h.held_at FROM held h "
            "JOIN unnest(%s::text[], %s::text[]) AS k(workspace, run_id) USING (workspace, run_id) "
            "ORDER BY h.workspace, h.run_id, h.seq",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
        return [_held(r) for r in rows]

    def expired_held(self, older_than: float, limit: int) -> list[HeldRow]:
        rows = self.c.execute(
            f"SELECT {_HELD_COLS} FROM held WHERE held_at < %s "
            "ORDER BY held_at, workspace, run_id, seq LIMIT %s",
            (older_than, limit),
        ).fetchall()
        return [_held(r) for r in rows]

    def count_held(self) -> int:
        row = self.c.execute("SELECT count(*) FROM held").fetchone()
        return 0 if row is None else int(row[0])

    def count_held_in(self, workspace: str) -> int:
        row = self.c.execute("SELECT count(*) FROM held WHERE workspace = %s", (workspace,)).fetchone()
        return 0 if row is None else int(row[0])

    def put_held(self, rows: Sequence[HeldRow]) -> None:
        self._copy(
            "held",
            _HELD_COLS,
            ["text", "text", "int8", "bytea", "text", "float8"],
            [
                (r.workspace, r.run_id, r.seq, r.raw, _source_text(r.source), r.held_at)
                for r in rows
            ],
        )

    def drop_held(self, keys: Sequence[tuple[str, str, int]]) -> None:
        if not keys:
            return
        self.c.execute(
            "DELETE FROM held h USING unnest(%s::text[], %s::text[], %s::int8[]) "
            "AS k(workspace, run_id, seq) "
            "WHERE h.workspace = k.workspace AND h.run_id = k.run_id AND h.seq = k.seq",
            ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]),
        )

    def save_offsets(self, consumer: str, offsets: Mapping[tuple[str, int], int]) -> None:
        if not offsets:
            return
        self.c.execute(
            "INSERT INTO offsets (consumer, topic, partition, next_offset) "
            "SELECT %s, * FROM unnest(%s::text[], %s::int4[], %s::int8[]) "
            "ON CONFLICT (consumer, topic, partition) "
            "DO UPDATE SET next_offset = excluded.next_offset",
            (consumer, [k[0] for k in offsets], [k[1] for k in offsets], list(offsets.values())),
        )

    def add_checkpoint(self, row: CheckpointRow) -> None:
        self.c.execute(
            "INSERT INTO checkpoints (size, note, created) VALUES (%s, %s, %s)",
            (row.size, row.note, row.created),
        )

    def approvals(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], ApprovalRow]:
        if not keys:
            return {}
        rows = self.c.execute(  # one round trip for a batch's approvals
            f"SELECT {_APPROVAL_COLS} FROM approvals "
            "JOIN unnest(%s::text[], %s::text[]) AS k(workspace, approval_id) USING (workspace, approval_id)",
            ([k[0] for k in keys], [k[1] for k in keys]),
        ).fetchall()
        return {(r.workspace, r.approval_id): r for r in map(row_of, rows)}

    def put_approvals(self, rows: Sequence[ApprovalRow]) -> None:
        marks = ", ".join(["%s"] * len(APPROVAL_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in APPROVAL_COLUMNS[2:])
        with self.c.cursor() as cur:
            cur.executemany(
                f"INSERT INTO approvals ({_APPROVAL_COLS}) VALUES ({marks}) "
                f"ON CONFLICT (workspace, approval_id) DO UPDATE SET {updates}",
                [row_values(r) for r in rows],
            )


_APPROVAL_COLS = ", ".join(APPROVAL_COLUMNS)
_PENDING = "decision IS NULL AND NOT closed AND (expires_at IS NULL OR expires_at > %s)"


class PostgresStore(LedgerStore):
    """Ledger in a PostgreSQL database, safe for concurrent writers in many processes.

    Args:
        dsn: libpq connection string or ``postgresql://`` URL.
        lock_timeout_s: how long a writer waits for a lock (its runs, its turn to integrate, the
            ledger write lock) before failing.
        serial: appends hold the ledger-wide lock for their whole transaction, as before batched
            integration existed. Kept to measure against (``bench/postgres_store.py``); it may
            share a ledger with batched writers (overlapping positions are refused and redone).
    """

    def __init__(self, dsn: str, *, lock_timeout_s: float = 60.0, serial: bool = False) -> None:
        self.dsn = dsn
        self.lock_timeout_s = lock_timeout_s
        self.serial = serial
        self.lock_stats = LockStats()
        self._sequencer: Conn | None = None
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[Conn] = []
        self._readers_lock = threading.Lock()
        self._in_tx = False
        self._writer: Conn = self._connect()
        try:
            self._create_schema()
        except BaseException:
            self._writer.close()
            raise

    # -- connections ------------------------------------------------------------------------

    def _connect(self) -> Conn:
        conn = _open(self.dsn)
        try:
            conn.execute(f"SET lock_timeout = {int(self.lock_timeout_s * 1000)}")
        except psycopg.Error as e:
            conn.close()
            raise StoreError(
                f"cannot open PostgreSQL ledger {redact(self.dsn)}: {_reason(e)}"
            ) from e
        return conn

    def _create_schema(self) -> None:
        """Create missing tables (a no-op needing no CREATE privilege once they exist)."""
        try:
            row = self._writer.execute(
                "SELECT count(to_regclass(t)) FROM unnest(%s::text[]) AS t", (list(_TABLES),)
            ).fetchone()
            if row is not None and row[0] == len(_TABLES):
                return
            with self._writer.transaction():
                self._writer.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                self._writer.execute(SCHEMA)
        except psycopg.Error as e:
            raise StoreError(f"cannot create the ledger schema: {_reason(e)}") from e

    def _writer_conn(self) -> Conn:
        if self._writer.closed or self._writer.broken:
            self._writer = self._connect()
        return self._writer

    def _sequencer_conn(self) -> Conn:
        """The writer's second (autocommit) connection: it assigns positions, holding the
        advisory lock of the assignment until the writer's transaction ends, and voids them."""
        if self._sequencer is None or self._sequencer.closed or self._sequencer.broken:
            self._sequencer = self._connect()
        return self._sequencer

    def _reader(self) -> Conn:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            conn = self._connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            with self._reader().cursor(binary=True) as cur:
                return cur.execute(query, params).fetchall()
        except psycopg.Error as e:
            raise StoreError(f"ledger read failed: {_reason(e)}") from e

    # -- writes -----------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[LedgerTx]:
        """A write transaction holding the ledger-wide lock (the head row) from its start."""
        with self._write(serial=True) as tx:
            yield tx

    def append_transaction(self) -> AbstractContextManager[LedgerTx]:
        """A write transaction for appending beside other writers (see ``PostgresTx``)."""
        return self._write(serial=self.serial)

    @contextmanager
    def _write(self, serial: bool) -> Iterator[LedgerTx]:
        with self._lock:
            if self._in_tx:
                raise StoreError("a ledger transaction is already open in this thread")
            self._in_tx = True
            tx: PostgresTx | None = None
            try:
                conn = self._writer_conn()
                with conn.transaction():
                    tx = PostgresTx(conn, self, serial)
                    if serial:
                        start = time.perf_counter()
                        conn.execute("SELECT 1 FROM head WHERE id = 1 FOR UPDATE")
                        tx.locked_at = time.perf_counter()
                        self.lock_stats.waited_s += tx.locked_at - start
                    yield tx
                    if conn.info.transaction_status == pq.TransactionStatus.INERROR:
                        raise StoreError(
                            "ledger transaction was aborted by an earlier error; nothing was written"
                        )
                    tx.finish()
                if tx.locked_at is not None:
                    stats = self.lock_stats
                    stats.held_s += time.perf_counter() - tx.locked_at
                    stats.transactions += 1
                    stats.entries += tx.count
            except psycopg.IntegrityError as e:
                raise StoreIntegrityError(f"ledger write rejected: {_reason(e)}") from e
            except psycopg.errors.LockNotAvailable as e:
                raise StoreError(
                    f"timed out after {self.lock_timeout_s:g}s waiting for the ledger write lock"
                ) from e
            except psycopg.errors.DeadlockDetected as e:
                raise StoreRetryError(f"ledger write undone to break a deadlock: {_reason(e)}") from e
            except psycopg.Error as e:
                raise StoreError(f"ledger write failed: {_reason(e)}") from e
            finally:
                self._in_tx = False
                if tx is not None and tx.sequencing:  # failed while being assigned positions
                    self._unlock_sequencing()

    def _unlock_sequencing(self) -> None:
        """Release the sequencing lock after a failure (the transaction has ended)."""
        try:
            self._writer.execute("SELECT pg_advisory_unlock(%s)", (_SEQUENCING_LOCK,))
        except psycopg.Error:
            self._writer.close()  # gone with the session; a new one is opened on next use

    # -- reads ------------------------------------------------------------------------------

    def size(self) -> int:
        rows = self._fetch("SELECT size FROM head WHERE id = 1")
        return int(rows[0][0]) if rows else 0

    def _page(self, cols: str, types: Sequence[str], pos: int, stop: int) -> list[tuple[Any, ...]]:
        """One page of ``entries`` rows, read whole by a binary ``COPY`` (fastest to parse)."""
        try:
            with (
                self._reader().cursor() as cur,
                cur.copy(
                    f"COPY (SELECT {cols} FROM entries WHERE idx >= %s AND idx < %s "
                    "ORDER BY idx LIMIT %s) TO STDOUT (FORMAT BINARY)",
                    (pos, stop, _PAGE),
                ) as copy,
            ):
                copy.set_types(list(types))
                return list(copy.rows())
        except psycopg.Error as e:
            raise StoreError(f"ledger read failed: {_reason(e)}") from e

    def _pages(
        self, cols: str, types: Sequence[str], start: int, end: int | None
    ) -> Iterator[tuple[Any, ...]]:
        """Rows of ``entries`` in index order, one page per round trip (keyset pagination)."""
        stop = _MAX_INDEX if end is None else min(end, _MAX_INDEX)
        pos = start
        while pos < stop:
            rows = self._page(cols, types, pos, stop)
            yield from rows
            if len(rows) < _PAGE:
                return
            pos = int(rows[-1][0]) + 1

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[EntryRow]:
        for row in self._pages(_ENTRY_COLS, _ENTRY_TYPES, start, end):
            yield _entry(row)

    def raw_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        for idx, data in self._pages("idx, data", ["int8", "bytea"], start, end):
            yield int(idx), bytes(data)

    def stored_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[Any, ...]]:
        for row in self._pages(f"idx, {_STORED_COLS}", ["int8", *_STORED_TYPES], start, end):
            yield _stored(row)

    def entries_containing(self, needle: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
        return [
            (int(i), bytes(d))
            for i, d in self._fetch(
                "SELECT idx, data FROM entries WHERE idx >= %s AND idx < %s "
                "AND position(%s::bytea IN data) > 0 ORDER BY idx",
                (start, end, needle),
            )
        ]

    def run_entries(self, workspace: str, run_id: str) -> list[EntryRow]:
        return [
            _entry(r)
            for r in self._fetch(
                f"SELECT {_ENTRY_COLS} FROM entries WHERE workspace = %s AND run_id = %s "
                "ORDER BY seq",
                (workspace, run_id),
            )
        ]

    def records(
        self, workspace: str, after: int = -1, limit: int = 100, record_type: str | None = None
    ) -> list[EntryRow]:
        typed = "" if record_type is None else " AND type = %s"
        return [
            _entry(r)
            for r in self._fetch(
                f"SELECT {_ENTRY_COLS} FROM entries WHERE kind = 'record' AND workspace = %s "
                f"AND idx > %s{typed} ORDER BY idx LIMIT %s",
                (workspace, after, *([] if record_type is None else [record_type]), limit),
            )
        ]

    def records_of_types(
        self, workspace: str, record_types: Sequence[str], after: int = -1, limit: int = 1000
    ) -> list[EntryRow]:
        if not record_types:
            return []
        marks = ", ".join("%s" for _ in record_types)
        return [
            _entry(r)
            for r in self._fetch(
                f"SELECT {_ENTRY_COLS} FROM entries WHERE kind = 'record' AND workspace = %s "
                f"AND type IN ({marks}) AND idx > %s ORDER BY idx LIMIT %s",
                (workspace, *record_types, after, limit),
            )
        ]

    def approval(self, workspace: str, approval_id: str) -> ApprovalRow | None:
        rows = self._fetch(
            f"SELECT {_APPROVAL_COLS} FROM approvals WHERE workspace = %s AND approval_id = %s",
            (workspace, approval_id),
        )
        return row_of(rows[0]) if rows else None

    def approval_page(
        self, workspace: str, *, decided: bool, now: float, after: int = -1, limit: int = 100
    ) -> list[ApprovalRow]:
        which, params = ("decision IS NOT NULL", ()) if decided else (_PENDING, (now,))
        return [
            row_of(r)
            for r in self._fetch(
                f"SELECT {_APPROVAL_COLS} FROM approvals WHERE workspace = %s AND requested_index > %s "
                f"AND {which} ORDER BY requested_index LIMIT %s",
                (workspace, after, *params, limit),
            )
        ]

    def workspaces_of_run(self, run_id: str) -> list[str]:
        return [
            str(r[0])
            for r in self._fetch(
                "SELECT DISTINCT workspace FROM entries WHERE run_id = %s AND seq = 0 "
                "ORDER BY workspace",
                (run_id,),
            )
        ]

    def stored_node(self, level: int, index: int) -> bytes:
        if level == 0:
            rows = self._fetch("SELECT leaf FROM entries WHERE idx = %s", (index,))
        else:
            rows = self._fetch(
                "SELECT hash FROM nodes WHERE level = %s AND idx = %s", (level, index)
            )
        if not rows:
            raise NotFoundError(f"no Merkle node at level {level} index {index}")
        return bytes(rows[0][0])

    def checkpoints(self) -> list[CheckpointRow]:
        return [
            CheckpointRow(int(s), str(n), str(c))
            for s, n, c in self._fetch("SELECT size, note, created FROM checkpoints ORDER BY id")
        ]

    def latest_checkpoint(self) -> CheckpointRow | None:
        rows = self._fetch("SELECT size, note, created FROM checkpoints ORDER BY id DESC LIMIT 1")
        return (
            None if not rows else CheckpointRow(int(rows[0][0]), str(rows[0][1]), str(rows[0][2]))
        )

    def add_cosignatures(self, rows: Sequence[CosignatureRow]) -> None:
        if not rows:
            return
        # its own transaction on the writer, without the head row lock that appends hold
        with self._lock:
            try:
                conn = self._writer_conn()
                with conn.transaction(), conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO cosignatures (size, witness, line, timestamp) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT (size, witness) "
                        "DO UPDATE SET line = excluded.line, timestamp = excluded.timestamp",
                        [(r.size, r.witness, r.line, r.timestamp) for r in rows],
                    )
            except psycopg.Error as e:
                raise StoreError(f"ledger write failed: {_reason(e)}") from e

    def cosignatures(self, size: int) -> list[CosignatureRow]:
        return [
            CosignatureRow(int(s), str(w), str(line), int(t))
            for s, w, line, t in self._fetch(
                "SELECT size, witness, line, timestamp FROM cosignatures WHERE size = %s "
                "ORDER BY witness",
                (size,),
            )
        ]

    def offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        return {
            (str(t), int(p)): int(o)
            for t, p, o in self._fetch(
                "SELECT topic, partition, next_offset FROM offsets WHERE consumer = %s",
                (consumer,),
            )
        }

    def quarantine(
        self,
        limit: int = 100,
        after_id: int = 0,
        *,
        workspace: str | None = None,
        preview: int | None = None,
    ) -> list[QuarantineRow]:
        raw = "raw" if preview is None else f"substring(raw FROM 1 FOR {int(preview)})"
        cols = _QUARANTINE_COLS.replace("raw,", raw + ",", 1)
        if workspace is None:
            rows = self._fetch(
                f"SELECT {cols} FROM quarantine WHERE id > %s ORDER BY id LIMIT %s", (after_id, limit)
            )
        else:
            rows = self._fetch(
                f"SELECT {cols} FROM quarantine WHERE workspace = %s AND id > %s ORDER BY id LIMIT %s",
                (workspace, after_id, limit),
            )
        return [_quarantined(r) for r in rows]

    def quarantined(self, qid: int) -> QuarantineRow | None:
        rows = self._fetch(f"SELECT {_QUARANTINE_COLS} FROM quarantine WHERE id = %s", (qid,))
        return _quarantined(rows[0]) if rows else None

    def quarantine_usage(self) -> dict[str | None, QuarantineUsage]:
        return {
            (None if b == _UNATTRIBUTED else str(b)): QuarantineUsage(int(n), int(k), int(t))
            for b, n, k, t in self._fetch(
                "SELECT bucket, items, kept_bytes, truncated FROM quarantine_usage"
            )
        }

    def quarantine_count(self) -> int:
        return int(self._fetch("SELECT count(*) FROM quarantine")[0][0])

    def get_meta(self, key: str) -> str | None:
        rows = self._fetch("SELECT value FROM meta WHERE key = %s", (key,))
        return None if not rows else str(rows[0][0])

    def range_reader(self) -> PostgresRangeReader:
        """A picklable reader for parallel verification."""
        return PostgresRangeReader(self.dsn)

    def close(self) -> None:
        with self._lock:
            self._writer.close()
            if self._sequencer is not None:
                self._sequencer.close()
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._local.conn = None
