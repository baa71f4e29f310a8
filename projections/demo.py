"""What ``make demo`` ends with: project the ledger and print the reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from domain.ports import LedgerStore
from domain.stores.sqlite import SQLiteStore
from projections.errors import ProjectionError
from projections.projector import open_projector
from projections.reports import REPORTS, rich_table, run_report


def analytics_path(data_dir: Path) -> Path:
    """The analytics DuckDB file of a data directory."""
    return Path(data_dir) / "analytics.duckdb"


def run_reports(settings: Any, store: LedgerStore | None = None, out: Console | None = None) -> None:
    """Catch the projection up with the ledger of ``settings`` and print every report."""
    if store is None:
        if getattr(settings, "ledger_url", None):
            raise ProjectionError("pass the ledger store built by api.bootstrap.open_store(settings)")
        store = SQLiteStore(settings.sqlite_path)
    out = out or Console(highlight=False)
    with open_projector(store, analytics_path(settings.data_dir), retries=25) as projector:
        status = projector.catch_up()
        out.print(
            f"[bold]projected[/] {status.applied:,} new entries; position {status.position:,} "
            f"of {status.ledger_size:,} (lag {status.lag})"
        )
        for name in REPORTS:
            out.print(rich_table(run_report(projector.con, name)))
