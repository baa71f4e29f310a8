"""Audit reads: runs, a run's timeline, its events with ledger positions, evidence, quarantine.

Every successful read here is recorded in the ledger before the answer is sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import EvidenceReader, HistoryReader, QuarantineReader, Services, ServicesDep
from api.keys_store import ApiKey
from api.run_index import RunFilter, RunSummary
from api.schemas import (
    QuarantinedOut,
    QuarantinePage,
    RunEvents,
    RunOut,
    RunPage,
    Timeline,
    TimelineStep,
    errors,
)
from domain.canonical import dumps, loads
from domain.errors import NotFoundError
from domain.evidence import build_evidence

router = APIRouter(tags=["audit"])

RunId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,128}$", description="the run id")]
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}([Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2}))?$"


def audited(services: Services, key: ApiKey, request: Request, action: str, **target: Any) -> None:
    """Record this read in the ledger (raises, refusing the read, if it cannot be stored)."""
    services.audit.record(
        key, action, request.method, request.url.path, dict(request.query_params), target
    )
    services.metrics.audited_reads.labels(action).inc()


def _summary(services: Services, key: ApiKey, run_id: str) -> RunSummary:
    s = services.runs.get(key.workspace, run_id)
    if s is None:
        raise NotFoundError(f"no run {run_id!r}")
    return s


@router.get(
    "/v1/runs",
    response_model=RunPage,
    summary="List runs of the key's workspace",
    description="Newest first by default; filter by workflow, agent, outcome (or `running`), "
    "start time range and denials; page with `cursor`. Roles auditor, engineer. Audited.",
    responses=errors(401, 403, 422, 503),
)
def list_runs(
    request: Request,
    services: ServicesDep,
    key: HistoryReader,
    workflow: Annotated[str | None, Query(max_length=512)] = None,
    agent: Annotated[str | None, Query(max_length=512, description="agent id")] = None,
    outcome: Annotated[
        Literal["succeeded", "failed", "escalated", "cancelled", "running"] | None, Query()
    ] = None,
    since: Annotated[str | None, Query(pattern=TIME_PATTERN, description="started at or after (RFC 3339 or date)")] = None,
    until: Annotated[str | None, Query(pattern=TIME_PATTERN, description="started before")] = None,
    has_denial: Annotated[bool | None, Query(description="at least one policy denial")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,18}$", description="next_cursor of the previous page")] = None,
    order: Annotated[Literal["asc", "desc"], Query()] = "desc",
) -> RunPage:
    flt = RunFilter(key.workspace, workflow, agent, outcome, since, until, has_denial)
    runs, nxt = services.runs.page(flt, limit, int(cursor) if cursor else None, order == "desc")
    audited(services, key, request, "runs.list", workspace=key.workspace, returned=len(runs))
    return RunPage(
        runs=[RunOut.model_validate(r.to_json()) for r in runs],
        next_cursor=str(nxt) if nxt is not None else None,
    )


def _ms_between(a: str, b: str) -> float | None:
    try:
        ta = datetime.fromisoformat(a.upper().replace("Z", "+00:00"))
        tb = datetime.fromisoformat(b.upper().replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((tb - ta).total_seconds() * 1000, 3)


def step_summary(etype: str, d: dict[str, Any]) -> str:
    """One line saying what an event was."""
    match etype:
        case "run.started":
            return f"started {d['workflow']} ({d['mode']}, risk {d['risk_tier']})"
        case "model.called":
            return (f"{d['provider']}/{d['model']}: {d['input_tokens']}+{d['output_tokens']} tokens, "
                    f"${d['cost_usd']}")
        case "tool.called":
            return f"{d['tool']} {d['status']} ({d['side_effect']})"
        case "policy.evaluated":
            return f"{d['policy']} on {d['action']}: {d['decision']} ({d['reason']})"
        case "approval.requested":
            return f"approval {d['approval_id']} requested ({d['risk']}): {d['summary']}"
        case "approval.decided":
            return f"approval {d['approval_id']} {d['decision']} by {d['by']}"
        case "change.proposed":
            return f"change {d['change_id']} proposed on {d['target']}"
        case "change.applied":
            return f"change {d['change_id']} applied"
        case "change.reverted":
            return f"change {d['change_id']} reverted by {d['by']}"
        case "budget.exceeded":
            return f"budget {d['limit']} exceeded: {d['observed']} > {d['limit_value']}"
        case "run.completed":
            return f"completed: {d['outcome']}"
        case "feedback.recorded":
            return f"feedback {'accepted' if d['accepted'] else 'rejected'} by {d['by']}"
    return etype


@router.get(
    "/v1/runs/{run_id}/timeline",
    response_model=Timeline,
    summary="A run's timeline",
    description="The run's summary and one line per step, with time since start. "
    "Roles auditor, engineer. Audited.",
    responses=errors(401, 403, 404, 422, 503),
)
def run_timeline(request: Request, services: ServicesDep, key: HistoryReader, run_id: RunId) -> Timeline:
    summary = _summary(services, key, run_id)
    rows = services.ledger.store.run_entries(key.workspace, run_id)
    steps = []
    for r in rows:
        ev = loads(r.data)["event"]
        steps.append(TimelineStep(
            seq=ev["seq"], index=r.index, time=ev["time"],
            offset_ms=_ms_between(summary.started, ev["time"]), type=ev["type"],
            summary=step_summary(ev["type"], ev["data"]),
        ))
    audited(services, key, request, "run.timeline", workspace=key.workspace, run_id=run_id)
    return Timeline(run=RunOut.model_validate(summary.to_json()), steps=steps)


@router.get(
    "/v1/runs/{run_id}/events",
    response_model=RunEvents,
    summary="A run's stored entries with their ledger positions",
    description="Each event as stored, with its ledger index, leaf hash, the previous entry of "
    "the run it chains to, when and where it was received. Roles auditor, engineer. Audited.",
    responses=errors(401, 403, 404, 422, 503),
)
def run_events(request: Request, services: ServicesDep, key: HistoryReader, run_id: RunId) -> Response:
    rows = services.ledger.store.run_entries(key.workspace, run_id)
    if not rows:
        raise NotFoundError(f"no run {run_id!r}")
    entries = []
    for r in rows:
        d = loads(r.data)  # numbers kept exact: money is written with its published digits
        entries.append({
            "index": r.index, "seq": r.seq or 0, "leaf_hash": r.leaf_hash.hex(), "prev": d.get("prev"),
            "received": d["received"], "source": d.get("source", {}), "event": d["event"],
        })
    audited(services, key, request, "run.events", workspace=key.workspace, run_id=run_id)
    body = {"workspace": key.workspace, "run_id": run_id, "entries": entries}
    return Response(dumps(body), media_type="application/json")


@router.get(
    "/v1/runs/{run_id}/evidence",
    summary="Evidence bundle of a run (tachograph.evidence/2)",
    description="Every entry of the run with inclusion proofs to a signed checkpoint and a signed "
    "run head (how many entries the run has in that tree), so that a bundle missing an entry "
    "fails; check it offline with `tacho verify-evidence`. Answers 500 (and builds nothing) when "
    "the ledger's index columns disagree with its bytes. Role auditor. Audited.",
    responses={200: {"content": {"application/json": {"schema": {"type": "object"}}}},
               **errors(401, 403, 404, 422, 503)},
)
async def run_evidence(request: Request, services: ServicesDep, key: EvidenceReader,
                       run_id: RunId) -> dict[str, Any]:
    bundle = await run_in_threadpool(build_evidence, services.ledger, key.workspace, run_id)
    await run_in_threadpool(audited, services, key, request, "run.evidence",
                            workspace=key.workspace, run_id=run_id)
    return bundle


def _visible(row_ws: str | None, source: dict[str, Any], workspace: str) -> bool:
    if row_ws is not None:
        return row_ws == workspace
    return str(source.get("name", "")).startswith(f"{workspace}/")


@router.get(
    "/v1/quarantine",
    response_model=QuarantinePage,
    summary="Quarantined messages of the key's workspace",
    description="Messages that could not be accepted, with the reason and raw bytes, oldest "
    "first. Messages whose workspace is unreadable are shown to the workspace of the key that "
    "sent them over HTTP. Role auditor. Audited.",
    responses=errors(401, 403, 422, 503),
)
def quarantine(
    request: Request,
    services: ServicesDep,
    key: QuarantineReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> QuarantinePage:
    store = services.ledger.store
    items: list[QuarantinedOut] = []
    after = cursor
    while len(items) < limit:
        rows = store.quarantine(limit=500, after_id=after)
        if not rows:
            break
        for r in rows:
            after = r.id or after
            src = r.source.to_json()
            if _visible(r.workspace, src, key.workspace):
                items.append(QuarantinedOut(
                    id=r.id or 0, reason=r.reason, received=r.received, source=src,
                    workspace=r.workspace, run_id=r.run_id, event_id=r.event_id,
                    raw=r.raw.decode("utf-8", "replace"),
                ))
                if len(items) >= limit:
                    break
    more = len(items) >= limit
    audited(services, key, request, "quarantine.list", workspace=key.workspace, returned=len(items))
    return QuarantinePage(items=items, next_cursor=items[-1].id if more and items else None)
