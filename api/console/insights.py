"""The cost and quality page: projection reports of one workspace drawn as SVG charts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from markupsafe import Markup

from api.console.charts import bar_chart, line_chart
from domain.origins import PRODUCTION_RUNS, OriginSelection


@dataclass
class Chart:
    """One chart and the rows it was drawn from."""

    title: str
    svg: Markup
    columns: list[str]
    rows: list[list[Any]]


class AnalyticsMissing(Exception):
    """There is no projections file yet (``tacho project`` has not run)."""


def _records(con: Any, name: str, by: Sequence[str], since: str | None, workspace: str,
             runs: OriginSelection) -> list[dict[str, Any]]:
    from projections.reports import run_report

    report = run_report(con, name, ["workspace", *by], since, runs)
    return [r for r in report.records() if r.get("workspace") == workspace]


def _label(r: dict[str, Any], dims: Sequence[str]) -> str:
    return " · ".join(str(r.get(d) if r.get(d) is not None else "—") for d in dims)


def _table(rows: list[dict[str, Any]], cols: Sequence[str]) -> tuple[list[str], list[list[Any]]]:
    return list(cols), [[r.get(c) for c in cols] for r in rows]


def build_charts(data_dir: Path, workspace: str, since: str | None, period: str,
                 runs: OriginSelection = PRODUCTION_RUNS, snapshots: Path | None = None) -> list[Chart]:
    """The page's charts of the selected runs, production by default, from the data directory's
    analytics file or the newest snapshot in ``snapshots`` (raises AnalyticsMissing when there
    is none yet)."""
    from projections.errors import AnalyticsMissingError
    from projections.snapshots import open_for_reading

    try:
        con = open_for_reading(data_dir, snapshots)
    except AnalyticsMissingError as e:
        raise AnalyticsMissing(str(e)) from e
    try:
        over_time = _records(con, "cost-per-outcome", ["workflow", period], since, workspace, runs)
        by_version = _records(con, "cost-per-outcome", ["workflow", "agent_version"], since, workspace, runs)
        by_route = _records(con, "cost-per-outcome", ["route"], since, workspace, runs)
        violations = _records(con, "violations", ["workflow", "agent_version"], since, workspace, runs)
        budgets = _records(con, "budgets", ["workflow", "limit"], since, workspace, runs)
        approvals = _records(con, "approvals", ["workflow", "risk"], since, workspace, runs)
    finally:
        con.close()
    series: dict[str, list[tuple[str, Any]]] = {}
    for r in over_time:
        series.setdefault(str(r["workflow"]), []).append((str(r[period]), r["cost_per_outcome_usd"]))
    charts = [
        Chart(f"Cost per successful outcome by {period}", line_chart(
            f"Cost per successful outcome by {period} (USD)", series, "$"),
            *_table(over_time, ["workflow", period, "runs", "successful_outcomes", "total_cost_usd",
                                "cost_per_outcome_usd", "unpriced_runs", "priced_cost_usd"])),
        Chart("Cost per outcome by agent version", bar_chart(
            "Cost per successful outcome by workflow · agent version (USD)",
            [(_label(r, ["workflow", "agent_version"]), r["cost_per_outcome_usd"]) for r in by_version], "$"),
            *_table(by_version, ["workflow", "agent_version", "runs", "successful_outcomes",
                                 "cost_per_outcome_usd", "unpriced_runs"])),
        Chart("Cost per outcome by model route", bar_chart(
            "Cost per successful outcome by model route (USD)",
            [(_label(r, ["route"]), r["cost_per_outcome_usd"]) for r in by_route], "$"),
            *_table(by_route, ["route", "runs", "successful_outcomes", "cost_per_outcome_usd",
                               "unpriced_runs"])),
        Chart("Violation rates", bar_chart(
            "Runs with a policy denial (share of runs)",
            [(_label(r, ["workflow", "agent_version"]), r["violation_rate"]) for r in violations], "%"),
            *_table(violations, ["workflow", "agent_version", "runs", "runs_with_denial",
                                 "violation_rate", "denials_per_1000_tool_calls"])),
        Chart("Budget breaches", bar_chart(
            "Budget breaches by workflow · limit",
            [(_label(r, ["workflow", "limit"]), r["breaches"]) for r in budgets]),
            *_table(budgets, ["workflow", "limit", "breaches", "runs_breached", "cost_of_breached_runs_usd"])),
        Chart("Approval latency", bar_chart(
            "Approval latency p50 by workflow · risk (ms)",
            [(_label(r, ["workflow", "risk"]), r["p50_latency_ms"]) for r in approvals], " ms"),
            *_table(approvals, ["workflow", "risk", "requested", "decided", "pending", "granted",
                                "rejected", "p50_latency_ms", "p95_latency_ms"])),
    ]
    return charts
