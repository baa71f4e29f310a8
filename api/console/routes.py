"""The console's pages and actions (server-rendered Jinja2, htmx for in-page actions)."""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from pydantic import ValidationError

from api.audit_trail import LEGACY_AUDIT_WORKFLOW
from api.auth import GRANTS, Capability, ForbiddenError, check
from api.console.actions import ConsoleActionError, decide, record_action, revert
from api.console.insights import AnalyticsMissing, build_charts
from api.console.session import COOKIE, LOGIN_COOKIE, CsrfError, Session, SignInRequired, same_token
from api.console.state import ConsoleState
from api.console.timeline import revision_parts, run_view
from api.deps import Services
from api.keys_store import AuthError
from api.model_config import describe_models
from api.routes.errors import BadParameter
from api.schemas import ReplayStart
from domain.errors import NotFoundError, TachographError
from domain.evidence import build_evidence, verify_evidence
from domain.origins import ALL, ORIGINS, OriginSelection
from domain.records import RECORD_TYPES
from projections.run_index import RunFilter, RunSummary
from replay.errors import ReplayNotFoundError
from tachograph.contract.canonical import dumps

PAGE_SIZE = 25
AUDIT_WORKFLOW = LEGACY_AUDIT_WORKFLOW  # per-day audit runs of ledgers older than platform records

NAV: list[tuple[str, str, Capability | None]] = [
    ("runs", "Runs", Capability.READ_HISTORY),
    ("approvals", "Approvals", Capability.APPROVE),
    ("changes", "Changes", Capability.READ_HISTORY),
    ("ledger", "Ledger", Capability.READ_LOG),
    ("audit", "Audit log", Capability.READ_AUDIT_LOG),
    ("analytics", "Cost & quality", Capability.ANALYTICS),
    ("replays", "Replays", Capability.REPLAY),
    ("policies", "Policies", Capability.READ_POLICY),
    ("kill-switches", "Kill switches", None),
]

CONSOLE_STATUS: list[tuple[type[Exception], int]] = [
    (AuthError, 401), (CsrfError, 403), (ForbiddenError, 403), (NotFoundError, 404),
    (ReplayNotFoundError, 404), (ConsoleActionError, 409),
]


def _status(exc: TachographError) -> int:
    for cls, code in CONSOLE_STATUS:
        if isinstance(exc, cls):
            return code
    from api.app import status_of  # the app module imports this one

    return status_of(exc)


class ConsoleRoute(APIRoute):
    """A route whose errors are pages (or htmx fragments), and whose missing session signs in."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired as e:
                target = "/console/login?" + urlencode({"next": request.url.path, "why": str(e)})
                if request.headers.get("HX-Request"):
                    return Response(status_code=200, headers={"HX-Redirect": target})
                return RedirectResponse(target, status_code=303)
            except TachographError as e:
                status = _status(e)
                state: ConsoleState = request.app.state.console
                fragment = bool(request.headers.get("HX-Request"))
                template = "error_fragment.html" if fragment else "error.html"
                context: dict[str, Any] = {"status": status, "message": str(e), "error": type(e).__name__}
                if not isinstance(e, AuthError):
                    try:
                        session = person(request)
                    except TachographError:
                        pass  # an error page without the navigation
                    else:
                        context.update(session=session, nav=navigation(session))
                return state.render(request, template, context, status=status)

        return wrapped


router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)


def _state(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


def person(request: Request) -> Session:
    """The signed-in person of the request (raises SignInRequired)."""
    return _state(request).sessions.get(request.cookies.get(COOKIE))


def may(session: Session, capability: Capability | None) -> bool:
    """Whether the person's role holds a capability (None: every console role)."""
    return capability is None or capability in GRANTS.get(session.role, frozenset())


def navigation(session: Session) -> list[tuple[str, str]]:
    """The pages the person's role may open, as (slug, title)."""
    return [(slug, title) for slug, title, cap in NAV if may(session, cap)]


def need(session: Session, capability: Capability) -> None:
    """Raise ForbiddenError unless the person's role holds ``capability``."""
    check(session.role, capability)


