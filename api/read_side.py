"""Where the API's read models live, built from the ledger store they project (composition).

A SQLite ledger's views are SQLite files under ``data_dir/views/`` (one per projection); a
PostgreSQL ledger's are tables in the same database, shared by every API process on it; a ledger
in memory (tests) gets views in memory. docs/decisions/0008-read-side-projections.md.
"""

from __future__ import annotations

from pathlib import Path

from api.settings import Settings
from domain.ports import LedgerStore
from projections.run_index import RUNS, RunIndex, RunIndexProjection
from projections.sqlview import SQLiteView, SQLView, Table


def open_view(store: LedgerStore, data_dir: Path, name: str, tables: tuple[Table, ...]) -> SQLView:
    """The view ``name`` of the read model of ``store``'s ledger."""
    dsn = getattr(store, "dsn", None)
    if isinstance(dsn, str):
        from projections.pgview import PostgresView

        return PostgresView(name, tables, dsn)
    path = getattr(store, "path", None)
    if path is None or str(path) == ":memory:":
        return SQLiteView(name, tables, None)
    return SQLiteView(name, tables, data_dir / "views" / f"{name}.db")


def run_index(settings: Settings, store: LedgerStore) -> RunIndex:
    """The run index of ``store``'s ledger (the API's runs, replay's catalogue), in its view."""
    return RunIndex(store, open_view(store, settings.data_dir, RunIndexProjection.name, (RUNS,)),
                    wait_s=settings.read_wait_s)
