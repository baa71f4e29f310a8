"""eventsourcing's tracking recorder in the analytics DuckDB file: the library has none for DuckDB.

The projector writes a batch's rows and ``Tracking(LEDGER, end)`` in one DuckDB transaction
(``_insert_tracking`` on its connection), as the library's SQL recorders do in theirs; the table
has the library's single-row shape (one row per application, its id only moving forward).
"""

from __future__ import annotations

import threading
import time
from threading import Event

import duckdb
from eventsourcing.persistence import (
    IntegrityError,
    Tracking,
    TrackingRecorder,
    WaitInterruptedError,
)

TRACKING_DDL = """
CREATE TABLE IF NOT EXISTS tracking (
    application_name VARCHAR PRIMARY KEY,
    notification_id BIGINT NOT NULL
)
"""
_INSERT = (
    "INSERT INTO tracking VALUES (?, ?) ON CONFLICT (application_name) DO UPDATE "
    "SET notification_id = excluded.notification_id "
    "WHERE tracking.notification_id < excluded.notification_id RETURNING notification_id"
)
_POLL_S = 0.05


class DuckDBTrackingRecorder(TrackingRecorder):
    """Tracking rows in the ``tracking`` table of one DuckDB connection (shared with the rows)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con = con
        self._lock = threading.RLock()  # one DuckDB connection: one statement at a time

    def create_table(self) -> None:
        """Create the tracking table if missing."""
        with self._lock:
            self.con.execute(TRACKING_DDL)

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record a tracking object in its own transaction (IntegrityError unless it moves forward)."""
        with self._lock:
            self.con.begin()
            try:
                self._insert_tracking(self.con, tracking)
                self.con.commit()
            except BaseException:
                self.con.rollback()
                raise

    def _insert_tracking(self, con: duckdb.DuckDBPyConnection, tracking: Tracking) -> None:
        """Record a tracking object inside the caller's transaction on ``con``."""
        rows = con.execute(_INSERT, [tracking.application_name, tracking.notification_id]).fetchall()
        if not rows:
            raise IntegrityError(f"Failed to record tracking for {tracking.application_name} "
                                 f"{tracking.notification_id}")

    def max_tracking_id(self, application_name: str) -> int | None:
        """The application's recorded notification id, or None."""
        with self._lock:
            rows = self.con.execute("SELECT max(notification_id) FROM tracking WHERE application_name = ?",
                                    [application_name]).fetchall()
        return None if not rows or rows[0][0] is None else int(rows[0][0])

    def wait(self, application_name: str, notification_id: int | None, timeout: float = 1.0,
             interrupt: Event | None = None) -> None:
        """The library's wait, polling every 50 ms (the library backs off to 0.8 s)."""
        deadline = time.monotonic() + timeout
        while not self.has_tracking_id(application_name, notification_id):
            if interrupt is not None and interrupt.is_set():
                raise WaitInterruptedError
            if time.monotonic() >= deadline:
                raise TimeoutError(f"timed out waiting for notification {notification_id} from "
                                   f"application {application_name!r} to be processed")
            time.sleep(_POLL_S)
