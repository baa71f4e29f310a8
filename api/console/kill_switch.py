"""The console's kill-switch page: the halts in force, set and clear them (all four scopes).

It calls the same :class:`~api.halts.HaltService` as ``PUT`` / ``DELETE /v1/halts/...``, so a
halt set here is a ``halt.set`` platform record that every agent sees within about a second.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from api.auth import Capability
from api.console.routes import (
    ConsoleRoute,
    _back,
    _services,
    checked_form,
    may,
    need,
    page,
    person,
)
from api.halts import HaltChange, HaltNotFoundError, HaltRequestError
from domain.origins import PRODUCTION_RUNS
from ingest.halts import identity
from projections.run_index import RunFilter
from tachograph.halts import SCOPES

router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)
PATH = "/console/kill-switches"


@router.get("/kill-switches")
def kill_switches_page(request: Request, msg: str | None = None, ok: int = 1) -> HTMLResponse:
    session = person(request)
    services = _services(request)
    halts = services.halts.current(session.workspace)
    # the workflows of agents' own runs (the platform's replays, compensations and audit runs,
    # and OPA's decision logs, are no workflow a kill switch stops)
    seen, _ = services.runs.page(RunFilter.of(session.workspace, PRODUCTION_RUNS, decision_log=False),
                                 10**9, None, True)
    halted = {h.target for h in halts.halts if h.scope == "workflow"}
    workflows = sorted({s.workflow for s in seen if s.workflow} | halted)
    history = [
        {"index": index, "at": rec["time"], "action": "halt" if rec["type"] == "halt.set" else "clear",
         "scope": rec["data"]["scope"], "target": rec["data"]["target"],
         "reason": rec["data"].get("reason", ""), "by": identity(rec["actor"]),
         "via": rec["data"].get("via", "")}
        for index, rec in services.halts.history(session.workspace)
    ]
    workflow_halts = {h.target: h for h in halts.halts if h.scope == "workflow"}
    return page(request, session, "kill_switches.html", halts=halts.halts, workflows=workflows,
                workflow_halts=workflow_halts, history=history, scopes=SCOPES, msg=msg, ok=ok,
                can_flip=may(session, Capability.HALT))


@router.post("/kill-switches")
async def flip_kill_switch(request: Request) -> Response:
    session = person(request)
    form = await checked_form(request, session)
    need(session, Capability.HALT)
    action, scope = form.get("action", ""), form.get("scope", "workflow")
    target = None if scope == "workspace" else form.get("target", "")
    if action not in ("halt", "clear"):
        return _back(PATH, f"action must be halt or clear, not {action[:40]!r}", ok=False)
    services = _services(request)
    key = services.keys.get(session.key_id)
    act = services.halts.set if action == "halt" else services.halts.clear
    try:
        change: HaltChange = await run_in_threadpool(act, key, scope, target, form.get("reason"), "console")
    except (HaltRequestError, HaltNotFoundError) as e:
        return _back(PATH, str(e), ok=False)
    h = change.halt
    if not change.changed:
        return _back(PATH, f"{h.scope} {h.target} was halted already by {h.by} at {h.at}")
    verb = "halted" if action == "halt" else "cleared"
    return _back(PATH, f"{h.scope} {h.target} {verb} by {session.identity} "
                       f"(ledger index {change.record_index})")