def same_origin(request: Request) -> None:
    """Refuse a POST whose Origin (or, without one, Referer) names another site (CsrfError)."""
    host = request.headers.get("host")
    origin = request.headers.get("origin")
    if origin and origin != "null":
        if urlsplit(origin).netloc != host:
            raise CsrfError(f"refused: the form came from another origin ({origin})")
        return
    referer = request.headers.get("referer")
    if referer and urlsplit(referer).netloc != host:
        raise CsrfError(f"refused: the form came from another site ({urlsplit(referer).netloc})")


async def checked_form(request: Request, session: Session) -> dict[str, str]:
    """The posted form, after checking its origin and CSRF token (raises CsrfError)."""
    same_origin(request)
    form = await request.form()
    values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    token = values.get("csrf") or request.headers.get("x-csrf-token")
    if not same_token(token, session.csrf):
        raise CsrfError("refused: the form has no valid CSRF token (reload the page and try again)")
    return values


def page(request: Request, session: Session, template: str, **context: Any) -> HTMLResponse:
    """Render a console page for the signed-in person."""
    return _state(request).render(request, template,
                                  {"session": session, "nav": navigation(session), **context})


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _read(request: Request, session: Session, action: str, **target: Any) -> None:
    """Record a read of an audit history or evidence in the ledger (refused if it cannot be)."""
    services = _services(request)
    key = services.keys.get(session.key_id)
    services.audit.record(key, f"console.{action}", request.method, request.url.path,
                          dict(request.query_params), {**target, "by": session.identity})


def _back(path: str, message: str, ok: bool = True) -> RedirectResponse:
    return RedirectResponse(f"{path}?{urlencode({'msg': message, 'ok': int(ok)})}", status_code=303)


# -- sign in ------------------------------------------------------------------------------------
@router.get("")
@router.get("/")
def home(request: Request) -> Response:
    session = person(request)
    first = next((slug for slug, _, cap in NAV if may(session, cap)), "kill-switches")
    return RedirectResponse(f"/console/{first}", status_code=303)


def _safe_next(target: str | None) -> str:
    if target and target.startswith("/console/") and "//" not in target and "\\" not in target:
        return target
    return "/console/"


def _login_form(request: Request, status: int = 200, **context: Any) -> HTMLResponse:
    """The sign-in page with a fresh nonce cookie and the form token bound to it."""
    state = _state(request)
    nonce, token = state.new_login_nonce()
    resp = state.render(request, "login.html", {"csrf": token, **context}, status=status)
    resp.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="strict", path="/console",
                    secure=request.url.scheme == "https", max_age=3600)
    return resp


@router.get("/login")
def login_page(request: Request, next: str | None = None, why: str | None = None) -> HTMLResponse:
    return _login_form(request, next=_safe_next(next), why=why)


@router.post("/login")
async def login(request: Request, api_key: Annotated[str, Form(max_length=200)] = "",
                csrf: Annotated[str, Form(max_length=200)] = "",
                next: Annotated[str, Form(max_length=500)] = "/console/") -> Response:
    state = _state(request)
    same_origin(request)
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not nonce or not csrf or not same_token(csrf, state.login_token(nonce)):
        raise CsrfError("refused: the sign-in form has no valid CSRF token (reload the page)")
    try:
        token, session = state.sessions.sign_in(api_key)
    except AuthError as e:
        return _login_form(request, status=401, next=_safe_next(next), error=str(e))
    await run_in_threadpool(record_action, _services(request), session, "sign_in", "/console/login",
                            {"role": session.role})
    done = RedirectResponse(_safe_next(next), status_code=303)
    done.set_cookie(COOKIE, token, httponly=True, samesite="strict", path="/console",
                    secure=request.url.scheme == "https", max_age=int(state.sessions.ttl_s))
    done.delete_cookie(LOGIN_COOKIE, path="/console")
    return done


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = person(request)
    await checked_form(request, session)
    await run_in_threadpool(record_action, _services(request), session, "sign_out", "/console/logout", {})
    _state(request).sessions.end(request.cookies.get(COOKIE))
    resp = RedirectResponse("/console/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/console")
    return resp


