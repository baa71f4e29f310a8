"""The projector: applies the ledger's global order to the analytics DuckDB file.

An eventsourcing ``Projection`` whose view is the DuckDB file: each batch of entries becomes rows
of ``events`` and recomputed rows of ``run_facts`` for the runs it touches, and its
``Tracking(LEDGER, end)`` is recorded by the file's tracking recorder in the SAME DuckDB
transaction, so a crash at any point leaves the rows and the position consistent (no double
counting on restart). It reads the ledger's raw bytes itself, a batch ahead on a reader thread,
as Arrow tables (docs/decisions/0008-read-side-projections.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import duckdb
from eventsourcing.persistence import Tracking
from eventsourcing.projection import Projection

from domain.ports import LedgerStore
from projections.duckdb_tracking import TRACKING_DDL, DuckDBTrackingRecorder
from projections.errors import AnalyticsBusyError, LedgerMismatchError
from projections.schema import (
    PREVIOUS_SCHEMA_VERSION,
    RUN_FACTS_DDL,
    RUN_FACTS_SELECT,
    SCHEMA_VERSION,
    STATE_DDL,
    events_ddl,
)
from projections.sqlview import LEDGER
from projections.transform import INEXACT, Batch, insert_events_sql, register_functions
from projections.views import view_ddl

DEFAULT_BATCH = 250_000
# a batch commit writes its rows to the WAL; checkpoint (rewrite into the file) only past this
CHECKPOINT_THRESHOLD = "256MB"
TABLES = ("events", "run_facts", "projection_state", "tracking")


def connect(path: Path, read_only: bool = False, retries: int = 0) -> duckdb.DuckDBPyConnection:
    """Open the analytics file (UTC session); AnalyticsBusyError if another process holds it."""
    attempt = 0
    while True:
        try:
            if read_only:
                con = duckdb.connect(str(path), read_only=True)
            else:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                con = duckdb.connect(str(path))
                for file in (path, path.with_name(path.name + ".wal")):  # owner-only, as the ledger
                    if file.exists():
                        os.chmod(file, 0o600)
            con.execute("SET TimeZone = 'UTC'")
            if not read_only:
                con.execute(f"SET checkpoint_threshold = '{CHECKPOINT_THRESHOLD}'")
            return con
        except duckdb.IOException as e:
            if "lock" not in str(e).lower():
                raise
            if attempt >= retries:
                raise AnalyticsBusyError(
                    f"{path} is in use by another process (is `tacho project --follow` running?); "
                    "retry, or read the Parquet lake"
                ) from e
            attempt += 1
            time.sleep(0.2)


@dataclass
class ProjectionStatus:
    """Where the projection stands against the ledger."""

    position: int
    ledger_size: int
    applied: int = 0
    events: int = 0
    seconds: float = 0.0
    rebuilt: bool = False

    @property
    def lag(self) -> int:
        """Ledger entries not yet projected."""
        return max(self.ledger_size - self.position, 0)

    def to_json(self) -> dict[str, Any]:
        """The status as JSON."""
        return {
            "position": self.position,
            "ledger_size": self.ledger_size,
            "lag": self.lag,
            "applied_entries": self.applied,
            "projected_events": self.events,
            "seconds": round(self.seconds, 3),
            "entries_per_second": round(self.applied / self.seconds) if self.seconds > 0 else None,
            "rebuilt": self.rebuilt,
        }


Progress = Callable[[int], None]


class Projector(Projection[DuckDBTrackingRecorder]):
    """Brings one analytics DuckDB connection up to date with a ledger store."""

    name = "analytics"

    def __init__(
        self,
        store: LedgerStore,
        con: duckdb.DuckDBPyConnection,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        super().__init__(DuckDBTrackingRecorder(con))
        self.store = store
        self.con = con
        self.batch_size = batch_size
        self.exact_numbers = False  # set once a batch held money sent as a fractional number
        register_functions(con)

    # -- schema ---------------------------------------------------------------------------

    def _state(self, key: str) -> str | None:
        rows = self.con.execute(
            "SELECT value FROM projection_state WHERE name = ?", [key]
        ).fetchall()
        return str(rows[0][0]) if rows else None

    def _tables(self) -> set[str]:
        rows = self.con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main'"
        ).fetchall()
        return {r[0] for r in rows}

    def create(self) -> None:
        """Drop and recreate every table and view, at position 0 (one transaction)."""
        con = self.con
        con.begin()
        try:
            for name in ("projection_state", "tracking", "run_facts", "events"):
                con.execute(f"DROP TABLE IF EXISTS {name} CASCADE")
            con.execute(STATE_DDL)
            con.execute(TRACKING_DDL)
            self.view._insert_tracking(con, Tracking(LEDGER, 0))
            con.execute(events_ddl())
            con.execute(RUN_FACTS_DDL)
            for stmt in view_ddl():
                con.execute(stmt)
            origin = self.store.get_meta("origin") or ""
            con.executemany(
                "INSERT INTO projection_state VALUES (?, ?)",
                [["schema_version", SCHEMA_VERSION], ["origin", origin]],
            )
            con.commit()
        except BaseException:
            con.rollback()
            raise

    def ensure(self) -> bool:
        """Create the schema if missing or outdated; True if it was (re)created."""
        if "projection_state" in self._tables() and self._state("schema_version") == PREVIOUS_SCHEMA_VERSION:
            self._migrate()
        if "projection_state" not in self._tables() or self._state("schema_version") != SCHEMA_VERSION:
            self.create()
            return True
        origin = self.store.get_meta("origin") or ""
        recorded = self._state("origin") or ""
        if not recorded and origin and self.position() == 0:
            # created before the ledger had an origin (a projector started first): nothing was
            # projected from any ledger yet, so this one is it
            self.con.execute("UPDATE projection_state SET value = ? WHERE name = 'origin'", [origin])
            return False
        if recorded != origin:
            raise LedgerMismatchError(
                f"the analytics database was projected from ledger {self._state('origin')!r}, "
                f"not {origin!r}: run `tacho project --rebuild`"
            )
        return False

    def _migrate(self) -> None:
        """Schema 8 kept the position in ``projection_state``: move it to the tracking table."""
        con = self.con
        con.begin()
        try:
            position = int(self._state("position") or 0)
            con.execute(TRACKING_DDL)
            self.view._insert_tracking(con, Tracking(LEDGER, position))
            con.execute("DELETE FROM projection_state WHERE name = 'position'")
            con.execute("UPDATE projection_state SET value = ? WHERE name = 'schema_version'", [SCHEMA_VERSION])
            con.commit()
        except BaseException:
            con.rollback()
            raise

    def position(self) -> int:
        """Next ledger index to apply (the tracked notification id of the ledger)."""
        return self.view.max_tracking_id(LEDGER) or 0

    def process_event(self, domain_event: Batch, tracking: Tracking) -> None:
        """Apply one batch of entries (read from the recorded position) with its tracking."""
        start = domain_event.end - domain_event.entries
        self.apply(domain_event, start, tracking=tracking)

    # -- applying -------------------------------------------------------------------------

    def apply(
        self, batch: Batch, expected_start: int, staged: Callable[[], None] | None = None,
        tracking: Tracking | None = None,
    ) -> int:
        """Write one batch and its new position in one transaction; the events it added.

        The batch is first copied into a DuckDB temp table (``_stage``); ``staged`` is called
        then, before the heavy statements, which need no GIL from that point on.
        """
        con = self.con
        con.register("_arrow", batch.table())
        try:
            con.execute("CREATE OR REPLACE TEMP TABLE _stage AS SELECT * FROM _arrow")
        finally:
            con.unregister("_arrow")
        try:
            if staged is not None:
                staged()
            tracking = tracking or Tracking(LEDGER, batch.end)
            try:
                return self._apply(batch, expected_start, tracking)
            except duckdb.InvalidInputException as e:
                if self.exact_numbers or INEXACT not in str(e):
                    raise
            # money sent as a fractional JSON number: redo the batch reading those exactly
            self.exact_numbers = True
            return self._apply(batch, expected_start, tracking)
        finally:
            with suppress(duckdb.Error):
                con.execute("DROP TABLE IF EXISTS _stage")

    def _apply(self, batch: Batch, expected_start: int, tracking: Tracking) -> int:
        con = self.con
        added = 0
        con.begin()
        try:
            current = self.position()
            if current != expected_start:
                raise LedgerMismatchError(
                    f"projection position moved from {expected_start} to {current} underneath us "
                    "(two projectors on one file?)"
                )
            if batch.entries:
                added = int(
                    con.execute(insert_events_sql("_stage", self.exact_numbers)).fetchall()[0][0]
                )
            if added:
                con.execute(
                    "CREATE OR REPLACE TEMP TABLE _touched AS SELECT DISTINCT workspace, run_id "
                    "FROM events WHERE idx >= ? AND idx < ?",
                    [expected_start, batch.end],
                )
                low = con.execute(
                    "SELECT min(first_idx) FROM run_facts r SEMI JOIN _touched t "
                    "ON r.workspace = t.workspace AND r.run_id = t.run_id"
                ).fetchall()[0][0]
                low = min(int(low), expected_start) if low is not None else expected_start
                con.execute(
                    "DELETE FROM run_facts WHERE (workspace, run_id) IN "
                    "(SELECT (workspace, run_id) FROM _touched)"
                )
                con.execute(
                    "INSERT INTO run_facts "
                    + RUN_FACTS_SELECT.format(touched="_touched", low=int(low))
                )
                con.execute("DROP TABLE _touched")
            self.view._insert_tracking(con, tracking)  # with the rows, in their transaction
            con.commit()
        except BaseException:
            con.rollback()
            raise
        return added

    def read(self, start: int, end: int) -> Batch:
        """The stored entries from ``start`` to ``end`` (fewer if the store has fewer)."""
        batch = Batch()
        batch.extend(self.store.raw_entries(start, end))
        return batch

    def batches(self, start: int, end: int) -> Iterator[Batch]:
        """Read the ledger from ``start`` to ``end`` in batches (in this thread)."""
        pos = start
        while pos < end:
            batch = self.read(pos, min(pos + self.batch_size, end))
            if batch.end <= pos:  # the store had fewer entries than it said
                return
            yield batch
            pos = batch.end

    def catch_up(self, progress: Progress | None = None, limit: int | None = None) -> ProjectionStatus:
        """Apply every ledger entry after the stored position (optionally at most ``limit``)."""
        started = time.perf_counter()
        rebuilt = self.ensure()
        pos = self.position()
        size = self.store.size()
        if pos > size:
            raise LedgerMismatchError(
                f"the analytics database is at position {pos} but the ledger has only {size} "
                "entries: run `tacho project --rebuild`"
            )
        end = size if limit is None else min(size, pos + limit)
        status = ProjectionStatus(position=pos, ledger_size=size, rebuilt=rebuilt)
        # a reader thread reads batch n + 1 while DuckDB applies batch n from its own temp
        # table (reading while DuckDB scans the Arrow batch would hold the GIL DuckDB needs);
        # the store is used by that thread alone while batches are read
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-read") as pool:
            ahead: Future[Batch] | None = None

            def read_ahead(start: int) -> None:
                nonlocal ahead
                stop = min(start + self.batch_size, end)
                ahead = pool.submit(self.read, start, stop) if start < end else None

            read_ahead(pos)
            while ahead is not None:
                batch = ahead.result()
                ahead = None
                if batch.end <= status.position:  # the store had fewer entries than it said
                    break
                status.events += self.apply(
                    batch, status.position, staged=partial(read_ahead, batch.end)
                )
                status.position = batch.end
                status.applied += batch.entries
                if progress is not None:
                    progress(batch.entries)
        status.seconds = time.perf_counter() - started
        return status

    def rebuild(self, progress: Progress | None = None) -> ProjectionStatus:
        """Recreate everything from the ledger's first entry."""
        self.create()
        status = self.catch_up(progress)
        status.rebuilt = True
        return status


@contextmanager
def open_projector(
    store: LedgerStore, path: Path, batch_size: int = DEFAULT_BATCH, retries: int = 0
) -> Iterator[Projector]:
    """A projector over the analytics file at ``path`` (closed on exit)."""
    con = connect(path, retries=retries)
    try:
        yield Projector(store, con, batch_size)
    finally:
        con.close()


def status_of(store: LedgerStore, path: Path) -> ProjectionStatus:
    """Position and lag of the analytics file at ``path`` (read-only)."""
    size = store.size()
    if not path.exists():
        return ProjectionStatus(position=0, ledger_size=size)
    con = connect(path, read_only=True, retries=10)
    try:
        position = DuckDBTrackingRecorder(con).max_tracking_id(LEDGER) or 0
    except duckdb.CatalogException:
        position = 0
    finally:
        con.close()
    return ProjectionStatus(position=position, ledger_size=size)
