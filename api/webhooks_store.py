"""Webhook endpoints, their signing secrets, deliveries and the ledger position, in one SQLite file.

The file (``data_dir/keys/webhooks.db``, mode 0600) holds each endpoint's secret in clear: the
server must sign with it. Notifications are enqueued and the position advanced in one
transaction, so a restart resumes where the last one stopped and never enqueues twice.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api.webhooks import Notification, WebhookRequestError
from domain.errors import ConfigError, NotFoundError
from domain.ledger import iso

SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
  id TEXT PRIMARY KEY, workspace TEXT NOT NULL, url TEXT NOT NULL, kinds TEXT NOT NULL,
  secret TEXT NOT NULL, description TEXT NOT NULL, created TEXT NOT NULL, from_index INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS endpoints_workspace ON endpoints(workspace);
CREATE TABLE IF NOT EXISTS deliveries (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  endpoint_id TEXT NOT NULL REFERENCES endpoints(id) ON DELETE CASCADE,
  notification_id TEXT NOT NULL, kind TEXT NOT NULL, run_id TEXT, ledger_index INTEGER NOT NULL,
  body BLOB NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt REAL, last_status INTEGER, last_error TEXT, created REAL NOT NULL, updated REAL NOT NULL,
  UNIQUE (endpoint_id, notification_id));
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_attempt);
CREATE INDEX IF NOT EXISTS deliveries_endpoint ON deliveries(endpoint_id, status, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
STATUSES = ("pending", "delivered", "failed")
_ENDPOINT_COLS = "id, workspace, url, kinds, description, created, from_index"
_DELIVERY_COLS = ("id, endpoint_id, notification_id, kind, run_id, ledger_index, status, attempts, "
                  "next_attempt, last_status, last_error, created, updated")


@dataclass(frozen=True)
class Endpoint:
    """One webhook endpoint (never its secret)."""

    id: str
    workspace: str
    url: str
    kinds: list[str]
    description: str
    created: str
    from_index: int  # notifications of ledger entries from this index on

    @staticmethod
    def of(row: Sequence[Any]) -> Endpoint:
        """From a row of ``_ENDPOINT_COLS``."""
        return Endpoint(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], int(row[6]))


@dataclass(frozen=True)
class Delivery:
    """One notification to one endpoint: its status and what the last attempt got."""

    id: int
    endpoint_id: str
    notification_id: str
    kind: str
    run_id: str | None
    ledger_index: int
    status: str
    attempts: int
    next_attempt: float | None
    last_status: int | None
    last_error: str | None
    created: float
    updated: float

    def to_json(self) -> dict[str, Any]:
        """As the API shows it (times as RFC 3339)."""
        return {"id": self.id, "endpoint_id": self.endpoint_id, "notification_id": self.notification_id,
                "kind": self.kind, "run_id": self.run_id, "ledger_index": self.ledger_index,
                "status": self.status, "attempts": self.attempts,
                "next_attempt": iso(self.next_attempt) if self.next_attempt is not None else None,
                "last_status": self.last_status, "last_error": self.last_error,
                "created": iso(self.created), "updated": iso(self.updated)}


@dataclass(frozen=True)
class Outgoing:
    """A due delivery with what sending it needs."""

    id: int
    notification_id: str
    attempts: int
    body: bytes
    url: str
    secret: str


class WebhookStore:
    """Endpoints, secrets, deliveries and the dispatcher's ledger position (thread-safe)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        if str(path) != ":memory:":
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            mode = self.path.stat().st_mode & 0o777
            if mode & 0o077:
                raise ConfigError(f"webhook file {self.path} is readable by others (mode {mode:o}); chmod 600 it")
        try:
            self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise ConfigError(f"cannot open the webhook file {self.path}: {e}") from e

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # endpoints

    def create_endpoint(self, workspace: str, url: str, kinds: list[str], description: str,
                        from_index: int, secret: str, created: float, limit: int) -> Endpoint:
        """Store a new endpoint (at most ``limit`` per workspace)."""
        ep = Endpoint("wh_" + secrets.token_hex(6), workspace, url, kinds, description, iso(created), from_index)
        with self._tx() as c:
            (count,) = c.execute("SELECT count(*) FROM endpoints WHERE workspace = ?", (workspace,)).fetchone()
            if count >= limit:
                raise WebhookRequestError(
                    f"workspace {workspace!r} has {count} webhook endpoints, the most allowed "
                    f"(TACHO_WEBHOOK_MAX_ENDPOINTS={limit}); delete one first")
            c.execute(f"INSERT INTO endpoints ({_ENDPOINT_COLS}, secret) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (ep.id, workspace, url, json.dumps(kinds), description, ep.created, from_index, secret))
        return ep

    def endpoints(self, workspace: str | None = None) -> list[Endpoint]:
        """Endpoints (of one workspace when given), oldest first."""
        where, args = ("WHERE workspace = ?", (workspace,)) if workspace is not None else ("", ())
        rows = self._read(f"SELECT {_ENDPOINT_COLS} FROM endpoints {where} ORDER BY created, id", args)
        return [Endpoint.of(r) for r in rows]

    def endpoint(self, workspace: str, endpoint_id: str) -> Endpoint:
        """One endpoint of a workspace (NotFoundError for another workspace's, like a missing one)."""
        rows = self._read(f"SELECT {_ENDPOINT_COLS} FROM endpoints WHERE id = ? AND workspace = ?",
                          (endpoint_id, workspace))
        if not rows:
            raise NotFoundError(f"no webhook endpoint {endpoint_id!r}")
        return Endpoint.of(rows[0])

    def delete_endpoint(self, workspace: str, endpoint_id: str) -> Endpoint:
        """Delete an endpoint, its secret and its deliveries (pending ones are never sent)."""
        ep = self.endpoint(workspace, endpoint_id)
        with self._tx() as c:
            c.execute("DELETE FROM endpoints WHERE id = ?", (endpoint_id,))
        return ep

    def counts(self, endpoint_id: str) -> dict[str, int]:
        """Deliveries kept for an endpoint, by status."""
        rows = self._read("SELECT status, count(*) FROM deliveries WHERE endpoint_id = ? GROUP BY status",
                          (endpoint_id,))
        return {s: 0 for s in STATUSES} | {str(s): int(n) for s, n in rows}

    # the dispatcher's side

    def position(self) -> int | None:
        """The ledger index the dispatcher reads from next (None before its first start)."""
        rows = self._read("SELECT value FROM meta WHERE key = 'position'")
        return int(rows[0][0]) if rows else None

    def enqueue(self, items: Sequence[tuple[str, Notification]], position: int, now: float,
                max_pending: int) -> int:
        """Add pending deliveries and move the position to ``position``, in one transaction.

        A notification already enqueued for an endpoint is ignored; one for a deleted endpoint is
        dropped; an endpoint with ``max_pending`` pending deliveries gets it as ``failed`` at once.
        Returns how many deliveries were added.
        """
        added = 0
        with self._tx() as c:
            live = {r[0] for r in c.execute("SELECT id FROM endpoints")} if items else set()
            pending = dict(c.execute(
                "SELECT endpoint_id, count(*) FROM deliveries WHERE status = 'pending' GROUP BY endpoint_id"
            ).fetchall()) if items else {}
            for endpoint_id, n in items:
                if endpoint_id not in live:
                    continue
                full = pending.get(endpoint_id, 0) >= max_pending
                status, nxt, err = ("failed", None, f"not sent: {max_pending} deliveries were already "
                                    "pending for this endpoint") if full else ("pending", now, None)
                cur = c.execute(
                    "INSERT OR IGNORE INTO deliveries (endpoint_id, notification_id, kind, run_id, "
                    "ledger_index, body, status, next_attempt, last_error, created, updated) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (endpoint_id, n.id, n.kind, n.run_id, n.ledger_index, n.body(), status, nxt, err, now, now))
                if cur.rowcount:
                    added += 1
                    if not full:
                        pending[endpoint_id] = pending.get(endpoint_id, 0) + 1
            c.execute("INSERT INTO meta (key, value) VALUES ('position', ?) "
                      "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(position),))
        return added

    def due_endpoints(self, now: float, limit: int, exclude: Collection[str] = ()) -> list[str]:
        """Endpoints (not in ``exclude``) with a pending delivery due by ``now``, the longest waiting first."""
        marks = ", ".join("?" * len(exclude))
        rows = self._read(
            "SELECT endpoint_id, min(next_attempt) AS due FROM deliveries "
            f"WHERE status = 'pending' AND next_attempt <= ? AND endpoint_id NOT IN ({marks}) "
            "GROUP BY endpoint_id ORDER BY due LIMIT ?",
            (now, *exclude, limit))
        return [str(r[0]) for r in rows]

    def next_due(self, endpoint_id: str, now: float) -> Outgoing | None:
        """The endpoint's pending delivery due first by ``now``, with its URL and secret."""
        rows = self._read(
            "SELECT d.id, d.notification_id, d.attempts, d.body, e.url, e.secret FROM deliveries d "
            "JOIN endpoints e ON e.id = d.endpoint_id WHERE d.endpoint_id = ? AND d.status = 'pending' "
            "AND d.next_attempt <= ? ORDER BY d.next_attempt, d.id LIMIT 1", (endpoint_id, now))
        if not rows:
            return None
        r = rows[0]
        return Outgoing(int(r[0]), str(r[1]), int(r[2]), bytes(r[3]), str(r[4]), str(r[5]))

    def attempted(self, delivery_id: int, status: str, next_attempt: float | None,
                  http_status: int | None, error: str | None, now: float) -> None:
        """Record one attempt's result (a deleted endpoint's delivery is simply gone)."""
        with self._tx() as c:
            c.execute("UPDATE deliveries SET status = ?, attempts = attempts + 1, next_attempt = ?, "
                      "last_status = ?, last_error = ?, updated = ? WHERE id = ?",
                      (status, next_attempt, http_status, error, now, delivery_id))

    def deliveries(self, endpoint_id: str, status: str | None, limit: int) -> list[Delivery]:
        """An endpoint's deliveries, newest first."""
        where, args = "endpoint_id = ?", [endpoint_id]
        if status is not None:
            where += " AND status = ?"
            args.append(status)
        rows = self._read(f"SELECT {_DELIVERY_COLS} FROM deliveries WHERE {where} ORDER BY id DESC LIMIT ?",
                          (*args, limit))
        return [Delivery(*r) for r in rows]

    def prune(self, keep: int) -> int:
        """Forget all but the newest ``keep`` finished deliveries of each endpoint; return how many."""
        with self._tx() as c:
            cur = c.execute(
                "DELETE FROM deliveries WHERE status != 'pending' AND id IN (SELECT id FROM ("
                " SELECT id, row_number() OVER (PARTITION BY endpoint_id ORDER BY id DESC) AS n"
                " FROM deliveries WHERE status != 'pending') WHERE n > ?)", (keep,))
            return int(cur.rowcount)

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._conn.close()