# -- runs ---------------------------------------------------------------------------------------
def _money(text: str | None) -> Decimal | None:
    if not text:
        return None
    try:
        value = Decimal(text)
    except InvalidOperation as e:
        raise ConsoleActionError(f"minimum cost {text!r} is not a number") from e
    if not value.is_finite() or value < 0:
        raise ConsoleActionError(f"minimum cost {text!r} must be a number ≥ 0")
    return value


@router.get("/runs")
def runs_page(
    request: Request,
    workflow: Annotated[str | None, Query(max_length=512)] = None,
    agent_version: Annotated[str | None, Query(max_length=512)] = None,
    outcome: Annotated[str | None, Query(max_length=20)] = None,
    denials: Annotated[str | None, Query(max_length=5)] = None,
    breaches: Annotated[str | None, Query(max_length=5)] = None,
    min_cost: Annotated[str | None, Query(max_length=40)] = None,
    origin: Annotated[str | None, Query(max_length=20)] = None,
    replay_id: Annotated[str | None, Query(max_length=128)] = None,
    page_no: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1,
) -> HTMLResponse:
    session = person(request)
    need(session, Capability.READ_HISTORY)
    services = _services(request)
    state = _state(request)
    least = _money(min_cost)
    outcome = outcome or None
    chosen = OriginSelection.parse(origin or None, replay_id or None)  # production by default
    flt = RunFilter.of(session.workspace, chosen, workflow=workflow or None, outcome=outcome)
    everything, _ = services.runs.page(RunFilter.of(session.workspace, chosen), 10**9, None, True)
    matching, _ = services.runs.page(flt, 10**9, None, True)
    workflows = sorted({s.workflow for s in everything if s.workflow})
    versions = sorted({s.agent_version for s in everything if s.agent_version})
    breaches_of = state.board.breaches(session.workspace)  # one read, not one per run

    def keep(s: RunSummary) -> bool:
        if agent_version and s.agent_version != agent_version:
            return False
        if denials == "yes" and s.denials == 0:
            return False
        if breaches == "yes" and breaches_of.get(s.run_id, 0) == 0:
            return False
        return least is None or s.cost_usd >= least

    rows = [s for s in matching if keep(s)]
    pages = max(1, math.ceil(len(rows) / PAGE_SIZE))
    page_no = min(page_no, pages)
    shown = rows[(page_no - 1) * PAGE_SIZE: page_no * PAGE_SIZE]
    # the totals are agents' runs: OPA's decision logs are listed, but are no run (and never running)
    runs = [s for s in rows if not s.decision_log]
    outcomes: dict[str, int] = {}
    for s in runs:
        outcomes[s.outcome or "running"] = outcomes.get(s.outcome or "running", 0) + 1
    totals = {
        "runs": len(runs), "cost": sum((s.cost_usd for s in runs), Decimal(0)),
        "unpriced_runs": sum(1 for s in runs if s.unpriced_calls),
        "denials": sum(s.denials for s in runs),
        "breaches": sum(breaches_of.get(s.run_id, 0) for s in runs),
        "model_calls": sum(s.model_calls for s in runs), "tokens": sum(s.tokens for s in runs),
        "outcomes": dict(sorted(outcomes.items())), "decision_logs": len(rows) - len(runs),
    }
    breach_of = {s.run_id: breaches_of.get(s.run_id, 0) for s in shown}
    _read(request, session, "runs.list", returned=len(shown))
    params = {k: v for k, v in {"workflow": workflow, "agent_version": agent_version, "outcome": outcome,
                                "denials": denials, "breaches": breaches, "min_cost": min_cost,
                                "origin": origin, "replay_id": replay_id}.items() if v}
    return page(request, session, "runs.html", runs=shown, totals=totals, workflows=workflows,
                versions=versions, f=params, page_no=page_no, pages=pages, breach_of=breach_of,
                query=lambda n: urlencode({**params, "page": n}), origins=[*ORIGINS, ALL],
                chosen=chosen)


