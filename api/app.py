"""The HTTP API app factory: ``create_app(settings)`` builds everything (nothing at import)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.resources import files

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.audit_trail import AuditTrail, AuditTrailError
from api.auth import ForbiddenError
from api.bootstrap import build_ledger, witness_pusher
from api.deps import Limits, Services
from api.halts import HaltService
from api.housekeeping import Housekeeper
from api.keys_store import AuthError, KeyRequestError, KeyStore
from api.log_verifier import LogVerifier
from api.metrics import Metrics
from api.model_config import configured_models
from api.policies import PolicyService
from api.read_side import run_index
from api.replay_jobs import ReplayJobs
from api.routes import analytics, approvals, audit, halts, ingest, log, opa, ops, policies, replays
from api.routes import keys as key_routes
from api.routes import webhooks as webhook_routes
from api.routes.errors import BadBody, BadParameter, BodyTooLarge, Unavailable, UnsupportedMedia
from api.routing import include_routes
from api.settings import Settings
from api.webhooks_dispatch import Webhooks
from domain.approvals import ApprovalConflict
from domain.errors import (
    BackpressureError,
    ContractError,
    NotFoundError,
    ProofError,
    RunRuleError,
    TachographError,
)
from domain.ledger import Ledger
from domain.origins import OriginError
from projections.errors import ProjectionError, ReportError
from replay.store import ReplayReports
from tachograph.prices import PriceTable

VERSION = "0.1.0"

STATUS: list[tuple[type[Exception], int]] = [
    (AuthError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (BodyTooLarge, 413),
    (UnsupportedMedia, 415),
    (ContractError, 400),
    (BadBody, 400),
    (KeyRequestError, 422),
    (BadParameter, 422),
    (OriginError, 422),
    (RunRuleError, 409),
    (ApprovalConflict, 409),
    (ProofError, 400),
    (BackpressureError, 503),
    (AuditTrailError, 503),
    (Unavailable, 503),
    (ReportError, 422),
    (ProjectionError, 503),
]

DESCRIPTION = """\
Tachograph records what AI agents did in a signed, Merkle-checkpointed ledger.

