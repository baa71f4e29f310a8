"""A read model in the ledger's PostgreSQL database: eventsourcing's ``PostgresTrackingRecorder``
with the projection's tables beside its tracking table (``<name>_tracking``).

Every API process on one PostgreSQL ledger shares the view: a batch takes the tracking row
``FOR UPDATE`` before it writes, so one process projects each entry and the others find the
position moved past their batch (docs/decisions/0008-read-side-projections.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from psycopg.conninfo import conninfo_to_dict

from projections.sqlview import _PG_TYPES, SQLView, Table

_DATASTORE_KEYS = ("dbname", "host", "port", "user", "password")


class PostgresView(SQLView, PostgresTrackingRecorder):
    """A view's tables and tracking row in PostgreSQL."""

    types = _PG_TYPES
    placeholder = "%s"

    def __init__(self, name: str, tables: Sequence[Table], dsn: str) -> None:
        info = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
        datastore = PostgresDatastore(
            dbname=info.get("dbname", ""), host=info.get("host", ""), port=info.get("port", "5432"),
            user=info.get("user", ""), password=info.get("password", ""),
            pool_size=2, max_overflow=6, connect_timeout=10.0,
        )
        # the rest of the URL (sslmode, options, ...) reaches psycopg as given
        cast(dict[str, Any], datastore.pool.kwargs).update({k: v for k, v in info.items() if k not in _DATASTORE_KEYS})
        super().__init__(datastore, tracking_table_name=f"{name}_tracking")
        self._init_view(name, tables)

    def _tracking_table(self) -> str:
        return self.tracking_table_name

    def _for_update(self) -> str:
        return " FOR UPDATE"

    def _create(self) -> None:
        # processes starting together must not race CREATE TABLE IF NOT EXISTS (pg_type clashes)
        with self.datastore.get_connection() as conn:
            conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (self.view_name,))
            try:
                self.create_table()  # the library's tracking table (and its migration row)
                with self._write() as cur:
                    for t in self.tables:
                        for stmt in t.ddl(self.types):
                            cur.execute(stmt)
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (self.view_name,))

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self.datastore.transaction(commit=True) as cur:
            yield cur

    @contextmanager
    def _read(self) -> Iterator[Any]:
        with self.datastore.get_connection() as conn, conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        """Close the view's connections."""
        self.datastore.close()