@router.get("/runs/{run_id}")
def run_page(request: Request, run_id: str) -> HTMLResponse:
    session = person(request)
    need(session, Capability.READ_HISTORY)
    services = _services(request)
    summary = services.runs.get(session.workspace, run_id)
    rows = services.ledger.store.run_entries(session.workspace, run_id)
    if summary is None or not rows:
        raise NotFoundError(f"no run {run_id!r}")
    view = run_view(rows)
    # a decision's revision links to its page when the person may read policies and it is one
    # of the workspace's own (OPA may report bundles served elsewhere)
    known = services.policies.fold(session.workspace).revisions if may(session, Capability.READ_POLICY) else {}
    _read(request, session, "run.timeline", run_id=run_id)
    return page(request, session, "run.html", run=summary, view=view,
                can_verify=may(session, Capability.EVIDENCE), quoted=quote(run_id, safe=""),
                revision_parts=lambda text: revision_parts(str(text), known))


def _bundle(services: Services, session: Session, run_id: str) -> dict[str, Any]:
    return build_evidence(services.ledger, session.workspace, run_id)


@router.post("/runs/{run_id}/verify")
async def verify_run(request: Request, run_id: str) -> HTMLResponse:
    session = person(request)
    await checked_form(request, session)
    need(session, Capability.EVIDENCE)
    services = _services(request)
    bundle = await run_in_threadpool(_bundle, services, session, run_id)
    store = services.ledger.store
    trusted = [k for k in (store.get_meta("initial_vkey"), services.ledger.signer.vkey) if k]
    result = await run_in_threadpool(verify_evidence, bundle, list(dict.fromkeys(trusted)))
    await run_in_threadpool(_read, request, session, "run.verify", run_id=run_id, ok=result.ok)
    return _state(request).render(request, "verify_result.html", {"result": result})