Every endpoint except `/healthz`, `/readyz`, `/metrics` and the docs needs an API key
(`Authorization: Bearer tacho_<id>_<secret>`, from `tacho apikey create`). A key sees only its
own workspace; another workspace's run answers 404 like a missing one. Every read of an audit
history or evidence is itself recorded in the ledger as a platform record (entry kind `record`,
type `audit.read`), which no publisher key can write; auditors read them at `/v1/audit-log`.
"""


def status_of(exc: TachographError) -> int:
    """The HTTP status of a Tachograph error (500 only for errors no client can cause)."""
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 500


def error_response(status: int, error: str, message: str, problems: list[dict[str, str]] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    """The one shape of every error body."""
    return JSONResponse(
        {"error": error, "message": message, "problems": problems or []},
        status_code=status,
        headers=headers,
    )


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before reading them all."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.limit:
                    await self._refuse(send, declared)
                    return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge(f"request body is over the {self.limit}-byte limit")
            return msg

        await self.app(scope, limited, send)

    async def _refuse(self, send: Send, size: int) -> None:
        resp = error_response(
            413, "BodyTooLarge", f"request body of {size} bytes is over the {self.limit}-byte limit"
        )
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(k.encode(), v.encode()) for k, v in resp.headers.items()]})
        await send({"type": "http.response.body", "body": resp.body})


SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


class SecurityHeaders:
    """Add ``SECURITY_HEADERS`` to every response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = list(msg.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                msg = {**msg, "headers": headers}
            await send(msg)

        await self.app(scope, receive, sending)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start housekeeping (if asked for), the verification status's thread and the witness pusher
    (TACHO_WITNESSES); on shutdown stop them, sign the tail, and let a running replay finish
    (queued ones are dropped)."""
    services: Services = app.state.services
    keeper: Housekeeper | None = app.state.housekeeper
    for model in services.read_models():  # projections run in the background while served
        model.start()
    if keeper is not None:
        keeper.start()
    assert services.verification is not None
    services.verification.start()  # the first round verifies the whole ledger, then only what is new
    services.witnesses = witness_pusher(services.settings, services.ledger)
    if services.witnesses is not None:
        services.witnesses.start()
    app.state.webhooks.start()  # delivers only under `tacho serve` (docs/webhooks.md)
    yield
    await run_in_threadpool(app.state.webhooks.stop)
    await run_in_threadpool(services.verification.stop)
    if keeper is not None:
        await run_in_threadpool(keeper.stop)
        await run_in_threadpool(services.ledger.checkpoint)  # the tail, signed before exit
    if services.witnesses is not None:
        await run_in_threadpool(services.witnesses.stop)
    await run_in_threadpool(services.replays.close)
    for model in services.read_models():
        await run_in_threadpool(model.stop)


def create_app(
    settings: Settings,
    *,
    ledger: Ledger | None = None,
    keys: KeyStore | None = None,
    clock: Callable[[], float] = time.time,
    limits: Limits | None = None,
    housekeeping: bool = False,
) -> FastAPI:
    """Build the API over the configured ledger and key store.

    ``housekeeping``: while served, sign the tail when due and expire held events on a
    background thread (``tacho serve`` asks for it).
    """
    ledger = ledger or build_ledger(settings)
    keys = keys or KeyStore(settings.data_dir / "keys" / "apikeys.db", clock)
    limits = limits or Limits(settings.api_max_body_bytes, settings.api_max_batch)
    prices = PriceTable.from_file(settings.prices) if settings.prices else PriceTable()
    policy_service = PolicyService.with_local_opa(ledger, clock)
    runs = run_index(settings, ledger.store)
    services = Services(
        settings=settings,
        ledger=ledger,
        keys=keys,
        runs=runs,
        audit=AuditTrail(ledger, clock),
        metrics=Metrics(),
        limits=limits,
        clock=clock,
        replays=ReplayJobs(ledger, ReplayReports(settings.data_dir / "replays"), clock,
                           settings.replay_agents, max_queued=settings.replay_queue,
                           workers=settings.replay_workers, prices=prices,
                           models=configured_models(settings.models), policies=policy_service,
                           runs=runs),
        halts=HaltService(ledger, clock),
        policies=policy_service,
        prices=prices,
    )
    services.verification = LogVerifier(ledger, clock, services.metrics, settings.verify_interval_s,
                                        full_every_s=settings.verify_full_every_s or None)

    app = FastAPI(
        title="Tachograph API",
        version=VERSION,
        description=DESCRIPTION,
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    app.state.services = services
    app.state.housekeeper = Housekeeper(ledger) if housekeeping else None
    app.state.webhooks = Webhooks(settings, ledger.store, clock, dispatch=housekeeping)
    _install_errors(app)
    _install_metrics(app, services.metrics)
    for module in (ingest, opa, audit, approvals, log, analytics, replays, halts, policies, key_routes,
                   ops):
        include_routes(app, module.router)
    include_routes(app, webhook_routes.router)
    _install_docs(app)
    from api.console import mount_console  # the operator console (issue 7)

    mount_console(app, services)
    app.add_middleware(BodyLimit, limit=limits.max_body_bytes)
    app.add_middleware(SecurityHeaders)  # outermost: early refusals get them too
    return app


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(TachographError)
    async def tacho_error(request: Request, exc: TachographError) -> JSONResponse:
        status = status_of(exc)
        problems = [{"path": p, "rule": r} for p, r in getattr(exc, "problems", [])]
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        if status == 503:
            headers = {"Retry-After": "1"}
        message = str(exc) if status < 500 else f"{type(exc).__name__}: {exc}"
        return error_response(status, type(exc).__name__, message, problems, headers)

    @app.exception_handler(RequestValidationError)
    async def bad_params(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"path": ".".join(str(p) for p in e.get("loc", ())), "rule": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{p['path']}: {p['rule']}" for p in problems)
        return error_response(422, "RequestValidationError", f"invalid request: {detail}", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, "HTTPException", str(exc.detail),
                              headers=dict(exc.headers or {}))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, exc: ClientDisconnect) -> Response:
        # the client went away before its body arrived (an agent killed mid-POST): nothing was
        # read, so nothing was appended, and there is no one left to answer (499, nginx's word)
        return Response(status_code=499)


class RequestMetrics:
    """Count requests and time them by route (plain ASGI: no body copying, no extra task)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(scope["method"], path).observe(time.perf_counter() - start)


def _install_metrics(app: FastAPI, metrics: Metrics) -> None:
    app.add_middleware(RequestMetrics, metrics=metrics)


def _install_docs(app: FastAPI) -> None:
    static = files("api") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Tachograph API",
            swagger_js_url="/static/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )
