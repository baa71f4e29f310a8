"""Analytics over the projections' DuckDB file (read-only) and Parquet export download."""

from __future__ import annotations

import os
import tempfile
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from api.deps import Analyst, Exporter, Services, ServicesDep
from api.keys_store import ApiKey
from api.routes.audit import audited
from api.routes.errors import BadParameter, Unavailable
from api.schemas import errors

router = APIRouter(tags=["analytics"])

DATE = r"^\d{4}-\d{2}-\d{2}$"
Since = Annotated[
    str | None,
    Query(pattern=DATE, description="runs started on or after this date (YYYY-MM-DD)",
          json_schema_extra={"format": "date"}),
]


def _date(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError as e:
        raise BadParameter(f"since: {text!r} is not a calendar date") from e


REPORT_NAMES = Literal["cost-per-outcome", "violations", "budgets", "approvals", "outcomes"]
TABLES = Literal["events", "model_calls", "tool_calls", "policy_evaluations", "approvals", "changes"]


def _analytics_file(services: Services) -> Path:
    try:
        from projections.demo import analytics_path
    except ImportError as e:  # pragma: no cover - projections ship with the package
        raise Unavailable(f"projections are not installed: {e}") from e
    path = analytics_path(services.settings.data_dir)
    if not path.exists():
        raise Unavailable(
            f"no analytics file at {path}: run `tacho project` (or `tacho project --follow`) first"
        )
    return path


def _report(services: Services, key: ApiKey, name: str, by: list[str], since: str | None,
            workflow: str | None, agent: str | None) -> dict[str, Any]:
    from projections.projector import connect
    from projections.reports import REPORTS, run_report

    path = _analytics_file(services)
    dims = ["workspace", *[d for d in by if d != "workspace"]] if by else [
        "workspace", *REPORTS[name].default_by]
    con = connect(path, read_only=True, retries=20)
    try:
        report = run_report(con, name, dims, since)
    finally:
        con.close()
    out = report.to_json()
    rows = [r for r in out["rows"] if r.get("workspace") == key.workspace]
    if workflow is not None:
        rows = [r for r in rows if r.get("workflow") == workflow]
    if agent is not None:
        rows = [r for r in rows if r.get("agent") in (None, agent)]
    for r in rows:
        r.pop("workspace", None)
    return {"report": name, "workspace": key.workspace, "by": dims[1:], "since": since,
            "rows": [{k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
                      for k, v in r.items()} for r in rows]}


@router.get(
    "/v1/analytics/{report}",
    summary="An analytics report of the key's workspace",
    description="Cost per outcome, violation rates, budget breaches, approval latency or outcome "
    "SLO from the projections (`tacho project`), grouped by `by` (comma separated: workflow, "
    "agent, agent_version, route, day, week, policy, limit, risk... as the report allows) for runs "
    "started since `since`. Money is an exact decimal string. Role analyst.",
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}},
               **errors(401, 403, 422, 503)},
)
async def analytics_report(
    services: ServicesDep,
    key: Analyst,
    report: REPORT_NAMES,
    by: Annotated[str | None, Query(pattern=r"^[a-z_,-]{0,200}$")] = None,
    since: Since = None,
    workflow: Annotated[str | None, Query(max_length=512)] = None,
    agent: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    dims = [p.strip().replace("-", "_") for p in (by or "").split(",") if p.strip()]
    return await run_in_threadpool(_report, services, key, report, dims,
                                   _date(since), workflow, agent)


def _export(services: Services, table: str, workspace: str, since: str | None) -> Path:
    from projections.projector import connect

    path = _analytics_file(services)
    fd, name = tempfile.mkstemp(prefix="tacho-export-", suffix=".parquet")
    os.close(fd)
    Path(name).unlink()
    con = connect(path, read_only=True, retries=20)
    try:
        where = f"workspace = '{workspace}'"  # workspace matched ^[a-z0-9-]{1,64}$ at key creation
        if since:
            where += f" AND date >= DATE '{since}'"  # since is a parsed date
        con.execute(
            f"COPY (SELECT * FROM {table} WHERE {where} ORDER BY idx) TO '{name}' "
            "(FORMAT parquet, COMPRESSION zstd)"
        ).fetchall()
    finally:
        con.close()
    return Path(name)


@router.get(
    "/v1/export/{table}.parquet",
    summary="Download a projection table of the key's workspace as Parquet",
    description="One Parquet file of the workspace's rows of a projection table (events, "
    "model_calls, tool_calls, policy_evaluations, approvals, changes), optionally since a date. "
    "Roles auditor, analyst. Audited.",
    responses={200: {"content": {"application/vnd.apache.parquet": {}}},
               **errors(401, 403, 422, 503)},
    response_class=FileResponse,
)
async def export_table(
    request: Request,
    services: ServicesDep,
    key: Exporter,
    table: TABLES,
    since: Since = None,
) -> FileResponse:
    path = await run_in_threadpool(_export, services, table, key.workspace,
                                   _date(since))
    await run_in_threadpool(audited, services, key, request, "export.parquet",
                            workspace=key.workspace, table=table)
    return FileResponse(
        path, media_type="application/vnd.apache.parquet",
        filename=f"{key.workspace}-{table}.parquet", background=BackgroundTask(path.unlink),
    )
