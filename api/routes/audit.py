"""Audit reads: runs, a run's timeline, its events with ledger positions, evidence, quarantine,
the audit log.

Every successful read here is recorded in the ledger before the answer is sent.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import (
    AuditLogReader,
    EvidenceReader,
    HistoryReader,
    QuarantineReader,
    Services,
    ServicesDep,
)
from api.keys_store import ApiKey
from api.schemas import (
    AuditLogPage,
    AuditRecordOut,
    OriginQuery,
    QuarantinedOut,
    QuarantinePage,
    ReplayIdQuery,
    RunEvents,
    RunOut,
    RunPage,
    Timeline,
    TimelineStep,
    errors,
)
from domain.errors import NotFoundError
from domain.evidence import build_evidence
from domain.ledger import QUARANTINE_PREVIEW_BYTES
from domain.ports import QuarantineRow
from domain.records import RECORD_TYPES
from projections.run_index import RunFilter, RunSummary
from tachograph.contract.canonical import dumps, loads

router = APIRouter(tags=["audit"])

RunId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._:-]{1,128}$", description="the run id")]
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}([Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2}))?$"


def audited(services: Services, key: ApiKey, request: Request, action: str, **target: Any) -> None:
    """Record this read in the ledger (raises, refusing the read, if it cannot be stored)."""
    services.audit.record(
        key, action, request.method, request.url.path, dict(request.query_params), target
    )
    services.metrics.audited_reads.labels(action).inc()


def _summary(services: Services, key: ApiKey, run_id: str, position: int | None = None) -> RunSummary:
    s = services.runs.get(key.workspace, run_id, position)
    if s is None:
        raise NotFoundError(f"no run {run_id!r}")
    return s


@router.get(
    "/v1/runs",
    response_model=RunPage,
    summary="List runs of the key's workspace",
    description="Newest first by default; filter by workflow, agent, outcome (or `running`: "
    "agents' runs not completed yet), start time range, denials, `origin` (every origin unless "
    "given; each run names its own), `replay_id` (the runs of one replay: with an origin other "
    "than `replay` or `all`, none) and `decision_log` (OPA's decision-log runs, or agents' runs "
    "only); page with `cursor`. Roles auditor, engineer. Audited.",
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
    origin: OriginQuery = None,
    replay_id: ReplayIdQuery = None,
    decision_log: Annotated[bool | None, Query(
        description="true: only OPA's decision-log runs; false: only agents' runs")] = None,
) -> RunPage:
    flt = RunFilter(key.workspace, workflow, agent, outcome, since, until, has_denial, origin, replay_id,
                    decision_log)
    runs, nxt = services.runs.page(flt, limit, int(cursor) if cursor else None, order == "desc")
    audited(services, key, request, "runs.list", workspace=key.workspace, returned=len(runs))
    return RunPage(
        runs=[RunOut.model_validate(r.to_json()) for r in runs],
        next_cursor=str(nxt) if nxt is not None else None,
    )


@router.get(
    "/v1/runs/{run_id}",
    response_model=RunOut,
    summary="One run's summary",
    description="Exactly what the runs list (`GET /v1/runs`) shows for the run: workflow, agent, "
    "start and completion, outcome, counts, tokens, cost, origin, whether it is OPA's decision log, "
    "and its first and last ledger positions. Another workspace's run is 404 like a missing one. "
    "Roles auditor, engineer. Audited.",
    responses=errors(401, 403, 404, 422, 503),
)
def get_run(request: Request, services: ServicesDep, key: HistoryReader, run_id: RunId) -> RunOut:
    summary = _summary(services, key, run_id)
    out = RunOut.model_validate(summary.to_json())
    audited(services, key, request, "run.summary", workspace=key.workspace, run_id=run_id)
    return out


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
    rows = services.ledger.store.run_entries(key.workspace, run_id)
    # the index need only have reached the run's newest entry (not every append since)
    summary = _summary(services, key, run_id, rows[-1].index + 1 if rows else None)
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


def audit_page(services: Services, workspace: str, after: int, limit: int,
               record_type: str | None) -> tuple[list[AuditRecordOut], int | None]:
    """One page of a workspace's platform records and the ``after`` of the next page (or None)."""
    rows = services.ledger.store.records(workspace, after, limit + 1, record_type)
    out = []
    for r in rows[:limit]:
        d = loads(r.data)
        out.append(AuditRecordOut(index=r.index, leaf_hash=r.leaf_hash.hex(), received=d["received"],
                                  record=d["record"]))
    return out, (out[-1].index if len(rows) > limit else None)


