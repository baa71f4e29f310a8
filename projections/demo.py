"""What ``make demo`` ends with: project the ledger and print the reports."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from domain.origins import PRODUCTION
from domain.ports import LedgerStore
from domain.stores.sqlite import SQLiteStore
from projections.errors import ProjectionError
from projections.projector import open_projector
from projections.reports import REPORTS, Report, rich_table, run_report


def analytics_path(data_dir: Path) -> Path:
    """The analytics DuckDB file of a data directory."""
    return Path(data_dir) / "analytics.duckdb"


def run_reports(
    settings: Any, store: LedgerStore | None = None, out: Console | None = None
) -> dict[str, Any]:
    """Catch the projection up with the ledger of ``settings`` and print every report.

    The reports count production runs: the replays the demo made, and any other run the platform
    wrote, are left out and counted apart. Returns the analytics file, the projection's status,
    every report (as JSON) and the number of runs of each origin.
    """
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
        origins = runs_by_origin(projector.con)
        reports = {}
        for name in REPORTS:
            report = run_report(projector.con, name)
            reports[name] = report.to_json()
            out.print(rich_table(_narrow(report)))
        others = ", ".join(f"{n:,} {o}" for o, n in origins.items() if o != PRODUCTION)
        if others:
            out.print(f"counted: {origins.get(PRODUCTION, 0):,} production runs; left out: {others} "
                      "runs (tacho report NAME --origin replay|compensation|audit|all)")
        out.print("every column: tacho report NAME --format table|json|csv|png (docs/analytics.md)")
    return {"file": str(analytics_path(settings.data_dir)), "projection": status.to_json(),
            "runs_by_origin": origins, "reports": reports}


def runs_by_origin(con: Any) -> dict[str, int]:
    """How many projected runs there are of each origin (production first); OPA's decision logs
    are no runs (docs/decisions/0006)."""
    rows = con.execute("SELECT origin, count(*) FROM run_facts WHERE NOT decision_log GROUP BY origin").fetchall()
    counts = {str(origin): int(n) for origin, n in rows}
    return {o: counts[o] for o in sorted(counts, key=lambda o: (o != PRODUCTION, o))}


# What the demo shows of each report, so it reads on an 80-column terminal.
DEMO_COLUMNS = {
    "cost-per-outcome": ("workflow", "week", "runs", "successful_outcomes", "total_cost_usd", "cost_per_outcome_usd"),
    "violations": ("workflow", "agent_version", "runs", "violation_rate", "denials_per_1000_tool_calls"),
    "budgets": ("workflow", "limit", "breaches", "runs_breached", "cost_of_breached_runs_usd"),
    "approvals": ("workflow", "risk", "requested", "granted", "rejected", "p50_latency_ms", "p95_latency_ms"),
    "outcomes": ("workflow", "runs", "succeeded", "failed", "success_rate", "acceptance_rate"),
}


def _narrow(report: Report) -> Report:
    keep = [c for c in DEMO_COLUMNS.get(report.name, ()) if c in report.columns] or report.columns
    idx = [report.columns.index(c) for c in keep]
    return replace(report, columns=keep, rows=[tuple(row[i] for i in idx) for row in report.rows])
