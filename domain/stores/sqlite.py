"""SQLite ledger store: the embedded default (one file under TACHO_DATA_DIR)."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson

from domain.approvals import APPROVAL_COLUMNS, ApprovalRow, row_of, row_values
from domain.errors import NotFoundError, StoreError, StoreIntegrityError
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
from domain.verify_scan import RangeReaderBase, StoredRow

try:  # optional C reader that compares index columns with the bytes (domain/_sqlitescan.c)
    from domain import _sqlitescan
except ImportError:  # not built: the columns are read and compared in Python
    _sqlitescan = None  # type: ignore[assignment]

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS head (
  id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL, frontier BLOB NOT NULL,
  checkpoint_size INTEGER NOT NULL, checkpoint_time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
  idx INTEGER PRIMARY KEY, data BLOB NOT NULL, leaf BLOB NOT NULL, kind TEXT NOT NULL,
  workspace TEXT, run_id TEXT, seq INTEGER, event_id TEXT, type TEXT, time TEXT,
  event_hash BLOB);
CREATE UNIQUE INDEX IF NOT EXISTS entries_run_seq ON entries (workspace, run_id, seq);
CREATE UNIQUE INDEX IF NOT EXISTS entries_event_id ON entries (workspace, event_id);
CREATE INDEX IF NOT EXISTS entries_records ON entries (workspace, idx) WHERE kind = 'record';
CREATE INDEX IF NOT EXISTS entries_record_types ON entries (workspace, type, idx) WHERE kind = 'record';
CREATE TABLE IF NOT EXISTS nodes (
  level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
  PRIMARY KEY (level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
  workspace TEXT NOT NULL, run_id TEXT NOT NULL, state BLOB NOT NULL,
  PRIMARY KEY (workspace, run_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
  id INTEGER PRIMARY KEY AUTOINCREMENT, raw BLOB NOT NULL, reason TEXT NOT NULL,
  source TEXT NOT NULL, received TEXT NOT NULL, workspace TEXT, run_id TEXT, event_id TEXT,
  raw_size INTEGER, raw_sha256 BLOB);
CREATE TABLE IF NOT EXISTS quarantine_usage (
  bucket TEXT PRIMARY KEY, items INTEGER NOT NULL, kept_bytes INTEGER NOT NULL,
  truncated INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quarantine_by_workspace ON quarantine (workspace, id);
CREATE TABLE IF NOT EXISTS held (
  workspace TEXT NOT NULL, run_id TEXT NOT NULL, seq INTEGER NOT NULL, raw BLOB NOT NULL,
  source TEXT NOT NULL, held_at REAL NOT NULL, PRIMARY KEY (workspace, run_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS offsets (
  consumer TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
  next_offset INTEGER NOT NULL, PRIMARY KEY (consumer, topic, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
  id INTEGER PRIMARY KEY AUTOINCREMENT, size INTEGER NOT NULL, note TEXT NOT NULL,
  created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cosignatures (
  size INTEGER NOT NULL, witness TEXT NOT NULL, line TEXT NOT NULL, timestamp INTEGER NOT NULL,
  PRIMARY KEY (size, witness)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS approvals (
  workspace TEXT NOT NULL, approval_id TEXT NOT NULL, run_id TEXT NOT NULL,
  requested_index INTEGER NOT NULL, requested_at TEXT NOT NULL, summary TEXT NOT NULL,
  risk TEXT NOT NULL, change_id TEXT, expires_at REAL, closed INTEGER NOT NULL, decision TEXT,
  decided_by TEXT, decided_at TEXT, reason TEXT, decision_index INTEGER,
  PRIMARY KEY (workspace, approval_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS approvals_by_request ON approvals (workspace, requested_index);
"""

