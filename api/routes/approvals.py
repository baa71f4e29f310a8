"""Approvals: the workspace's queue, one approval (long poll for agents), a person's decision.

An approval id is any contract ``Name`` (1-512 characters, ``/`` and ``..`` included): clients
send it as one path segment with every reserved character percent-encoded (``/`` as ``%2F``, a
lone ``.`` or ``..`` as ``%2E``), and the route takes the rest of the path as the id.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from api import approvals
from api.deps import ApprovalQueueReader, ApprovalReader, Approver, ServicesDep
from api.routes.audit import audited
from api.schemas import ApprovalOut, ApprovalPage, DecisionIn, errors
from domain.approvals import ApprovalRow
from domain.ledger import iso

router = APIRouter(tags=["approvals"])

ApprovalId = Annotated[str, Path(min_length=1, max_length=512,
                                 description="the approval id, percent-encoded as one path segment")]


def approval_out(row: ApprovalRow, now: float) -> ApprovalOut:
    """The API's view of an approval row at ``now``."""
    return ApprovalOut(
        approval_id=row.approval_id, run_id=row.run_id, status=row.status(now),
        decided_by=row.decided_by, decided_at=row.decided_at, reason=row.reason, summary=row.summary,
        risk=row.risk, change_id=row.change_id, requested_at=row.requested_at,
        expires_at=None if row.expires_at is None else iso(row.expires_at),
        ledger_index=row.requested_index, decision_index=row.decision_index,
    )


@router.get(
    "/v1/approvals",
    response_model=ApprovalPage,
    summary="The approval queue of the key's workspace",
    description="`status=pending` (default): undecided approvals of open runs that have not timed "
    "out, oldest request first; `status=decided`: approved and rejected ones. Page with `cursor`. "
    "Roles approver, auditor, admin. Audited.",
    responses=errors(401, 403, 422, 503),
)
def list_approvals(
    request: Request,
    services: ServicesDep,
    key: ApprovalQueueReader,
    status: Annotated[Literal["pending", "decided"], Query()] = "pending",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(pattern=r"^\d{1,18}$", description="next_cursor of the previous page")] = None,
) -> ApprovalPage:
    now = services.clock()
    rows = services.ledger.store.approval_page(key.workspace, decided=status == "decided", now=now,
                                               after=int(cursor) if cursor else -1, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    audited(services, key, request, "approvals.list", workspace=key.workspace, returned=len(rows))
    return ApprovalPage(approvals=[approval_out(r, now) for r in rows],
                        next_cursor=str(rows[-1].requested_index) if more else None)


@router.get(
    "/v1/approvals/{approval_id:path}",
    response_model=ApprovalOut,
    summary="One approval; with `wait`, wait for a person's decision (long poll)",
    description=f"With `wait=SECONDS` (at most {approvals.MAX_WAIT_S}) the answer comes as soon as "
    "the approval is no longer pending (approved, rejected or expired), or after that long with "
    "its status then. A decision reaches a waiting client within a second, whichever process "
    "sharing the ledger recorded it. Roles publisher (agents wait on this), approver, auditor, "
    "admin; another workspace's approval is 404. Not audited (agents poll it).",
    responses=errors(401, 403, 404, 422),
)
async def get_approval(
    services: ServicesDep,
    key: ApprovalReader,
    approval_id: ApprovalId,
    wait: Annotated[float, Query(ge=0, le=approvals.MAX_WAIT_S, description="seconds to wait")] = 0,
) -> ApprovalOut:
    if wait > 0:
        row = await approvals.wait(services, key.workspace, approval_id, wait)
    else:
        row = await run_in_threadpool(approvals.get, services, key.workspace, approval_id)
    return approval_out(row, services.clock())


@router.post(
    "/v1/approvals/{approval_id:path}/decision",
    response_model=ApprovalOut,
    summary="Approve or reject an approval (a person's decision)",
    description="Recorded in the ledger as an `approval.decision` platform record (who, when, which "
    "approval and run, the decision and reason); the agent then records `approval.decided` with "
    "the same decision and `by` = `decided_by`. A second decision, or one after the approval "
    "expired, is 409. Role approver (the console's Approve and Reject use this same path).",
    responses={409: {"description": "already decided, or expired"}, **errors(400, 401, 403, 404, 422)},
)
async def post_decision(
    services: ServicesDep, key: Approver, approval_id: ApprovalId, body: DecisionIn
) -> ApprovalOut:
    row = await run_in_threadpool(approvals.decide, services, key, approval_id, body.decision, body.reason)
    return approval_out(row, services.clock())
