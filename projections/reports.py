"""Report queries over the analytics views and their formatting (rich table, JSON, CSV)."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import duckdb
from rich.table import Table

from domain.origins import PRODUCTION_RUNS, OriginSelection
from projections.errors import ReportError
from projections.views import (
    approval_latency_sql,
    budget_summary_sql,
    cost_per_outcome_sql,
    outcome_slo_sql,
    violation_rates_by_policy_sql,
    violation_rates_sql,
)

FORMATS = ("table", "json", "csv", "png")


@dataclass(frozen=True)
class ReportSpec:
    """One report: its title, its SQL builder and default grouping."""

    title: str
    build: Callable[[Sequence[str], str | None, OriginSelection], str]
    default_by: tuple[str, ...]


def _violations(by: Sequence[str], since: str | None, runs: OriginSelection) -> str:
    if "policy" in by or "revision" in by:
        return violation_rates_by_policy_sql(by, since, runs)
    return violation_rates_sql(by, since, runs)


REPORTS: dict[str, ReportSpec] = {
    "cost-per-outcome": ReportSpec(
        "Cost per successful outcome", cost_per_outcome_sql, ("workflow", "week")
    ),
    "violations": ReportSpec("Policy violation rates", _violations, ("workflow", "agent_version")),
    "budgets": ReportSpec("Budget breaches", budget_summary_sql, ("workflow", "limit")),
    "approvals": ReportSpec("Approval latency", approval_latency_sql, ("workflow", "risk")),
    "outcomes": ReportSpec("Outcome SLO", outcome_slo_sql, ("workflow",)),
}


@dataclass
class Report:
    """A computed report: column names and rows."""

    name: str
    title: str
    by: list[str]
    since: str | None
    columns: list[str]
    rows: list[tuple[Any, ...]]
    runs: OriginSelection = field(default=PRODUCTION_RUNS)

    def records(self) -> list[dict[str, Any]]:
        """Rows as dicts (column -> value)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data (Decimal money kept exact as strings by the printer)."""
        return {
            "report": self.name,
            "by": self.by,
            "since": self.since,
            **self.runs.to_json(),
            "rows": [{k: _jsonable(v) for k, v in r.items()} for r in self.records()],
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, float):
        return round(value, 6)
    return value


def parse_by(text: str | None, name: str) -> list[str]:
    """``--by a,b`` as a list (the report's default when empty)."""
    if name not in REPORTS:
        raise ReportError(f"unknown report {name!r}; one of {', '.join(REPORTS)}")
    if not text:
        return list(REPORTS[name].default_by)
    return [part.strip().replace("-", "_") for part in text.split(",") if part.strip()]


def run_report(
    con: duckdb.DuckDBPyConnection,
    name: str,
    by: Sequence[str] | None = None,
    since: str | None = None,
    runs: OriginSelection = PRODUCTION_RUNS,
) -> Report:
    """Compute report ``name`` grouped by ``by`` (dimensions) for the selected runs (production
    by default) started on/after ``since``."""
    if name not in REPORTS:
        raise ReportError(f"unknown report {name!r}; one of {', '.join(REPORTS)}")
    spec = REPORTS[name]
    dims = list(by) if by else list(spec.default_by)
    cur = con.execute(spec.build(dims, since, runs))
    columns = [d[0] for d in cur.description or []]
    rows = cur.fetchall()
    return Report(name, spec.title, dims, since, columns, rows, runs)


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, Decimal):
        return f"{value:f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def rich_table(report: Report) -> Table:
    """The report as a rich table for people."""
    title = f"{report.title}: {report.runs.describe()}" + (
        f" started since {report.since}" if report.since else "")
    table = Table(title=title, title_justify="left")
    for col in report.columns:
        numeric = col not in report.by
        table.add_column(col.replace("_", " "), justify="right" if numeric else "left")
    for row in report.rows:
        table.add_row(*(_cell(v) for v in row))
    if not report.rows:
        table.caption = "no runs match"
    elif unpriced := _unpriced_runs(report):
        table.caption = (f"{unpriced} run(s) had model calls with no known price: their cost is "
                         "unknown (—); priced cost usd is what the priced calls cost "
                         "(a price file, TACHO_PRICES, prices more models)")
    return table


def _unpriced_runs(report: Report) -> int:
    """Runs with an unpriced model call, over the report's rows (0 if it does not count them)."""
    if "unpriced_runs" not in report.columns:
        return 0
    i = report.columns.index("unpriced_runs")
    return sum(int(row[i] or 0) for row in report.rows)


def to_csv(report: Report) -> str:
    """The report as CSV (header row; money exact; dates ISO)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(report.columns)
    for row in report.rows:
        writer.writerow(["" if v is None else _jsonable(v) for v in row])
    return out.getvalue()