# Stores made before quarantine rows carried their size and digest: add them, attribute HTTP
# items to the key's workspace (its name is in the source), and count every bucket's usage.
_QUARANTINE_MIGRATION = """
ALTER TABLE quarantine ADD COLUMN raw_size INTEGER;
ALTER TABLE quarantine ADD COLUMN raw_sha256 BLOB;
UPDATE quarantine SET workspace = substr(json_extract(source, '$.name'), 1,
    instr(json_extract(source, '$.name'), '/') - 1)
  WHERE workspace IS NULL AND json_extract(source, '$.kind') IN ('http', 'otlp')
    AND instr(json_extract(source, '$.name'), '/') > 1;
UPDATE quarantine SET raw_size = length(raw), raw_sha256 = tacho_sha256(raw);
DELETE FROM quarantine_usage;
INSERT INTO quarantine_usage (bucket, items, kept_bytes, truncated)
  SELECT coalesce(workspace, ''), count(*), sum(length(raw)), 0 FROM quarantine GROUP BY 1;
"""
_UNATTRIBUTED = ""  # the bucket key of items with no workspace (no workspace name is empty)


def _bucket(workspace: str | None) -> str:
    return _UNATTRIBUTED if workspace is None else workspace


def _sha256(value: bytes | str) -> bytes:
    return hashlib.sha256(value.encode() if isinstance(value, str) else value).digest()


_CHUNK = 500


def _chunks(seq: Sequence[object], n: int = _CHUNK) -> Iterator[Sequence[object]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def _frontier_bytes(frontier: Sequence[bytes]) -> bytes:
    return b"".join(frontier)


def _frontier_list(raw: bytes) -> list[bytes]:
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]


def _entry(row: tuple[object, ...]) -> EntryRow:
    return EntryRow(*row)  # type: ignore[arg-type]


_UNIQUE_EVENT_IDS = "CREATE UNIQUE INDEX entries_event_id ON entries (workspace, event_id)"
_ENTRY_COLS = "idx, data, leaf, kind, workspace, run_id, seq, event_id, type, time, event_hash"
_STORED_COLS = "CAST(data AS BLOB), kind, workspace, run_id, seq, event_id, type, time, leaf"
"""A ``StoredRow``: the bytes (TEXT read as its bytes, as the verifier hashes them), then the columns."""