@router.get("/runs/{run_id}/evidence.json")
async def download_bundle(request: Request, run_id: str) -> Response:
    session = person(request)
    need(session, Capability.EVIDENCE)
    services = _services(request)
    bundle = await run_in_threadpool(_bundle, services, session, run_id)
    await run_in_threadpool(_read, request, session, "run.evidence", run_id=run_id)
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in run_id)
    return Response(dumps(bundle), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{safe}.evidence.json"'})


# -- approvals and changes ---------------------------------------------------------------------
@router.get("/approvals")
def approvals_page(request: Request, msg: str | None = None, ok: int = 1) -> HTMLResponse:
    session = person(request)
    need(session, Capability.APPROVE)
    board = _state(request).board
    pending = board.pending(session.workspace, _services(request).clock())
    diffs = {}
    for a in pending:
        change = board.change(a.workspace, a.run_id, a.change_id) if a.change_id else None
        diffs[(a.run_id, a.approval_id)] = change
    _read(request, session, "approvals.list", pending=len(pending))
    return page(request, session, "approvals.html", pending=pending, diffs=diffs,
                decided=board.decided(session.workspace), msg=msg, ok=ok,
                workflow_of=lambda a: board.facts(a.workspace, a.run_id).workflow)


MAX_ID = 512  # the event contract's longest approval or change id


def _ids(form: dict[str, str], *names: str) -> list[str]:
    """Ids posted in the form body (never in the path: ``/`` and ``..`` would move the target)."""
    out = []
    for name in names:
        value = form.get(name, "")
        if not 0 < len(value) <= MAX_ID:
            raise ConsoleActionError(f"the form has no valid {name} (1-{MAX_ID} characters)")
        out.append(value)
    return out


@router.post("/approvals/decide")
async def decide_approval(request: Request) -> Response:
    session = person(request)
    form = await checked_form(request, session)
    need(session, Capability.APPROVE)
    run_id, approval_id = _ids(form, "run_id", "approval_id")
    if _state(request).board.approval(session.workspace, run_id, approval_id) is None:
        raise NotFoundError(f"no approval {approval_id!r} in run {run_id!r}")
    decision = form.get("decision", "")
    reason = form.get("reason", "").strip() or None
    if decision == "rejected" and not reason:
        return _back("/console/approvals", f"say why you reject {approval_id}", ok=False)
    row = await run_in_threadpool(decide, _services(request), session, run_id, approval_id,
                                  decision, reason)
    return _back("/console/approvals",
                 f"{approval_id} of {run_id} {decision} by {session.identity} "
                 f"(ledger index {row.decision_index})")


@router.get("/changes")
def changes_page(request: Request, msg: str | None = None, ok: int = 1) -> HTMLResponse:
    session = person(request)
    need(session, Capability.READ_HISTORY)
    board = _state(request).board
    changes = board.applied(session.workspace)
    _read(request, session, "changes.list", returned=len(changes))
    return page(request, session, "changes.html", changes=changes, msg=msg, ok=ok,
                can_revert=may(session, Capability.REVERT),
                facts=lambda c: board.facts(c.workspace, c.run_id),
                hooks=_state(request).revert_hooks)


@router.post("/changes/revert")
async def revert_change(request: Request) -> Response:
    session = person(request)
    form = await checked_form(request, session)
    need(session, Capability.REVERT)
    run_id, change_id = _ids(form, "run_id", "change_id")
    state = _state(request)
    change = state.board.change(session.workspace, run_id, change_id)
    if change is None or not change.applied:
        raise NotFoundError(f"no applied change {change_id!r} in run {run_id!r}")
    workflow = state.board.facts(session.workspace, run_id).workflow
    reason = form.get("reason", "").strip() or None
    done = await run_in_threadpool(revert, _services(request), session, change, workflow,
                                   state.revert_hooks, reason)
    where = f"recorded as the compensating run {done.compensating_run}, ledger index {done.index}"
    return _back("/console/changes", f"{change_id} of {run_id} reverted by {session.identity} ({where})")


# -- ledger -------------------------------------------------------------------------------------
@router.get("/ledger")
def ledger_page(request: Request) -> HTMLResponse:
    session = person(request)
    need(session, Capability.READ_LOG)
    services = _services(request)
    store = services.ledger.store
    cps = store.checkpoints()
    latest = cps[-1] if cps else None
    root = services.ledger.root(latest.size).hex() if latest else None
    return page(request, session, "ledger.html", size=store.size(), latest=latest, root=root,
                history=list(reversed(cps))[:50], checkpoints=len(cps), origin=services.ledger.config.origin,
                verification=_verification_now(services))


def _verification_now(services: Services) -> Any:
    """The latest verification status as the API answers it, or None before the first round."""
    from api.routes.log import verification_out

    status = services.verification.status if services.verification is not None else None
    return verification_out(services, status) if status is not None else None


@router.post("/ledger/verify")
async def verify_ledger(request: Request) -> HTMLResponse:
    session = person(request)
    await checked_form(request, session)
    need(session, Capability.READ_LOG)
    from api.routes.log import verification_out

    services = _services(request)
    assert services.verification is not None
    status = await run_in_threadpool(services.verification.refresh, 10.0)
    result = verification_out(services, status)
    await run_in_threadpool(record_action, services, session, "ledger.verify", "/console/ledger/verify",
                            {"ok": result.ok, "entries": result.entries})
    return _state(request).render(request, "ledger_verification.html", {"v": result})


# -- audit log ----------------------------------------------------------------------------------
@router.get("/audit")
def audit_log_page(
    request: Request,
    after: Annotated[int, Query(ge=-1, le=2**62)] = -1,
    type: Annotated[str | None, Query(max_length=40)] = None,
) -> HTMLResponse:
    session = person(request)
    need(session, Capability.READ_AUDIT_LOG)
    from api.routes.audit import audit_page

    rtype = type if type in RECORD_TYPES else None
    records, nxt = audit_page(_services(request), session.workspace, after, PAGE_SIZE * 2, rtype)
    _read(request, session, "audit_log.list", returned=len(records))
    return page(request, session, "audit.html", records=records, next_after=nxt, after=after,
                rtype=rtype or "", types=list(RECORD_TYPES), legacy=AUDIT_WORKFLOW)


# -- cost and quality ---------------------------------------------------------------------------
@router.get("/analytics")
async def analytics_page(
    request: Request,
    since: Annotated[str | None, Query(pattern=r"^(\d{4}-\d{2}-\d{2})?$")] = None,
    period: Annotated[str, Query(pattern=r"^(day|week)$")] = "week",
    origin: Annotated[str | None, Query(max_length=20)] = None,
    replay_id: Annotated[str | None, Query(max_length=128)] = None,
) -> HTMLResponse:
    session = person(request)
    need(session, Capability.ANALYTICS)
    services = _services(request)
    chosen = OriginSelection.parse(origin or None, replay_id or None)  # production by default
    try:
        charts = await run_in_threadpool(build_charts, services.settings.data_dir, session.workspace,
                                         since or None, period, chosen, services.settings.analytics_dir)
        missing = None
    except AnalyticsMissing as e:
        charts, missing = [], str(e)
    return page(request, session, "analytics.html", charts=charts, missing=missing, since=since or "",
                period=period, origins=[*ORIGINS, ALL], chosen=chosen)


# -- replays ------------------------------------------------------------------------------------
@router.get("/replays")
def replays_page(request: Request, msg: str | None = None, ok: int = 1) -> HTMLResponse:
    session = person(request)
    need(session, Capability.REPLAY)
    services = _services(request)
    reports = _state(request).replays(services)
    mine = [r for r in reports.list() if _has_workspace(reports.load(r["replay_id"]), session.workspace)]
    return page(request, session, "replays.html", replays=list(reversed(mine)), msg=msg, ok=ok,
                agents=services.settings.replay_agents,
                models=describe_models(services.replays.models()))


@router.post("/replays")
async def start_replay(request: Request) -> Response:
    """Start a replay from the form: an allow-listed agent, a model the server knows, a gate."""
    session = person(request)
    form = await checked_form(request, session)
    need(session, Capability.REPLAY)
    body: dict[str, Any] = {"agent": form.get("agent", ""),
                            "allow_unpriced": form.get("allow_unpriced") == "on",
                            "no_cache": form.get("no_cache") == "on"}
    for name in ("workflow", "model", "limit", "max_outcome_change"):
        if form.get(name, "").strip():
            body[name] = form[name].strip()
    try:
        req = ReplayStart.model_validate(body)
    except ValidationError as e:
        return _back("/console/replays", "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}"
                                                   for err in e.errors()), ok=False)
    services = _services(request)
    try:
        job = await run_in_threadpool(services.replays.submit, session.workspace, session.key_id, req)
    except BadParameter as e:
        return _back("/console/replays", str(e), ok=False)
    await run_in_threadpool(record_action, services, session, "replay.start", "/console/replays",
                            {"replay_id": job.replay_id, "agent": job.agent, "model": req.model})
    return _back("/console/replays", f"replay {job.replay_id} started ({job.mode}, {job.candidate}); "
                                     "it is listed here when it has finished")


