"""Analytics over the projections (read-only: the analytics file, or the newest snapshot the
projector published) and Parquet export download."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import Analyst, Exporter, Services, ServicesDep
from api.routes.audit import audited
from api.routes.errors import BadParameter, Unavailable
from api.schemas import OriginQuery, ReplayIdQuery, errors
from domain.origins import OriginSelection

router = APIRouter(tags=["analytics"])

DATE = r"^\d{4}-\d{2}-\d{2}$"
Since = Annotated[
    str | None,
    Query(pattern=DATE, description="runs started on or after this date (YYYY-MM-DD)",
          json_schema_extra={"format": "date"}),
]
Until = Annotated[
    str | None,
    Query(pattern=DATE, description="runs started before this date (YYYY-MM-DD, exclusive)",
          json_schema_extra={"format": "date"}),
]
Outcome = Annotated[
    Literal["succeeded", "failed", "escalated", "cancelled", "running"] | None,
    Query(description="only runs that ended so (`running`: agents' runs not completed yet)"),
]
HasDenial = Annotated[bool | None, Query(description="only runs with (true) or without (false) a policy denial")]
Text = Annotated[str | None, Query(max_length=512, pattern=r"^[^\x00]*$")]


def _date(text: str | None, name: str = "since") -> str | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as e:
        raise BadParameter(f"{name}: {text!r} is not a calendar date") from e


@dataclass(frozen=True)
class RunScope:
    """The runs-list filters, applied to the runs an analytics report counts."""

    workspace: str
    workflow: str | None = None
    agent: str | None = None
    outcome: str | None = None
    until: str | None = None
    has_denial: bool | None = None

    def where(self) -> str:
        """SQL condition over ``run_facts`` (values are quoted literals; dates are parsed dates)."""
        conds = [f"workspace = {_literal(self.workspace)}"]
        if self.workflow is not None:
            conds.append(f"workflow = {_literal(self.workflow)}")
        if self.agent is not None:
            conds.append(f"agent_id = {_literal(self.agent)}")
        if self.outcome == "running":  # agents' runs not completed (OPA's decision logs never are)
            conds.append("outcome IS NULL AND NOT decision_log")
        elif self.outcome is not None:
            conds.append(f"outcome = {_literal(self.outcome)}")
        if self.until is not None:
            conds.append(f"CAST(started_at AS DATE) < DATE '{self.until}'")
        if self.has_denial is not None:
            conds.append("denials > 0" if self.has_denial else "denials = 0")
        return " AND ".join(conds)


def _literal(text: str) -> str:
    """A SQL string literal (quotes doubled; NUL refused by the query patterns)."""
    return "'" + text.replace("'", "''") + "'"


def scope_runs(con: Any, scope: RunScope) -> None:
    """Shadow ``run_facts`` in this session with a temporary view of the runs in scope.

    Every report reads its runs from ``run_facts``, so one view applies the same filters to all.
    """
    db = con.execute("SELECT current_database()").fetchone()[0]
    quoted = '"' + str(db).replace('"', '""') + '"'
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW run_facts AS "
        f"SELECT * FROM {quoted}.main.run_facts WHERE {scope.where()}"
    )


REPORT_NAMES = Literal["cost-per-outcome", "violations", "budgets", "approvals", "outcomes"]
TABLES = Literal["events", "model_calls", "tool_calls", "policy_evaluations", "approvals", "changes"]


def _open_analytics(services: Services) -> Any:
    """A read-only connection to the analytics: the newest snapshot in TACHO_ANALYTICS_DIR, or
    the data directory's file (Unavailable, 503, while there is none)."""
    from projections.errors import AnalyticsMissingError
    from projections.snapshots import open_for_reading

    settings = services.settings
    try:
        return open_for_reading(settings.data_dir, settings.analytics_dir)
    except AnalyticsMissingError as e:
        raise Unavailable(str(e)) from e


def _report(services: Services, name: str, by: list[str], since: str | None,
            scope: RunScope, runs: OriginSelection) -> dict[str, Any]:
    from projections.reports import REPORTS, run_report

    dims = ["workspace", *[d for d in by if d != "workspace"]] if by else [
        "workspace", *REPORTS[name].default_by]
    con = _open_analytics(services)
    try:
        scope_runs(con, scope)
        report = run_report(con, name, dims, since, runs)
    finally:
        con.close()
    out = report.to_json()
    rows = [r for r in out["rows"] if r.get("workspace") == scope.workspace]
    for r in rows:
        r.pop("workspace", None)
    filters = {k: v for k, v in (("workflow", scope.workflow), ("agent", scope.agent),
                                 ("outcome", scope.outcome), ("until", scope.until),
                                 ("has_denial", scope.has_denial)) if v is not None}
    return {"report": name, "workspace": scope.workspace, "by": dims[1:], "since": since,
            **runs.to_json(), "filters": filters,
            "rows": [{k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
                      for k, v in r.items()} for r in rows]}