class SQLiteTx(LedgerTx):
    """A write transaction on one SQLite connection (BEGIN IMMEDIATE)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.c = conn

    def head(self) -> Head:
        row = self.c.execute(
            "SELECT size, frontier, checkpoint_size, checkpoint_time FROM head WHERE id = 1"
        ).fetchone()
        if row is None:
            return Head()
        return Head(row[0], _frontier_list(row[1]), row[2], row[3])

    def save_head(self, head: Head) -> None:
        self.c.execute(
            "INSERT INTO head (id, size, frontier, checkpoint_size, checkpoint_time) "
            "VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET size = excluded.size, "
            "frontier = excluded.frontier, checkpoint_size = excluded.checkpoint_size, "
            "checkpoint_time = excluded.checkpoint_time",
            (head.size, _frontier_bytes(head.frontier), head.checkpoint_size, head.checkpoint_time),
        )

    def meta(self, key: str) -> str | None:
        row = self.c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.c.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def load_runs(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], bytes]:
        out: dict[tuple[str, str], bytes] = {}
        by_ws: dict[str, list[str]] = {}
        for ws, run in keys:
            by_ws.setdefault(ws, []).append(run)
        for ws, runs in by_ws.items():
            for chunk in _chunks(runs):
                marks = ",".join("?" * len(chunk))
                for run, state in self.c.execute(
                    f"SELECT run_id, state FROM runs WHERE workspace = ? AND run_id IN ({marks})",
                    (ws, *chunk),
                ):
                    out[(ws, run)] = bytes(state)
        return out

    def save_runs(self, states: Mapping[tuple[str, str], bytes]) -> None:
        self.c.executemany(
            "INSERT INTO runs (workspace, run_id, state) VALUES (?, ?, ?) "
            "ON CONFLICT (workspace, run_id) DO UPDATE SET state = excluded.state",
            [(ws, run, st) for (ws, run), st in states.items()],
        )

    def event_hashes(
        self, workspace_event_ids: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], tuple[str, int, bytes]]:
        out: dict[tuple[str, str], tuple[str, int, bytes]] = {}
        by_ws: dict[str, list[str]] = {}
        for ws, eid in workspace_event_ids:
            by_ws.setdefault(ws, []).append(eid)
        for ws, ids in by_ws.items():
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for eid, run, seq, h in self.c.execute(
                    f"SELECT event_id, run_id, seq, CAST(data AS BLOB) FROM entries "
                    f"WHERE workspace = ? AND event_id IN ({marks})",
                    (ws, *chunk),
                ):
                    out[(ws, eid)] = (run, seq, event_hash_of(h))
        return out

    def seq_hashes(self, keys: Sequence[tuple[str, str, int]]) -> dict[tuple[str, str, int], bytes]:
        out: dict[tuple[str, str, int], bytes] = {}
        for ws, run, seq in keys:
            row = self.c.execute(
                "SELECT CAST(data AS BLOB) FROM entries WHERE workspace = ? AND run_id = ? AND seq = ?",
                (ws, run, seq),
            ).fetchone()
            if row is not None:
                out[(ws, run, seq)] = event_hash_of(row[0])
        return out

    def append_entries(self, rows: Sequence[EntryRow]) -> None:
        self.c.executemany(
            f"INSERT INTO entries ({_ENTRY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (r.index, r.data, r.leaf_hash, r.kind, r.workspace, r.run_id, r.seq,
                 r.event_id, r.event_type, r.event_time, r.event_hash)
                for r in rows
            ],
        )

    def append_nodes(self, nodes: Sequence[tuple[int, int, bytes]]) -> None:
        self.c.executemany(
            "INSERT INTO nodes (level, idx, hash) VALUES (?, ?, ?)", nodes_to_store(nodes)
        )

    def add_quarantine(self, rows: Sequence[QuarantineRow]) -> None:
        values = []
        usage: dict[str, list[int]] = {}
        for r in rows:
            size, digest = r.stored()
            values.append((r.raw, r.reason, orjson.dumps(r.source.to_json()).decode(), r.received,
                           r.workspace, r.run_id, r.event_id, size, digest))
            u = usage.setdefault(_bucket(r.workspace), [0, 0, 0])
            u[0] += 1
            u[1] += len(r.raw)
            u[2] += len(r.raw) < size
        self.c.executemany(
            "INSERT INTO quarantine (raw, reason, source, received, workspace, run_id, event_id, "
            "raw_size, raw_sha256) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            values,
        )
        self.c.executemany(
            "INSERT INTO quarantine_usage (bucket, items, kept_bytes, truncated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (bucket) DO UPDATE SET items = items + excluded.items, "
            "kept_bytes = kept_bytes + excluded.kept_bytes, truncated = truncated + excluded.truncated",
            [(b, *u) for b, u in usage.items()],
        )

    def quarantine_kept_bytes(self, workspace: str | None) -> int:
        row = self.c.execute(
            "SELECT kept_bytes FROM quarantine_usage WHERE bucket = ?", (_bucket(workspace),)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def load_held(self, keys: Sequence[tuple[str, str]]) -> list[HeldRow]:
        out: list[HeldRow] = []
        for ws, run in keys:
            out.extend(
                _held(r)
                for r in self.c.execute(
                    "SELECT workspace, run_id, seq, raw, source, held_at FROM held "
                    "WHERE workspace = ? AND run_id = ? ORDER BY seq",
                    (ws, run),
                )
            )
        return out

    def expired_held(self, older_than: float, limit: int) -> list[HeldRow]:
        return [
            _held(r)
            for r in self.c.execute(
                "SELECT workspace, run_id, seq, raw, source, held_at FROM held "
                "WHERE held_at < ? ORDER BY held_at LIMIT ?",
                (older_than, limit),
            )
        ]

    def count_held(self) -> int:
        return int(self.c.execute("SELECT count(*) FROM held").fetchone()[0])

    def count_held_in(self, workspace: str) -> int:
        # the primary key starts with workspace: an index range count
        row = self.c.execute("SELECT count(*) FROM held WHERE workspace = ?", (workspace,)).fetchone()
        return int(row[0])

    def put_held(self, rows: Sequence[HeldRow]) -> None:
        self.c.executemany(
            "INSERT INTO held (workspace, run_id, seq, raw, source, held_at) VALUES (?, ?, ?, ?, ?, ?)",
            [
                (r.workspace, r.run_id, r.seq, r.raw, orjson.dumps(r.source.to_json()).decode(), r.held_at)
                for r in rows
            ],
        )

    def drop_held(self, keys: Sequence[tuple[str, str, int]]) -> None:
        self.c.executemany(
            "DELETE FROM held WHERE workspace = ? AND run_id = ? AND seq = ?", list(keys)
        )

    def save_offsets(self, consumer: str, offsets: Mapping[tuple[str, int], int]) -> None:
        self.c.executemany(
            "INSERT INTO offsets (consumer, topic, partition, next_offset) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (consumer, topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            [(consumer, t, p, o) for (t, p), o in offsets.items()],
        )

    def add_checkpoint(self, row: CheckpointRow) -> None:
        self.c.execute(
            "INSERT INTO checkpoints (size, note, created) VALUES (?, ?, ?)",
            (row.size, row.note, row.created),
        )


    def approvals(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], ApprovalRow]:
        by_ws: dict[str, list[str]] = {}
        for ws, aid in keys:
            by_ws.setdefault(ws, []).append(aid)
        out: dict[tuple[str, str], ApprovalRow] = {}
        for ws, ids in by_ws.items():
            for chunk in _chunks(ids):
                marks = ",".join("?" * len(chunk))
                for values in self.c.execute(
                    f"SELECT {_APPROVAL_COLS} FROM approvals WHERE workspace = ? AND approval_id IN ({marks})",
                    (ws, *chunk),
                ):
                    row = row_of(values)
                    out[(row.workspace, row.approval_id)] = row
        return out

    def put_approvals(self, rows: Sequence[ApprovalRow]) -> None:
        marks = ", ".join("?" * len(APPROVAL_COLUMNS))
        self.c.executemany(
            f"INSERT OR REPLACE INTO approvals ({_APPROVAL_COLS}) VALUES ({marks})",
            [row_values(r) for r in rows],
        )


_APPROVAL_COLS = ", ".join(APPROVAL_COLUMNS)
_PENDING = "decision IS NULL AND closed = 0 AND (expires_at IS NULL OR expires_at > ?)"


def _held(r: tuple[Any, ...]) -> HeldRow:
    return HeldRow(
        str(r[0]), str(r[1]), int(r[2]), bytes(r[3]), Source.from_json(orjson.loads(r[4])), float(r[5])
    )


_QUARANTINE_COLS = (
    "id, raw, reason, source, received, workspace, run_id, event_id, raw_size, raw_sha256, length(raw)"
)


def _quarantined(r: Sequence[Any]) -> QuarantineRow:
    qid, raw, reason, src, rec, ws, run, eid, size, digest, kept = r
    raw = bytes(raw)
    return QuarantineRow(
        raw, str(reason), Source.from_json(orjson.loads(src)), str(rec), ws, run, eid, int(qid),
        int(size), bytes(digest), int(kept),
    )


_READERS: dict[tuple[int, str], sqlite3.Connection] = {}


class SQLiteRangeReader(RangeReaderBase):
    """Reads entry ranges from a SQLite ledger file; each process opens its own connection."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _conn(self) -> sqlite3.Connection:
        key = (os.getpid(), self.path)  # never reuse a connection across fork
        conn = _READERS.get(key)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
            _READERS[key] = conn
        return conn

    def size(self) -> int:
        # every stored row counts, whatever the head says: extra rows must be seen
        row = self._conn().execute("SELECT coalesce(max(idx) + 1, 0) FROM entries").fetchone()
        return int(row[0])

    def read(self, start: int, end: int) -> list[tuple[Any, ...]]:
        # CAST: a value rewritten as TEXT is still read (and hashed) as its bytes, as raw_entries does
        return self._conn().execute(
            f"SELECT idx, {_STORED_COLS} FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, end),
        ).fetchall()

    def read_checked(self, start: int, end: int) -> tuple[list[bytes], bytes, list[int]] | None:
        if _sqlitescan is None:
            return None
        try:
            return _sqlitescan.read_chunk(self.path, start, end)
        except OSError as e:
            raise StoreError(str(e)) from e

    def repeated_event_id(self, end: int) -> tuple[int, str] | None:
        # its own connection: this runs on a thread beside the reads of the verify workers
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = 'entries_event_id' "
                "AND tbl_name = 'entries'"
            ).fetchone()
            if row is not None and row[0] == _UNIQUE_EVENT_IDS:
                # SQLite keeps the pairs unique: an index created over repeated pairs fails, so
                # no SQL edit can leave both (an edit of the file's pages below SQL is what
                # `PRAGMA integrity_check` finds; docs/threat-model.md)
                return None
            return first_repeated_event_id(conn.execute, end, "?")
        finally:
            conn.close()

    def repeated_event_id_in(self, start: int, end: int) -> tuple[int, str] | None:
        return repeated_event_id_in(self._conn().execute, start, end, "?")

    def last_of_runs(self, keys: Sequence[tuple[Any, Any]], before: int) -> dict[tuple[Any, Any], tuple[int, bytes]]:
        return last_run_entries(self._conn().execute, keys, before, "?", "CAST(data AS BLOB)")

    def read_stored(self, start: int, end: int) -> list[StoredRow] | None:
        rows = self._conn().execute(
            f"SELECT {_STORED_COLS} FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, end),
        ).fetchall()
        # idx is the primary key: as many rows as indices means every index is there once
        return rows if len(rows) == end - start else None


