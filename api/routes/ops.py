"""Health, readiness and Prometheus metrics (no key needed)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import ServicesDep
from api.schemas import Health
from domain.errors import TachographError

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    summary="Readiness: the ledger store answers",
    description="`checks` names the ledger's size and, with `TACHO_WITNESSES`, each witness's last "
    "outcome (cosigned size, or UNREACHABLE / REFUSED / ROLLBACK / FORK and why).",
    responses={503: {"model": Health, "description": "not ready"}},
)
def readyz(services: ServicesDep) -> Response | Health:
    try:
        size = services.ledger.store.size()
    except TachographError as e:
        return JSONResponse(Health(status="unavailable", checks={"ledger": str(e)}).model_dump(),
                            status_code=503)
    checks = {"ledger": f"{size} entries"}
    if services.witnesses is not None:
        checks.update(services.witnesses.checks())
    return Health(status="ok", checks=checks)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
def metrics(services: ServicesDep) -> Response:
    m = services.metrics
    m.ledger_size.set(services.ledger.store.size())
    m.quarantine_size.set(services.ledger.store.quarantine_count())
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