@router.get(
    "/v1/analytics/{report}",
    summary="An analytics report of the key's workspace",
    description="Cost per outcome, violation rates, budget breaches, approval latency or outcome "
    "SLO from the projections (`tacho project`), grouped by `by` (comma separated: workflow, "
    "agent, agent_version, route, day, week, policy, limit, risk... as the report allows). "
    "The runs counted take the runs list's filters: `workflow`, `agent`, `outcome`, `has_denial` "
    "and the start-date range `since` (inclusive) to `until` (exclusive); the approvals report "
    "applies `since` to the request time. Only production runs count unless `origin` says "
    "otherwise (`replay`, `compensation`, `audit` or `all`; `replay_id` picks one replay's runs); "
    "the body names the `origin` and `replay_id` it counted. Money is an exact decimal string. "
    "A `replay_id` with an origin other than `replay` or `all` counts no runs. Role analyst. 422 "
    "for a parameter outside its pattern or values, a date that does not exist or a dimension the "
    "report lacks.",
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}},
               **errors(401, 403, 422, 503)},
)
async def analytics_report(
    services: ServicesDep,
    key: Analyst,
    report: REPORT_NAMES,
    by: Annotated[str | None, Query(pattern=r"^[a-z_,-]{0,200}$")] = None,
    since: Since = None,
    until: Until = None,
    workflow: Text = None,
    agent: Annotated[str | None, Query(max_length=512, pattern=r"^[^\x00]*$", description="agent id")] = None,
    outcome: Outcome = None,
    has_denial: HasDenial = None,
    origin: OriginQuery = None,
    replay_id: ReplayIdQuery = None,
) -> dict[str, Any]:
    runs = OriginSelection.parse(origin, replay_id, strict=False)
    dims = [p.strip().replace("-", "_") for p in (by or "").split(",") if p.strip()]
    scope = RunScope(key.workspace, workflow, agent, outcome, _date(until, "until"), has_denial)
    return await run_in_threadpool(_report, services, report, dims, _date(since), scope, runs)


def _export(services: Services, table: str, workspace: str, since: str | None,
            until: str | None, runs: OriginSelection) -> Path:
    from projections.lake import selected_rows

    con = _open_analytics(services)
    fd, name = tempfile.mkstemp(prefix="tacho-export-", suffix=".parquet")
    os.close(fd)
    Path(name).unlink()
    try:
        where = f"workspace = '{workspace}'"  # workspace matched ^[a-z0-9-]{1,64}$ at key creation
        if since:
            where += f" AND date >= DATE '{since}'"  # since is a parsed date
        if until:
            where += f" AND date < DATE '{until}'"  # so is until
        con.execute(
            f"COPY ({selected_rows(table, runs)} AND {where} ORDER BY idx) TO '{name}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        ).fetchall()
    finally:
        con.close()
    return Path(name)


@router.get(
    "/v1/export/{table}.parquet",
    summary="Download a projection table of the key's workspace as Parquet",
    description="One Parquet file of the workspace's rows of a projection table (events, "
    "model_calls, tool_calls, policy_evaluations, approvals, changes), optionally of the days "
    "from `since` (inclusive) to `until` (exclusive), of production runs unless `origin` (or "
    "`replay_id`) says otherwise; every row names its run's `origin` and `replay_id`. Roles "
    "auditor, analyst. Audited. 422 as for the analytics reports.",
    responses={200: {"content": {"application/vnd.apache.parquet": {}}},
               **errors(401, 403, 422, 503)},
    response_class=FileResponse,
)
async def export_table(
    request: Request,
    services: ServicesDep,
    key: Exporter,
    table: TABLES,
    since: Annotated[str | None, Query(pattern=DATE, description="rows dated on or after (YYYY-MM-DD)",
                                       json_schema_extra={"format": "date"})] = None,
    until: Annotated[str | None, Query(pattern=DATE, description="rows dated before (YYYY-MM-DD)",
                                       json_schema_extra={"format": "date"})] = None,
    origin: OriginQuery = None,
    replay_id: ReplayIdQuery = None,
) -> FileResponse:
    runs = OriginSelection.parse(origin, replay_id, strict=False)
    path = await run_in_threadpool(_export, services, table, key.workspace,
                                   _date(since), _date(until, "until"), runs)
    await run_in_threadpool(audited, services, key, request, "export.parquet",
                            workspace=key.workspace, table=table)
    return FileResponse(
        path, media_type="application/vnd.apache.parquet",
        filename=f"{key.workspace}-{table}.parquet", background=BackgroundTask(path.unlink),
    )
