"""Read models as SQL tables beside their tracking: eventsourcing's tracking recorders, extended.

A view is the library's ``SQLiteTrackingRecorder`` or ``PostgresTrackingRecorder`` with the
projection's own tables added (the library's "materialised view" pattern): a projection writes
its rows and ``Tracking(LEDGER, end)`` in one transaction (``SQLView.batch``), so the position
it resumes from is always the position of its rows. Each view keeps one tracking row, created at
position 0; a batch locks it first and compares it with the position the batch starts at, so
several processes may project into one shared view (PostgreSQL) and none applies an entry twice.

Views are SQLite files (one per projection: the library's SQLite tracking table has one name) or
tables in the ledger's PostgreSQL database (``<name>_...``, tracking in ``<name>_tracking``).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event
from typing import TYPE_CHECKING, Any, ClassVar

import orjson
from eventsourcing.persistence import (
    PersistenceError,
    Tracking,
    TrackingRecorder,
    WaitInterruptedError,
)
from eventsourcing.sqlite import (
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteDatastore,
    SQLiteTrackingRecorder,
)

from projections.errors import ProjectionError

LEDGER = "ledger"
"""The application name of the ledger, the notification source of every view (``Tracking``).

A notification id is a ledger index + 1 (the library's ids start at 1): a view's tracking id is
the number of ledger entries it has seen, the index it reads next.
"""

KINDS = ("text", "int", "float", "bool", "json")
_SQLITE_TYPES = {"text": "TEXT", "int": "INTEGER", "float": "REAL", "bool": "INTEGER", "json": "TEXT"}
_PG_TYPES = {"text": 'TEXT COLLATE "C"', "int": "BIGINT", "float": "DOUBLE PRECISION",
             "bool": "BOOLEAN", "json": "TEXT"}
KEY_CHUNK = 400  # keys per bulk read (SQLite's default variable limit is 32,766)
POLL_S = 0.05  # how often a wait looks for positions another process recorded


class ViewError(ProjectionError):
    """A read model's database failed, or holds a position the ledger contradicts."""


@dataclass(frozen=True)
class Table:
    """One table of a view: columns as (name, kind), the key, and secondary indexes."""

    name: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    indexes: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        names = {c for c, _ in self.columns}
        assert all(k in KINDS for _, k in self.columns), self.columns
        assert set(self.key) <= names and all(set(i) <= names for i in self.indexes)

    @property
    def names(self) -> list[str]:
        """Column names in order."""
        return [c for c, _ in self.columns]

    def ddl(self, types: Mapping[str, str]) -> list[str]:
        """CREATE statements (idempotent) with the dialect's ``types``."""
        cols = ", ".join(f"{c} {types[k]}" for c, k in self.columns)
        out = [f"CREATE TABLE IF NOT EXISTS {self.name} ({cols}, PRIMARY KEY ({', '.join(self.key)}))"]
        for cols_ in self.indexes:
            out.append(f"CREATE INDEX IF NOT EXISTS {self.name}_{'_'.join(cols_)} "
                       f"ON {self.name} ({', '.join(cols_)})")
        return out

    def encode(self, row: Mapping[str, Any]) -> list[Any]:
        """A row's values in column order, JSON columns as text."""
        return [orjson.dumps(row[c]).decode() if k == "json" and row[c] is not None else row[c]
                for c, k in self.columns]

    def decode(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """A stored row as a dict: JSON parsed, booleans as bool."""
        out = dict(row)
        for c, k in self.columns:
            v = out.get(c)
            if v is None:
                continue
            if k == "json":
                out[c] = orjson.loads(v)
            elif k == "bool":
                out[c] = bool(v)
        return out

    def key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        """The row's key."""
        return tuple(row[k] for k in self.key)


Key = tuple[Any, ...]


@dataclass
class _Cached:
    table: Table
    rows: dict[Key, dict[str, Any] | None] = field(default_factory=dict)
    dirty: set[Key] = field(default_factory=set)
    complete: dict[tuple[str, ...], set[Key]] = field(default_factory=dict)  # prefix cols -> prefixes read


class ViewTx:
    """One batch's transaction on a view: cached reads by key, upserts written at commit."""

    def __init__(self, view: SQLView, cursor: Any, start: int, position: int, end: int) -> None:
        self.view = view
        self.cursor = cursor
        self.start = start
        self.position = position
        """Where the view stood when the batch began (locked): entries below it are projected."""
        self.end = end
        self._cache: dict[str, _Cached] = {}

    @property
    def done(self) -> bool:
        """Every entry of the batch is projected already (by another process)."""
        return self.position >= self.end

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Rows of a query inside the transaction (``?`` placeholders)."""
        self.cursor.execute(self.view.sql(sql), tuple(params))
        return [dict(r) for r in self.cursor.fetchall()]

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        """Run a statement inside the transaction (``?`` placeholders)."""
        self.cursor.execute(self.view.sql(sql), tuple(params))

    def _cached(self, table: Table) -> _Cached:
        c = self._cache.get(table.name)
        if c is None:
            c = self._cache[table.name] = _Cached(table)
        return c

    def prefetch(self, table: Table, cols: tuple[str, ...], values: Iterable[Key]) -> None:
        """Read every row whose ``cols`` hold one of ``values`` (a key prefix) into the cache;
        afterwards a missing key under such a prefix is known to be absent."""
        c = self._cached(table)
        done = c.complete.setdefault(cols, set())
        wanted = [v for v in dict.fromkeys(values) if v not in done]
        for chunk in _chunks(wanted, KEY_CHUNK // max(len(cols), 1)):
            for row in self._select(table, cols, chunk):
                k = table.key_of(row)
                if k not in c.dirty:
                    c.rows[k] = row
            done.update(chunk)

    def _select(self, table: Table, cols: tuple[str, ...], values: Sequence[Key]) -> list[dict[str, Any]]:
        one = "(" + ", ".join("?" for _ in cols) + ")"
        sql = (f"SELECT * FROM {table.name} WHERE ({', '.join(cols)}) IN "
               f"(VALUES {', '.join(one for _ in values)})")
        return [table.decode(r) for r in self.rows(sql, [x for v in values for x in v])]

    def get(self, table: Table, key: Key) -> dict[str, Any] | None:
        """The row of ``key`` (as this transaction left it), or None."""
        c = self._cached(table)
        if key in c.rows:
            return c.rows[key]
        for cols, done in c.complete.items():
            if key[: len(cols)] in done and cols == table.key[: len(cols)]:
                c.rows[key] = None
                return None
        found = self._select(table, table.key, [key])
        c.rows[key] = found[0] if found else None
        return c.rows[key]

    def put(self, table: Table, row: dict[str, Any]) -> None:
        """Insert or replace a row (written when the batch commits)."""
        c = self._cached(table)
        k = table.key_of(row)
        c.rows[k] = row
        c.dirty.add(k)

    def _flush(self) -> None:
        for c in self._cache.values():
            rows = [c.rows[k] for k in c.dirty]
            if rows:
                self.view.upsert(self.cursor, c.table, [r for r in rows if r is not None])
            c.dirty.clear()


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), max(size, 1)):
        yield items[i:i + size]


class SQLView(TrackingRecorder):
    """What both SQL views add to the library's tracking recorder (mixed in before it)."""

    tables: tuple[Table, ...] = ()
    view_name: str = ""
    types: ClassVar[Mapping[str, str]] = {}
    placeholder: ClassVar[str] = "?"

    if TYPE_CHECKING:  # the library's recorders define it (a definition here would shadow theirs)
        def _insert_tracking(self, c: Any, tracking: Tracking) -> None: ...

    def _init_view(self, name: str, tables: Sequence[Table]) -> None:
        self.view_name = name
        self.tables = (self.meta_table(name), *tables)
        self._known = -1  # highest position this process has seen recorded
        self._cond = threading.Condition()

    @staticmethod
    def meta_table(name: str) -> Table:
        """Where a view keeps the ledger it was projected from."""
        return Table(f"{name}_meta", (("key", "text"), ("value", "text")), ("key",))

    # -- statements -----------------------------------------------------------------------

    def sql(self, statement: str) -> str:
        """A statement written with ``?`` placeholders, in this dialect."""
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def upsert(self, cursor: Any, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
        """Insert or replace ``rows`` of ``table``."""
        cols = table.names
        keys = set(table.key)
        sets = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in keys)
        sql = (f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
               f"ON CONFLICT ({', '.join(table.key)}) DO "
               + (f"UPDATE SET {sets}" if sets else "NOTHING"))
        cursor.executemany(self.sql(sql), [table.encode(r) for r in rows])

    # -- the dialect's parts ----------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction holding the view's tracking row (the view's one writer)."""
        raise NotImplementedError
        yield

    @contextmanager
    def _read(self) -> Iterator[Any]:
        """A cursor for reads (autocommit)."""
        raise NotImplementedError
        yield

    def _tracking_table(self) -> str:
        raise NotImplementedError

    def _create(self) -> None:
        raise NotImplementedError

    # -- setting up -----------------------------------------------------------------------

    def open(self, origin: str, size: int) -> None:
        """Create the tables (and the tracking row at 0) if missing; start again from 0 when the
        view was projected from another ledger (``origin``) or from more entries than it has."""
        try:
            self._create()
            with self._write() as cur:
                cur.execute(self.sql(f"INSERT INTO {self._tracking_table()} (application_name, "
                                     "notification_id) VALUES (?, 0) ON CONFLICT DO NOTHING"),
                            (LEDGER,))
                meta = self.tables[0]
                cur.execute(self.sql(f"SELECT value FROM {meta.name} WHERE key = 'origin'"))
                row = cur.fetchone()
                stored = None if row is None else _first(row)
                position = self._locked_position(cur)
                if stored != origin or position > size:
                    self._clear(cur)
                    self.upsert(cur, meta, [{"key": "origin", "value": origin}])
        except (PersistenceError, sqlite3.Error) as e:
            raise ViewError(f"read model {self.view_name}: {e}") from e

    def _clear(self, cur: Any) -> None:
        for t in self.tables[1:]:
            cur.execute(f"DELETE FROM {t.name}")
        cur.execute(self.sql(f"UPDATE {self._tracking_table()} SET notification_id = 0 "
                             "WHERE application_name = ?"), (LEDGER,))
        self._known = 0

    def _locked_position(self, cur: Any) -> int:
        cur.execute(self.sql(f"SELECT notification_id FROM {self._tracking_table()} "
                             "WHERE application_name = ?" + self._for_update()), (LEDGER,))
        row = cur.fetchone()
        return 0 if row is None or _first(row) is None else int(_first(row))

    def _for_update(self) -> str:
        return ""

    # -- writing a batch ------------------------------------------------------------------

    @contextmanager
    def batch(self, start: int, tracking: Tracking) -> Iterator[ViewTx]:
        """One transaction for the entries [``start``, ``tracking``): the caller folds those at or
        after ``tx.position`` (none when ``tx.done``); on exit the rows and the tracking commit
        together. A view that stands behind ``start`` is a ViewError (entries would be lost)."""
        end = tracking.notification_id
        try:
            with self._write() as cur:
                position = self._locked_position(cur)
                if position < start:
                    raise ViewError(f"read model {self.view_name} is at {position}, behind the batch "
                                    f"from {start}: entries {position}..{start - 1} would be skipped")
                tx = ViewTx(self, cur, start, position, end)
                yield tx
                if not tx.done:
                    tx._flush()
                    self._insert_tracking(cur, tracking)
            self._seen(max(position, end))
        except (PersistenceError, sqlite3.Error) as e:
            raise ViewError(f"read model {self.view_name}: {e}") from e

    def _seen(self, position: int) -> None:
        with self._cond:
            if position > self._known:
                self._known = position
                self._cond.notify_all()

    # -- reading --------------------------------------------------------------------------

    def query(self, sql: str, params: Sequence[Any] = (), table: Table | None = None) -> list[dict[str, Any]]:
        """Rows of a read (``?`` placeholders), decoded as ``table``'s when given."""
        try:
            with self._read() as cur:
                cur.execute(self.sql(sql), tuple(params))
                rows = [dict(r) for r in cur.fetchall()]
        except (PersistenceError, sqlite3.Error) as e:
            raise ViewError(f"read model {self.view_name}: {e}") from e
        return [table.decode(r) for r in rows] if table is not None else rows

    def has_tracking_id(self, application_name: str, notification_id: int | None) -> bool:
        """The library's check, answered from this process's last sight of the position when
        that is far enough already."""
        if application_name == LEDGER and notification_id is not None and self._known >= notification_id:
            return True
        return super().has_tracking_id(application_name, notification_id)

    def position(self) -> int:
        """How many ledger entries the view has projected."""
        value = self.max_tracking_id(LEDGER)
        self._seen(value or 0)
        return value or 0

    def wait(self, application_name: str, notification_id: int | None, timeout: float = 1.0,
             interrupt: Event | None = None) -> None:
        """The library's wait, woken at once by this process's commits (its own polls back off
        from 0.1 s to 0.8 s); positions other processes record are polled every ``POLL_S``."""
        if notification_id is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if application_name == LEDGER and self._known >= notification_id:
                    return
            if self.has_tracking_id(application_name, notification_id):
                if application_name == LEDGER:
                    self._seen(notification_id)
                return
            if interrupt is not None and interrupt.is_set():
                raise WaitInterruptedError
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out waiting for notification {notification_id} from "
                                   f"application {application_name!r} to be processed")
            with self._cond:
                if application_name != LEDGER or self._known < notification_id:
                    self._cond.wait(min(POLL_S, remaining))


def _first(row: Any) -> Any:
    return row[0] if not isinstance(row, Mapping) else next(iter(row.values()))


# -- SQLite -------------------------------------------------------------------------------


class _ViewPool(SQLiteConnectionPool):
    """The library's pool; a view's commits need not reach the disk before returning (WAL with
    synchronous NORMAL stays atomic: after a crash the view resumes from an earlier position)."""

    def _create_connection(self) -> SQLiteConnection:
        conn = super()._create_connection()
        with conn.cursor() as c:
            c.execute("PRAGMA synchronous = NORMAL")
        return conn


class _ViewDatastore(SQLiteDatastore):
    def __init__(self, db_name: str, lock_timeout: int) -> None:
        super().__init__(db_name, lock_timeout=lock_timeout, pool_size=4, max_overflow=8,
                         pool_timeout=float(lock_timeout))
        self.pool = _ViewPool(db_name=db_name, lock_timeout=lock_timeout, pool_size=4, max_overflow=8,
                              pool_timeout=float(lock_timeout))


_MEMORY = itertools.count()


class SQLiteView(SQLView, SQLiteTrackingRecorder):
    """A view in its own SQLite file (or in memory: ``path`` None)."""

    types = _SQLITE_TYPES

    def __init__(self, name: str, tables: Sequence[Table], path: Path | None, lock_timeout: int = 60) -> None:
        if path is None:
            db = f"file:view-{os.getpid()}-{next(_MEMORY)}-{name}?mode=memory&cache=shared"
        else:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            db = str(path)
        self.path = path
        super().__init__(_ViewDatastore(db, lock_timeout))
        self._init_view(name, tables)

    def _tracking_table(self) -> str:
        return "tracking"

    def _create(self) -> None:
        self.create_table()  # the library's tracking table
        with self._write() as cur:
            for t in self.tables:
                for stmt in t.ddl(self.types):
                    cur.execute(stmt)
        if self.path is not None:
            for f in (self.path, self.path.with_name(self.path.name + "-wal"),
                      self.path.with_name(self.path.name + "-shm")):
                if f.exists():
                    os.chmod(f, 0o600)

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self.datastore.get_connection(commit=True) as conn, conn.cursor() as cur:
            try:
                cur.execute("BEGIN IMMEDIATE")  # the write lock first: no other writer between
            except sqlite3.Error as e:
                raise ViewError(f"read model {self.view_name}: {e}") from e
            try:
                yield cur
            except BaseException:
                conn.rollback()
                raise
            try:
                conn.commit()
            except sqlite3.Error as e:
                raise ViewError(f"read model {self.view_name}: {e}") from e

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self.datastore.get_connection(commit=False) as conn, conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        """Close the view's connections."""
        self.datastore.close()


# -- PostgreSQL ---------------------------------------------------------------------------


def postgres_view(name: str, tables: Sequence[Table], dsn: str) -> SQLView:
    """A view in the PostgreSQL database at ``dsn`` (the ledger's), shared by every process."""
    from projections.pgview import PostgresView

    return PostgresView(name, tables, dsn)