def _has_workspace(report: dict[str, Any], workspace: str) -> bool:
    return any(r.get("workspace") == workspace for r in report.get("runs", []))


@router.get("/replays/{replay_id}")
def replay_page(request: Request, replay_id: str) -> HTMLResponse:
    session = person(request)
    need(session, Capability.REPLAY)
    report = _state(request).replays(_services(request)).load(replay_id)
    if not _has_workspace(report, session.workspace):
        raise NotFoundError(f"no replay {replay_id!r}")
    runs = [r for r in report["runs"] if r["workspace"] == session.workspace]
    if report.get("mode") == "policy":
        changed = [dict(c, run_id=r["run_id"]) for r in runs for c in r["changed"]]
        return page(request, session, "replay_policy.html", report=report, runs=runs, changed=changed,
                    s=report["summary"])
    if report.get("mode") == "steps":
        calls = [c for r in runs for c in r["calls"]]
        calls.sort(key=lambda c: (not (c["response_changed"] or c["status"] == "error"), c["run_id"], c["seq"]))
        return page(request, session, "replay_steps.html", report=report, calls=calls, s=report["summary"])
    runs.sort(key=lambda r: (not r["changed"], r["status"] == "reproduced", r["run_id"]))

    def delta(a: Any, b: Any) -> Decimal | None:
        return None if a is None or b is None else Decimal(str(b)) - Decimal(str(a))

    return page(request, session, "replay.html", report=report, runs=runs, delta=delta,
                s=report["summary"], changed=sum(1 for r in runs if r["changed"]))