@router.get(
    "/v1/audit-log",
    response_model=AuditLogPage,
    summary="The workspace's audit log: platform records, oldest first",
    description="Every audited read (`audit.read`), console action (`console.action`), halt "
    "change (`halt.set`, `halt.cleared`) and other platform record (e.g. a person's "
    "`approval.decision`) of the key's workspace, as written by the platform (entry kind `record`; "
    "no publisher key can write one). Page with `after` = the previous page's `next_after`; filter with `type`. Each record's "
    "entry is covered by the log's checkpoints like any other (`/v1/log/proof/inclusion`). Reads "
    "recorded by ledgers older than records are `tool.called` events of runs `audit-YYYY-MM-DD` "
    "(`/v1/runs?workflow=tachograph.audit`). Role auditor. Audited: reading the audit log is "
    "itself recorded (after the page is read, so a page never shows its own read).",
    responses=errors(401, 403, 422, 503),
)
def audit_log(
    request: Request,
    services: ServicesDep,
    key: AuditLogReader,
    after: Annotated[int, Query(ge=-1, le=2**62, description="ledger index of the last record seen")] = -1,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    type: Annotated[str | None, Query(pattern="^(" + "|".join(t.replace(".", r"\.") for t in RECORD_TYPES)
                                      + ")$", description="only records of this type")] = None,
) -> AuditLogPage:
    records, nxt = audit_page(services, key.workspace, after, limit, type)
    audited(services, key, request, "audit_log.list", workspace=key.workspace, returned=len(records))
    return AuditLogPage(records=records, next_after=nxt)


@router.get(
    "/v1/quarantine",
    response_model=QuarantinePage,
    summary="Quarantined messages of the key's workspace",
    description="Messages that could not be accepted, oldest first, with the reason, where they "
    "came from, their size and SHA-256, and a preview of their first 1,024 bytes (every kept byte "
    "from `GET /v1/quarantine/{id}/raw`). Messages sent over HTTP with a key count as that key's "
    "workspace. Page with `cursor` (the previous page's `next_cursor`). Role auditor. Audited.",
    responses=errors(401, 403, 422, 503),
)
def quarantine(
    request: Request,
    services: ServicesDep,
    key: QuarantineReader,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[int, Query(ge=0, le=2**62)] = 0,
) -> QuarantinePage:
    rows = services.ledger.store.quarantine(
        limit + 1, cursor, workspace=key.workspace, preview=QUARANTINE_PREVIEW_BYTES
    )
    more = len(rows) > limit
    items = [_quarantined(r) for r in rows[:limit]]
    audited(services, key, request, "quarantine.list", workspace=key.workspace, returned=len(items))
    return QuarantinePage(items=items, next_cursor=items[-1].id if more else None)


def _quarantined(r: QuarantineRow) -> QuarantinedOut:
    return QuarantinedOut(
        id=r.id or 0, reason=r.reason, received=r.received, source=r.source.to_json(),
        workspace=r.workspace, run_id=r.run_id, event_id=r.event_id,
        raw=r.raw.decode("utf-8", "replace"), raw_size=r.raw_size or 0,
        raw_sha256=(r.raw_sha256 or b"").hex(), raw_kept=r.kept or 0,
    )


@router.get(
    "/v1/quarantine/{qid}/raw",
    summary="The raw bytes of one quarantined message",
    description="Every byte the quarantine keeps of the message, as `application/octet-stream`; "
    "headers `X-Raw-Size`, `X-Raw-SHA256` (of the message as received) and `X-Raw-Kept` (fewer "
    "bytes than its size when it was kept truncated). Role auditor. Audited.",
    responses={200: {"content": {"application/octet-stream": {}}}, **errors(401, 403, 404, 422, 503)},
    response_class=Response,
)
def quarantine_raw(
    request: Request,
    services: ServicesDep,
    key: QuarantineReader,
    qid: Annotated[int, Path(ge=1, le=2**62, description="the quarantined message's id")],
) -> Response:
    row = services.ledger.store.quarantined(qid)
    if row is None or row.workspace != key.workspace:
        raise NotFoundError(f"no quarantined message {qid}")
    audited(services, key, request, "quarantine.raw", workspace=key.workspace, id=qid)
    return Response(row.raw, media_type="application/octet-stream", headers={
        "X-Raw-Size": str(row.raw_size), "X-Raw-SHA256": (row.raw_sha256 or b"").hex(),
        "X-Raw-Kept": str(row.kept), "Content-Disposition": f'attachment; filename="quarantine-{qid}.bin"',
    })