class SQLiteStore(LedgerStore):
    """Ledger in one SQLite file (WAL, synchronous=FULL: a commit survives power loss)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._local = threading.local()
        self._writer = self._connect()
        self._writer.executescript(SCHEMA)
        self._migrate()
        if self.path != ":memory:":
            self._make_private()

    def _migrate(self) -> None:
        """Bring a store made by an earlier version up to this schema (once, in one transaction)."""
        c = self._writer
        if "raw_size" not in {r[1] for r in c.execute("PRAGMA table_info(quarantine)")}:
            c.create_function("tacho_sha256", 1, _sha256, deterministic=True)
            c.execute("BEGIN IMMEDIATE")
            try:
                if "raw_size" not in {r[1] for r in c.execute("PRAGMA table_info(quarantine)")}:
                    for statement in _QUARANTINE_MIGRATION.split(";"):
                        if statement.strip():
                            c.execute(statement)
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")

    def _make_private(self) -> None:
        """Owner-only files (0600): SQLite creates the -wal and -shm files with the database's mode."""
        for suffix in ("", "-wal", "-shm"):
            file = Path(self.path + suffix)
            if file.exists() and file.stat().st_mode & 0o077:
                os.chmod(file, 0o600)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=60
            )
            # new files only (a WAL database keeps its page size): entries are ~0.5-1 KiB, and
            # 16 KiB pages took ~4 % off the import's time (docs/benchmarks/ledger.md)
            conn.execute("PRAGMA page_size = 16384")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA cache_size = -65536")
        except sqlite3.Error as e:
            raise StoreError(f"cannot open SQLite ledger {self.path}: {e}") from e
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def transaction(self) -> Iterator[LedgerTx]:
        with self._lock:
            c = self._writer
            try:
                c.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise StoreError(f"cannot begin a ledger transaction: {e}") from e
            try:
                yield SQLiteTx(c)
            except sqlite3.IntegrityError as e:
                c.execute("ROLLBACK")
                raise StoreIntegrityError(f"ledger write rejected: {e}") from e
            except sqlite3.Error as e:
                c.execute("ROLLBACK")
                raise StoreError(f"ledger write failed: {e}") from e
            except BaseException:
                c.execute("ROLLBACK")
                raise
            else:
                try:
                    c.execute("COMMIT")
                except sqlite3.Error as e:
                    c.execute("ROLLBACK")
                    raise StoreError(f"ledger commit failed: {e}") from e

    def size(self) -> int:
        row = self._reader().execute("SELECT size FROM head WHERE id = 1").fetchone()
        return 0 if row is None else int(row[0])

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[EntryRow]:
        stop = end if end is not None else 2**62
        cur = self._reader().execute(
            f"SELECT {_ENTRY_COLS} FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, stop),
        )
        for row in cur:
            yield _entry(row)

    def raw_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, bytes]]:
        stop = end if end is not None else 2**62
        cur = self._reader().execute(
            "SELECT idx, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, stop)
        )
        while True:
            rows = cur.fetchmany(4096)
            if not rows:
                return
            for idx, data in rows:
                # a value rewritten as TEXT is still checked, byte for byte
                yield idx, (data.encode() if isinstance(data, str) else data)

    def stored_entries(self, start: int = 0, end: int | None = None) -> Iterator[tuple[Any, ...]]:
        stop = end if end is not None else 2**62
        cur = self._reader().execute(
            f"SELECT idx, {_STORED_COLS} FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx",
            (start, stop),
        )
        while rows := cur.fetchmany(4096):
            yield from rows

    def entries_containing(self, needle: bytes, start: int, end: int) -> list[tuple[int, bytes]]:
        return [
            (int(i), bytes(d))
            for i, d in self._reader().execute(
                "SELECT idx, CAST(data AS BLOB) FROM entries WHERE idx >= ? AND idx < ? "
                "AND instr(CAST(data AS BLOB), ?) > 0 ORDER BY idx",
                (start, end, needle),
            )
        ]

    def run_entries(self, workspace: str, run_id: str) -> list[EntryRow]:
        return [
            _entry(r)
            for r in self._reader().execute(
                f"SELECT {_ENTRY_COLS} FROM entries WHERE workspace = ? AND run_id = ? ORDER BY seq",
                (workspace, run_id),
            )
        ]

    def records(
        self, workspace: str, after: int = -1, limit: int = 100, record_type: str | None = None
    ) -> list[EntryRow]:
        typed = "" if record_type is None else " AND type = ?"
        return [
            _entry(r)
            for r in self._reader().execute(
                f"SELECT {_ENTRY_COLS} FROM entries WHERE kind = 'record' AND workspace = ? "
                f"AND idx > ?{typed} ORDER BY idx LIMIT ?",
                (workspace, after, *([] if record_type is None else [record_type]), limit),
            )
        ]

    def records_of_types(
        self, workspace: str, record_types: Sequence[str], after: int = -1, limit: int = 1000
    ) -> list[EntryRow]:
        if not record_types:
            return []
        marks = ", ".join("?" for _ in record_types)
        return [
            _entry(r)
            for r in self._reader().execute(
                f"SELECT {_ENTRY_COLS} FROM entries WHERE kind = 'record' AND workspace = ? "
                f"AND type IN ({marks}) AND idx > ? ORDER BY idx LIMIT ?",
                (workspace, *record_types, after, limit),
            )
        ]

    def approval(self, workspace: str, approval_id: str) -> ApprovalRow | None:
        row = self._reader().execute(
            f"SELECT {_APPROVAL_COLS} FROM approvals WHERE workspace = ? AND approval_id = ?",
            (workspace, approval_id),
        ).fetchone()
        return None if row is None else row_of(row)

    def approval_page(
        self, workspace: str, *, decided: bool, now: float, after: int = -1, limit: int = 100
    ) -> list[ApprovalRow]:
        which, params = ("decision IS NOT NULL", ()) if decided else (_PENDING, (now,))
        return [
            row_of(r)
            for r in self._reader().execute(
                f"SELECT {_APPROVAL_COLS} FROM approvals WHERE workspace = ? AND requested_index > ? "
                f"AND {which} ORDER BY requested_index LIMIT ?",
                (workspace, after, *params, limit),
            )
        ]

    def workspaces_of_run(self, run_id: str) -> list[str]:
        return [
            str(r[0])
            for r in self._reader().execute(
                "SELECT DISTINCT workspace FROM entries WHERE run_id = ? AND seq = 0", (run_id,)
            )
        ]

    def stored_node(self, level: int, index: int) -> bytes:
        c = self._reader()
        if level == 0:
            row = c.execute("SELECT leaf FROM entries WHERE idx = ?", (index,)).fetchone()
        else:
            row = c.execute(
                "SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no Merkle node at level {level} index {index}")
        return bytes(row[0])

    def checkpoints(self) -> list[CheckpointRow]:
        return [
            CheckpointRow(int(s), str(n), str(c))
            for s, n, c in self._reader().execute(
                "SELECT size, note, created FROM checkpoints ORDER BY id"
            )
        ]

    def latest_checkpoint(self) -> CheckpointRow | None:
        row = self._reader().execute(
            "SELECT size, note, created FROM checkpoints ORDER BY id DESC LIMIT 1"
        ).fetchone()
        return None if row is None else CheckpointRow(int(row[0]), str(row[1]), str(row[2]))

    def add_cosignatures(self, rows: Sequence[CosignatureRow]) -> None:
        if not rows:
            return
        with self.transaction() as tx:
            assert isinstance(tx, SQLiteTx)
            tx.c.executemany(
                "INSERT INTO cosignatures (size, witness, line, timestamp) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (size, witness) DO UPDATE SET line = excluded.line, "
                "timestamp = excluded.timestamp",
                [(r.size, r.witness, r.line, r.timestamp) for r in rows],
            )

    def cosignatures(self, size: int) -> list[CosignatureRow]:
        return [
            CosignatureRow(int(s), str(w), str(line), int(t))
            for s, w, line, t in self._reader().execute(
                "SELECT size, witness, line, timestamp FROM cosignatures WHERE size = ? "
                "ORDER BY witness",
                (size,),
            )
        ]

    def offsets(self, consumer: str) -> dict[tuple[str, int], int]:
        return {
            (str(t), int(p)): int(o)
            for t, p, o in self._reader().execute(
                "SELECT topic, partition, next_offset FROM offsets WHERE consumer = ?", (consumer,)
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
        raw = "raw" if preview is None else f"substr(raw, 1, {int(preview)})"
        where = "id > ?" if workspace is None else "workspace = ? AND id > ?"
        params = (after_id, limit) if workspace is None else (workspace, after_id, limit)
        return [
            _quarantined(r)
            for r in self._reader().execute(
                f"SELECT {_QUARANTINE_COLS.replace('raw,', raw + ',', 1)} FROM quarantine "
                f"WHERE {where} ORDER BY id LIMIT ?",
                params,
            )
        ]

    def quarantined(self, qid: int) -> QuarantineRow | None:
        row = self._reader().execute(
            f"SELECT {_QUARANTINE_COLS} FROM quarantine WHERE id = ?", (qid,)
        ).fetchone()
        return None if row is None else _quarantined(row)

    def quarantine_usage(self) -> dict[str | None, QuarantineUsage]:
        return {
            (None if b == _UNATTRIBUTED else str(b)): QuarantineUsage(int(n), int(k), int(t))
            for b, n, k, t in self._reader().execute(
                "SELECT bucket, items, kept_bytes, truncated FROM quarantine_usage"
            )
        }

    def quarantine_count(self) -> int:
        return int(self._reader().execute("SELECT count(*) FROM quarantine").fetchone()[0])

    def get_meta(self, key: str) -> str | None:
        row = self._reader().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def range_reader(self) -> SQLiteRangeReader:
        """A picklable reader for parallel verification."""
        return SQLiteRangeReader(self.path)

    def close(self) -> None:
        self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
